"""Faults during training: a NaN loss stops cleanly; a full disk keeps the previous checkpoint."""
from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from torch import nn

import leanvit.train.state as state
from leanvit.train import CheckpointWriteError, NonFiniteLossError, load_config, read_checkpoint, train
from test_train_fixtures import TINY, one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


class _NaNLoss(nn.Module):
    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return outputs.sum() * float("nan")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    def poison(event: str, trainer) -> None:  # the loss turns NaN after update 3
        if event == "step_end" and trainer.global_step == 3:
            trainer.criterion = _NaNLoss()

    cfg = load_config("quick", dict(TINY, output=str(tmp_path), **{"checkpoint.every_steps": 2}))
    with pytest.raises(NonFiniteLossError) as e:
        train(cfg, callbacks=[poison])
    msg = str(e.value)
    assert "nan" in msg and "update 4" in msg and str(tmp_path / "last.ckpt") in msg
    ck = read_checkpoint(tmp_path / "last.ckpt")
    assert ck["counters"]["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_disk_full_while_saving_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = state._write
    calls = {"n": 0}

    def full_disk(obj: dict, tmp: str) -> None:
        calls["n"] += 1
        if calls["n"] < 2:
            return real_write(obj, tmp)
        with open(tmp, "wb") as f:  # half a file, then the device is full
            f.write(b"\x80\x02partial checkpoint bytes" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state, "_write", full_disk)
    cfg = load_config("quick", dict(TINY, output=str(tmp_path)))
    with pytest.raises(CheckpointWriteError, match="disk is full.*previous last.ckpt is intact"):
        train(cfg)
    ck = read_checkpoint(tmp_path / "last.ckpt")
    assert ck["counters"]["epoch"] == 0 and ck["counters"]["epoch_complete"]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp")), "temporary file left behind"
