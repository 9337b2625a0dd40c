"""Training checkpoints: what they hold, how they are written (atomically) and read (weights only).

A training checkpoint is a dict of tensors and plain containers only, so that
``torch.load(weights_only=True)`` can read it: model and EMA state dicts, optimizer, scheduler and
grad-scaler states, counters, the config, and every process's RNG states stored as tensors.
"""
from __future__ import annotations

import errno
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from .._io import atomic_write
from .._text import error_reason
from ..errors import InvalidValueError, MissingFileError, OperationError

__all__ = [
    "FORMAT", "CheckpointWriteError", "capture_rng", "restore_rng", "write_checkpoint", "read_checkpoint",
    "is_training_checkpoint", "prune_epoch_checkpoints", "link_or_copy",
]

FORMAT = "leanvit-train-v1"
log = logging.getLogger("leanvit.train")


class CheckpointWriteError(OperationError):
    """A checkpoint could not be written; the previous file at that path is untouched."""


# --------------------------------------------------------------------------------------------- RNG
def capture_rng() -> dict[str, Any]:
    """This process's RNG states (torch CPU/CUDA, numpy, python) as tensors and ints."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "python": torch.tensor(py_internal, dtype=torch.int64),
        "python_version": int(py_version),
        "python_gauss": py_gauss,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    random.setstate((state["python_version"], tuple(state["python"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------- writing
def _write(obj: dict[str, Any], tmp_path: str) -> None:
    # The one place bytes are written; tests replace it to simulate a full disk.
    with open(tmp_path, "wb") as f:
        torch.save(obj, f)


def write_checkpoint(obj: dict[str, Any], path: str | Path) -> Path:
    """Write ``obj`` to ``path`` atomically (temp file, fsync, rename). On failure the old file stays."""

    path = Path(path)
    try:
        return atomic_write(path, lambda tmp: _write(obj, tmp))
    except OSError as e:
        why = "the disk is full" if e.errno == errno.ENOSPC else f"{e.strerror or e}"
        keep = f"the previous {path.name} is intact" if path.exists() else f"no earlier {path.name} existed"
        raise CheckpointWriteError(
            f"could not write checkpoint {path}: {why}; {keep}. Free space (or choose another --output) "
            f"and continue with --resume {path if path.exists() else '<checkpoint>'}"
        ) from e


def prune_epoch_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` ``epoch_*.ckpt`` files."""
    files = sorted(folder.glob("epoch_*.ckpt"))
    for p in files[: max(0, len(files) - keep)]:
        p.unlink(missing_ok=True)


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a (hard-linked where possible) copy of ``src``, atomically."""

    def put(tmp: str) -> None:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)

    atomic_write(dst, put)


# --------------------------------------------------------------------------------------------- reading
def is_training_checkpoint(obj: Any) -> bool:
    """True for a dict written by :func:`write_checkpoint` through the trainer."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (weights only); clear errors for missing, corrupt or foreign files."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.ckpt"
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any decoder failure is one clear message
        raise InvalidValueError(f"{path} is not a readable checkpoint (truncated or corrupt?): "
                                f"{error_reason(e, 200)}") from e
    if not is_training_checkpoint(obj):
        raise InvalidValueError(
            f"{path} is not a leanvit training checkpoint (no training state to resume); "
            "to start from its weights use --finetune instead of --resume"
        )
    return obj
