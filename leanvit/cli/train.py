"""``leanvit train`` and ``leanvit eval``: argument parsing only; the work is in leanvit.train."""
from __future__ import annotations

import argparse
from typing import Any

from .._flags import add_dataclass_flags, dataclass_from_args
from ..train.options import ClassificationEvalOptions
from ._task import TRAIN_FLAG_KEYS, add_train_flags, print_evaluation, run_train, setup_logging

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``eval`` sub-commands."""
    p = subparsers.add_parser(
        "train", help="train a model (single process, or distributed under torchrun / SLURM)",
        description="Train with a recipe (recipes/*.yaml; 'a+b' composes) and overrides. Writes OUTPUT/last.ckpt, "
                    "best.ckpt, config.yaml, metrics.csv, summary.json. Distributed: torchrun --nproc_per_node=K "
                    "-m leanvit train ... Run again with the same arguments, an interrupted run continues from its "
                    "checkpoint. SIGTERM/SIGUSR1/SIGINT: finish the update, write a checkpoint, exit with code 75.",
    )
    add_train_flags(
        p, exclude=("backbone_checkpoint",),
        recipe="recipe name or YAML path, 'a+b' to compose (default: quick, or the checkpoint's own config with "
               "--resume)",
        data="ImageFolder root (train/ + val/ or validation/), 'digits' or 'fake'",
        model="model name (default: the recipe's)",
        finetune="weights to start from (leanvit, timm or official file); new head if the class count differs",
        batch_size="batch size per process",
        resume="training checkpoint to continue exactly (e.g. OUTPUT/last.ckpt), with its own config; flags and --set "
               "change it. Default: continue the run in OUTPUT if there is one and its config matches",
        overrides="override any config key, e.g. --set optim.lr=2e-3 --set aug.mixup=0 (repeatable)")
    p.set_defaults(func=_train)

    e = subparsers.add_parser("eval", help="evaluate a checkpoint: top-1, top-5, loss, throughput",
                              description="Evaluate a leanvit training checkpoint or an official/timm weights file.")
    add_dataclass_flags(e, ClassificationEvalOptions)
    e.set_defaults(func=_eval)


def _top1_line(summary: dict[str, Any]) -> str | None:
    if summary.get("best_top1") is None:
        return None
    return (f"best top-1 {summary['best_top1']:.2f}% (epoch {summary['best_epoch'] + 1}); "
            f"{summary['train_images_per_s']} train images/s; outputs in {summary['output']}")


def _train(args: argparse.Namespace) -> int:
    from ..train.config import list_recipes

    if args.list_recipes:
        print("\n".join(list_recipes()))
        return 0
    return run_train(args, TRAIN_FLAG_KEYS, command="train", default_recipe="quick", summary_line=_top1_line)


def _eval(args: argparse.Namespace) -> int:
    from ..train.classification import ClassificationTask

    setup_logging()
    print_evaluation(ClassificationTask.evaluate_checkpoint(dataclass_from_args(ClassificationEvalOptions, args)))
    return 0
