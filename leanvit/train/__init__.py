"""Training and evaluation: recipes, data, the loop (single process to multi-node DDP), checkpoints.

Library API (the ``leanvit train`` / ``leanvit eval`` commands are thin wrappers around it)::

    from leanvit.train import load_config, train, evaluate
    cfg = load_config("quick", ["model.name=efficientvit_m0", "data.path=digits", "output=runs/digits"])
    summary = train(cfg)                       # writes last.ckpt, best.ckpt, config.yaml, metrics.csv
    result = evaluate("efficientvit_m0", "runs/digits/best.ckpt", "digits")
"""
from __future__ import annotations

from .._lazy import lazy_exports

# public name -> module that defines it; imported on first use (PEP 562), so that the torch-free modules
# (``options``, whose dataclasses the command line's flags come from) import without torch.
_EXPORTS = {
    "TrainConfig": "config", "ConfigError": "config", "load_config": "config", "load_recipe": "config",
    "list_recipes": "config", "apply_overrides": "config", "config_from_dict": "config",
    "NonFiniteLossError": "engine", "CollectiveError": "distributed", "evaluate": "classification",
    "PREEMPTED_EXIT_CODE": "preemption", "TrainingPreempted": "preemption",
    "CheckpointWriteError": "state", "read_checkpoint": "state", "Trainer": "trainer", "train": "trainer",
}

__all__ = [
    "TrainConfig", "ConfigError", "load_config", "load_recipe", "list_recipes", "apply_overrides", "config_from_dict",
    "train", "Trainer", "evaluate", "read_checkpoint", "NonFiniteLossError", "CheckpointWriteError",
    "TrainingPreempted", "PREEMPTED_EXIT_CODE", "CollectiveError",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
