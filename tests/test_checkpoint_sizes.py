"""Every command sizes its inputs from the checkpoint (issue 23): ``bench --checkpoint`` and ``analyze`` as
``quantize`` / ``export`` (tests/test_int8_cpu.py::test_trained_img_size covers the helper itself): a flag wins,
then the size the checkpoint was trained at, then the model's native size."""
from __future__ import annotations

import json

import pytest
import torch

from leanvit.analysis.runs import run_op_breakdown
from leanvit.bench.runner import benchmark
from leanvit.errors import InvalidValueError
from leanvit.models import create_model
from leanvit.models.checkpoint import save_checkpoint

SIDE = 48  # not efficientvit_m0's native 224


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("efficientvit_m0", img_size=SIDE, num_classes=10)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "m0_48.safetensors")


def test_bench_times_the_checkpoint_at_its_trained_size(small_checkpoint) -> None:
    (rec,) = benchmark("efficientvit_m0", backend="eager", checkpoint=str(small_checkpoint), warmup=0, duration=0.05,
                       batch_size=2, progress=False)
    assert rec["error"] is None, rec["error"]
    assert rec["img_size"] == SIDE and rec["checkpoint"] == str(small_checkpoint)
    assert rec["top1"] is None  # the zoo's published top-1 is not these weights'
    assert rec["throughput"] > 0
    with pytest.warns(UserWarning, match="differs from the 48 px"):  # a contradicting flag wins, with a warning
        (rec,) = benchmark("efficientvit_m0", backend="eager", checkpoint=str(small_checkpoint), img_size=64, warmup=0,
                           duration=0.05, batch_size=2, progress=False)
    assert rec["img_size"] == 64


def test_bench_refuses_one_checkpoint_for_several_models(small_checkpoint) -> None:
    with pytest.raises(InvalidValueError, match="one model's weights"):
        benchmark(["efficientvit_m0", "efficientvit_m1"], checkpoint=str(small_checkpoint), progress=False)


def test_analyze_profiles_the_checkpoint_at_its_trained_size(small_checkpoint, tmp_path) -> None:
    paths = run_op_breakdown(["efficientvit_m0"], tmp_path, checkpoint=str(small_checkpoint), iters=1, warmup=1,
                             roofline=False)
    record = json.loads(next(p for p in paths if p.name == "efficientvit_m0_eager_ops.json").read_text())
    assert record["img_size"] == SIDE
