"""Training and evaluation: recipes, data, the loop (single process to multi-node DDP), checkpoints.

Library API (the ``leanvit train`` / ``leanvit eval`` commands are thin wrappers around it)::

    from leanvit.train import load_config, train, evaluate
    cfg = load_config("quick", ["model.name=efficientvit_m0", "data.path=digits", "output=runs/digits"])
    summary = train(cfg)                       # writes last.ckpt, best.ckpt, config.yaml, metrics.csv
    result = evaluate("efficientvit_m0", "runs/digits/best.ckpt", "digits")
"""
from .config import ConfigError, TrainConfig, apply_overrides, config_from_dict, list_recipes, load_config, load_recipe
from .engine import NonFiniteLossError
from .distributed import CollectiveError
from .evaluate import evaluate
from .preemption import PREEMPTED_EXIT_CODE, TrainingPreempted
from .state import CheckpointWriteError, read_checkpoint
from .trainer import Trainer, train

__all__ = [
    "TrainConfig", "ConfigError", "load_config", "load_recipe", "list_recipes", "apply_overrides", "config_from_dict",
    "train", "Trainer", "evaluate", "read_checkpoint", "NonFiniteLossError", "CheckpointWriteError",
    "TrainingPreempted", "PREEMPTED_EXIT_CODE", "CollectiveError",
]
