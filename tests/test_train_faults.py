"""Faults during training: a NaN loss stops cleanly; a full disk keeps the previous checkpoint; an unreadable
checkpoint falls back to an older one; a signal stops training with a checkpoint at the current update."""
from __future__ import annotations

import errno
import logging
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

import leanvit.train.state as state
from leanvit.train import (PREEMPTED_EXIT_CODE, CheckpointWriteError, NonFiniteLossError, TrainingPreempted, load_config,
                           read_checkpoint, train)
from helpers.training import TINY, state_equal


class _NaNLoss(nn.Module):
    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return outputs.sum() * float("nan")


@pytest.mark.slow
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


@pytest.mark.slow
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


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings_logged():
    """Warnings of the leanvit.train logger (whatever handlers/propagation an earlier CLI test left on it)."""
    handler = _Records()
    logger = logging.getLogger("leanvit.train")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_unreadable_last_checkpoint_falls_back_and_nothing_readable_is_refused(tmp_path: Path,
                                                                                 warnings_logged: list[str]) -> None:
    sets = dict(TINY, **{"checkpoint.every_steps": 4, "checkpoint.keep_last": 2, "train.deterministic": True})
    ref = tmp_path / "ref"
    train(load_config("quick", dict(sets, output=str(ref))))
    out = tmp_path / "run"
    # 6 updates per epoch: epoch 0 ends at update 6 (checkpoints/epoch_0000.ckpt); last.ckpt is update 8
    train(load_config("quick", dict(sets, output=str(out), **{"train.max_steps": 8})))
    last, epoch0 = out / "last.ckpt", out / "checkpoints" / "epoch_0000.ckpt"
    assert read_checkpoint(last)["counters"]["global_step"] == 8
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated

    # "auto" (what `leanvit train` does): continue the run; train.max_steps may change on resume
    train(load_config("quick", dict(sets, output=str(out), resume="auto")))
    fallback = [m for m in warnings_logged if "resuming from" in m]
    assert fallback and str(last) in fallback[0] and str(epoch0) in fallback[0], warnings_logged
    a, b = read_checkpoint(ref / "last.ckpt"), read_checkpoint(last)
    assert a["counters"]["global_step"] == b["counters"]["global_step"] == 12
    assert state_equal(a["model"], b["model"])

    # nothing readable: empty, truncated, or not a training checkpoint -> a clear error, no file touched
    last.write_bytes(b"")
    epochs = sorted((out / "checkpoints").glob("epoch_*.ckpt"))
    assert len(epochs) == 2
    torch.save({"weights": torch.zeros(2)}, epochs[0])
    epochs[1].write_bytes(epochs[1].read_bytes()[:100])
    before = _files(out)
    with pytest.raises(ValueError, match=r"none of its 3 checkpoint\(s\) is readable, nothing was changed") as e:
        train(load_config("quick", dict(sets, output=str(out), resume="auto")))
    assert all(str(p) in str(e.value) for p in (last, *epochs))
    assert _files(out) == before


@pytest.mark.slow
def test_auto_resume_refuses_a_different_config_naming_the_keys(tmp_path: Path) -> None:
    train(load_config("quick", dict(TINY, output=str(tmp_path), **{"train.max_steps": 1})))
    with pytest.raises(ValueError, match=r"differs from this command's in model\.img_size \(run: 32, now: 48\), "
                                         r"optim\.lr .*--resume .*last\.ckpt --set model\.img_size=48 --set optim\.lr="):
        train(load_config("quick", dict(TINY, output=str(tmp_path), resume="auto",
                                        **{"model.img_size": 48, "optim.lr": 0.5})))


@pytest.mark.slow
def test_signal_stops_after_the_update_and_a_second_signal_during_the_save_is_ignored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}

    def preempt_at_update_3(event: str, trainer) -> None:
        if event == "step_end" and trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGUSR1)

    real_write = state._write

    def interrupted_write(obj: dict, tmp: str) -> None:
        if obj["counters"]["global_step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the preemption checkpoint is being written
        real_write(obj, tmp)

    monkeypatch.setattr(state, "_write", interrupted_write)
    cfg = load_config("quick", dict(TINY, output=str(tmp_path)))
    with pytest.raises(TrainingPreempted) as e:
        train(cfg, callbacks=[preempt_at_update_3])
    assert e.value.signal_name == "SIGUSR1" and e.value.global_step == 3
    assert f"exit code {PREEMPTED_EXIT_CODE}" in str(e.value)
    ck = read_checkpoint(tmp_path / "last.ckpt")
    assert ck["counters"]["global_step"] == 3 and not ck["counters"]["epoch_complete"]
    assert {s: signal.getsignal(s) for s in before} == before, "signal handlers not restored"
