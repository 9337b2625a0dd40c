"""Trained dense models back from their leanvit training checkpoints (``leanvit detect|segment train``).

One loader serves the detector and the segmentor commands (eval, predict, export): the checkpoint names its
task, architecture, backbone and the builder's keywords, so the model is rebuilt as it was trained.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import InvalidValueError
from ..train.config import TrainConfig, config_from_dict
from ..train.state import read_checkpoint
from .dense_task import DenseTask

__all__ = ["load_trained_model", "evaluation_config"]

# Checkpoint entries that are training state rather than metadata of the model.
_TRAINING_STATE = ("model", "ema", "optimizer", "scheduler", "scaler", "rng")


def load_trained_model(checkpoint: str | os.PathLike, task: type[DenseTask], *, ema: bool = False,
                       other_commands: str) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, the checkpoint's metadata) of a checkpoint that ``task`` trained.

    The task's builder rebuilds the model from the checkpoint's ``<model_kind>_kwargs`` (without a backbone
    ``checkpoint``: the trained weights replace it); ``other_commands`` is the hint for checkpoints of other tasks.
    """
    ck = read_checkpoint(checkpoint)
    if ck.get("task") != task.name:
        raise InvalidValueError(f"{checkpoint} is not a {task.name} checkpoint (task: {ck.get('task', 'classification')}); "
                                f"use {other_commands}")
    kwargs = {k: v for k, v in ck[f"{task.model_kind}_kwargs"].items() if k != "checkpoint"}
    model = task.build(ck["arch"], ck["model_name"], num_classes=ck["num_classes"], **kwargs)
    weights = ck.get("ema") if ema else ck["model"]
    if weights is None:
        raise InvalidValueError(f"{checkpoint} has no EMA weights; drop --ema")
    model.load_state_dict(weights)
    return model.eval(), {k: v for k, v in ck.items() if k not in _TRAINING_STATE}


def evaluation_config(meta: dict[str, Any], checkpoint: str | os.PathLike, data: str, *, workers: int,
                      device: str) -> TrainConfig:
    """The training config stored in a checkpoint's ``meta``, pointed at ``data`` for an evaluation run."""
    cfg = config_from_dict({k: v for k, v in meta["config"].items() if k != "resume"})
    cfg.data.path, cfg.data.workers, cfg.train.device = data, workers, device
    if data == "shapes":
        cfg.output = str(Path(checkpoint).resolve().parent)  # the run directory holds its shapes/ data
    return cfg
