"""``jit_optimize``: torch.jit.freeze + optimize_for_inference after the trace (benchmarks/NOTES.md entry 15).

Exactness vs fp32 eager on one leanvit and one timm model, bf16 within the export's spread-relative bound, the
bench record field through the CLI, and the refusals. Small and fast: 64-pixel inputs, batch 2.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch

from leanvit.bench.runner import benchmark
from leanvit.cli import main
from leanvit.deploy.runtime import TorchRuntime, build_runtime
from leanvit.deploy.verify import BF16_MIN_CORRELATION, BF16_SPREAD_RTOL
from leanvit.models import create_model, logit_agreement, signal_weights_
from leanvit.zoo import fuse_model

LEANVIT, TIMM = "efficientvit_m0", "mobilenetv3_small_050"
SIDE, BATCH = 64, 2


def _fused(name: str) -> torch.nn.Module:
    """The fused eval model `leanvit bench` times, with signal weights (so folding is not trivial)."""
    return fuse_model(signal_weights_(create_model(name, img_size=SIDE).eval(), seed=0, img_size=SIDE))


def _example() -> torch.Tensor:
    return torch.randn(BATCH, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))


@pytest.mark.slow
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("name", [LEANVIT, f"timm:{TIMM}"])
def test_optimized_jit_equals_eager_fp32(name: str, channels_last: bool) -> None:
    model, x = _fused(name), _example()
    with torch.inference_mode():
        ref = model(x)
    rt = TorchRuntime(copy.deepcopy(model), x, mode="jit", jit_optimize=True, channels_last=channels_last)
    out = rt(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
    # The passes really ran (a flag that was silently dropped would also pass the check above).
    assert rt.jit_optimize and isinstance(rt.fn, torch.jit.ScriptModule)
    if torch.backends.mkldnn.is_available():
        assert "prim::mkldnn_convolution" in str(rt.fn.graph)


@pytest.mark.slow
@pytest.mark.parametrize("bf16_mode", ["autocast", "convert"])
def test_optimized_jit_bf16_within_limit(bf16_mode: str) -> None:
    """bf16 works too: freezing folds the weight casts, the error stays the plain trace's. The runtime itself
    does not refuse bf16 (the bench's precision check does, tests/test_bench.py): torch emulates it on CPUs
    without AVX512-BF16 / AMX, so this runs on every CPU."""
    model, x = _fused(LEANVIT), _example()
    with torch.inference_mode():
        ref = model(x)
    plain = TorchRuntime(copy.deepcopy(model), x, mode="jit", precision="bf16", bf16_mode=bf16_mode)
    opt = TorchRuntime(copy.deepcopy(model), x, mode="jit", precision="bf16", bf16_mode=bf16_mode, jit_optimize=True)
    rel_plain = logit_agreement(ref, plain(x))["relative_error"]
    agreement = logit_agreement(ref, opt(x))
    assert agreement["relative_error"] <= BF16_SPREAD_RTOL and agreement["input_correlation"] >= BF16_MIN_CORRELATION
    assert agreement["relative_error"] <= 2 * rel_plain + 1e-3


@pytest.mark.slow
def test_cli_bench_records_jit_optimize(tmp_path) -> None:
    out = tmp_path / "res.json"
    rc = main(["bench", LEANVIT, "--backend", "jit", "--jit-optimize", "--img-size", str(SIDE), "--batch-size",
               str(BATCH), "--warmup", "0", "--duration", "0.05", "--clock", "cpu", "--no-progress", "--out", str(out)])
    assert rc == 0
    rec, = json.loads(out.read_text())
    assert rec["error"] is None, rec["error"]
    assert rec["jit_optimize"] is True and rec["backend"] == "jit" and rec["throughput"] > 0
    # vs fp32 eager on the same input. fp32 reordering noise: ~5e-6 for both the plain and the optimized trace
    # (measured on input-dependent weights, Zen 5); bf16 or a wrong fold would be >= 1e-2.
    assert rec["rel_err"] < 1e-4 and rec["top1_agreement"] == 1.0


# --- refusals ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["eager", "compile"])
def test_runtime_refuses_other_modes(mode: str) -> None:
    with pytest.raises(ValueError, match=f"applies to the jit backend only, not '{mode}'"):
        TorchRuntime(torch.nn.Identity(), _example(), mode=mode, jit_optimize=True)


def test_runtime_refuses_cuda_before_touching_the_device() -> None:
    # Raised before the model moves: the message is the same with or without a GPU.
    with pytest.raises(ValueError, match="CPU-only.*drop it on CUDA"):
        TorchRuntime(torch.nn.Identity(), _example(), mode="jit", device="cuda", jit_optimize=True)


def test_build_runtime_refuses_non_torch_backends() -> None:
    with pytest.raises(ValueError, match="not 'onnxruntime'"):
        build_runtime(_fused(LEANVIT), "onnxruntime", _example(), jit_optimize=True)


def test_bench_refuses_before_running(capsys) -> None:
    with pytest.raises(ValueError, match="applies to the jit backend only, not 'eager'"):
        benchmark([LEANVIT], backend="jit,eager", jit_optimize=True, progress=False)
    assert main(["bench", LEANVIT, "--backend", "eager", "--jit-optimize"]) == 1
    assert "use backend jit, or drop jit_optimize" in capsys.readouterr().err


def test_tables_tell_optimized_and_channels_last_runs_apart() -> None:
    from leanvit.bench.report import format_table, to_markdown

    base = dict(model=LEANVIT, backend="jit", precision="fp32", batch_size=16, threads=1, img_size=224,
                throughput=100.0)
    records = [dict(base), dict(base, jit_optimize=True), dict(base, channels_last=True, jit_optimize=True)]
    for text in (format_table(records), to_markdown(records)):
        assert "jit+opt" in text and "jit+CL+opt" in text
