"""Checkpoints: exact resume after SIGKILL, atomic writes under SIGKILL, and refusing foreign checkpoints."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from leanvit.train import load_config, read_checkpoint, train

from helpers.training import TINY, state_equal


# The full paper recipe (RandAugment, Mixup/CutMix, erasing, repeated augmentation, EMA, AGC) so that
# every RNG stream matters; 6 batches per epoch, a periodic checkpoint every 2 updates.
RESUME_SETS = dict(TINY, **{"optim.lr": 1e-3, "sched.warmup_epochs": 1, "checkpoint.every_steps": 2,
                            "train.deterministic": True})

_KILLABLE = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from leanvit.train import load_config, train
sets = json.loads(sys.argv[1])
def hang_in_epoch_2(event, trainer):
    if event == "checkpoint" and trainer.epoch == 1 and 0 < trainer.batches_done < trainer.batches_per_epoch:
        print("CHECKPOINT-IN-EPOCH-2", flush=True)
        time.sleep(600)
train(load_config("shvit_s1", sets), callbacks=[hang_in_epoch_2])
"""


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    ref = train(load_config("shvit_s1", dict(RESUME_SETS, output=str(tmp_path / "ref"))))
    assert ref["epochs"] == 2

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, json.dumps(dict(RESUME_SETS, output=str(out)))],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env())
    try:
        line = proc.stdout.readline()
        assert "CHECKPOINT-IN-EPOCH-2" in line, "the run ended before reaching epoch 2"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    mid = read_checkpoint(out / "last.ckpt")
    assert mid["counters"]["epoch"] == 1 and not mid["counters"]["epoch_complete"]

    train(load_config("shvit_s1", dict(RESUME_SETS, output=str(out), resume=str(out / "last.ckpt"))))
    a, b = read_checkpoint(tmp_path / "ref" / "last.ckpt"), read_checkpoint(out / "last.ckpt")
    assert a["counters"]["global_step"] == b["counters"]["global_step"] == 12
    assert state_equal(a["model"], b["model"])
    assert state_equal(a["ema"], b["ema"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the resumed run's CSV has exactly one row per epoch
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1"]


_WRITER = r"""
import sys, torch
from leanvit.train.state import FORMAT, write_checkpoint
path = sys.argv[1]
i = 0
while True:
    i += 1
    write_checkpoint({"format": FORMAT, "i": i, "x": torch.full((3_000_000,), float(i))}, path)
    if i == 1:
        print("READY", flush=True)
"""


@pytest.mark.slow
def test_kill_during_checkpoint_write_leaves_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    rng = random.Random(0)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                                env=_env())
        assert proc.stdout.readline().strip() == "READY"
        time.sleep(rng.uniform(0.05, 0.4))  # somewhere inside one of the back-to-back 12 MB writes
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        ck = read_checkpoint(path)
        assert ck["i"] >= 1 and torch.equal(ck["x"], torch.full((3_000_000,), float(ck["i"])))


@pytest.mark.slow
def test_resume_from_another_model_is_refused(tmp_path: Path) -> None:
    train(load_config("quick", dict(TINY, output=str(tmp_path / "a"), **{"train.max_steps": 1})))
    ckpt = tmp_path / "a" / "last.ckpt"
    with pytest.raises(ValueError, match=r"checkpoint of efficientvit_m0, but this run builds shvit_s1"):
        train(load_config("quick", dict(TINY, output=str(tmp_path / "b"), resume=str(ckpt),
                                        **{"model.name": "shvit_s1"})))
    # a plain weights file is not a training state
    import leanvit

    weights = tmp_path / "w.safetensors"
    leanvit.save_checkpoint(leanvit.create_model("efficientvit_m0", num_classes=4, img_size=32), weights)
    with pytest.raises(ValueError, match="--finetune"):
        train(load_config("quick", dict(TINY, output=str(tmp_path / "c"), resume=str(weights))))
    # and an existing run is not overwritten by accident
    with pytest.raises(FileExistsError, match="--resume"):
        train(load_config("quick", dict(TINY, output=str(tmp_path / "a"))))


@pytest.mark.slow
def test_finetune_new_head_resolution_and_frozen_stages(tmp_path: Path) -> None:
    train(load_config("quick", dict(TINY, output=str(tmp_path / "src"), **{"train.max_steps": 2})))
    src = read_checkpoint(tmp_path / "src" / "last.ckpt")["model"]
    sets = dict(TINY, output=str(tmp_path / "ft"), **{
        "finetune.checkpoint": str(tmp_path / "src" / "last.ckpt"), "finetune.freeze_stages": 1,
        "data.fake_classes": 6, "model.img_size": 48, "train.max_steps": 3})
    train(load_config("quick", sets))
    ft = read_checkpoint(tmp_path / "ft" / "last.ckpt")
    assert ft["num_classes"] == 6 and ft["model"]["head.linear.weight"].shape[0] == 6
    for k, v in ft["model"].items():
        if k.startswith(("patch_embed.", "stages.0.")) and "attention_bias" not in k:
            assert torch.equal(v, src[k]), f"frozen tensor {k} changed"
    trained = [k for k in ft["model"] if k.startswith("stages.2.") and k.endswith("weight")]
    assert any(not torch.equal(ft["model"][k], src[k]) for k in trained)
