"""What the training-task commands share: ``leanvit train``, ``leanvit detect ...`` and ``leanvit segment ...``.

A task's command module builds its sub-commands with these helpers (the common flags, with the task's help
texts; its own flags on top) and trains through :func:`run_train`. The library (``leanvit.train``,
``leanvit.dense``) is imported only when a command runs, so that ``--help`` stays instant.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Callable

__all__ = ["TRAIN_FLAG_KEYS", "DENSE_FLAG_KEYS", "setup_logging", "on_main_process", "print_evaluation",
           "add_command_group", "add_train_flags", "add_checkpoint_eval_flags", "add_checkpoint_predict_flags",
           "run_train", "best_metric_line"]

# Command-line flags -> config keys (applied after the recipe, before --set); --resume is applied apart.
TRAIN_FLAG_KEYS = {
    "model": "model.name", "data": "data.path", "epochs": "train.epochs", "batch_size": "train.batch_size",
    "output": "output", "max_steps": "train.max_steps", "seed": "train.seed", "finetune": "finetune.checkpoint",
}
DENSE_FLAG_KEYS = {**TRAIN_FLAG_KEYS, "backbone_checkpoint": "task.backbone_checkpoint"}

_DENSE_BATCH_HELP = "images per process per step (official: 2 x 8 GPUs = 16)"
_DENSE_RESUME_HELP = "training checkpoint to continue exactly (e.g. OUTPUT/last.ckpt)"


def setup_logging() -> None:
    """Send the library's training log (``leanvit.train``) to stderr as plain lines, once per process."""
    logger = logging.getLogger("leanvit.train")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def on_main_process() -> bool:
    """Whether this process prints results: the only one, or rank 0 under torchrun / SLURM."""
    return int(os.environ.get("RANK", "0")) == 0


def print_evaluation(result: dict[str, Any], headline: str | None = None) -> None:
    """An evaluation command's output, on the main process only: the ``headline`` (if any), then the JSON."""
    if on_main_process():
        if headline is not None:
            print(headline)
        print(json.dumps(result, indent=2))


def add_command_group(subparsers: argparse._SubParsersAction, command: str, *, help: str,
                      description: str) -> argparse._SubParsersAction:
    """A command with sub-commands (``leanvit detect train|eval|...``); alone it prints its help (exit 2)."""
    group = subparsers.add_parser(command, help=help, description=description)
    group.set_defaults(func=lambda args: (group.print_help(), 2)[1])
    return group.add_subparsers(dest=f"{command}_command", metavar="SUBCOMMAND")


def add_train_flags(p: argparse.ArgumentParser, *, recipe_help: str, data_help: str, finetune_help: str,
                    set_help: str, model_help: str = "backbone (a leanvit model name; default: the recipe's)",
                    backbone_checkpoint: bool = True, batch_size_help: str = _DENSE_BATCH_HELP,
                    max_steps_help: str = "stop after this many optimizer updates",
                    resume_help: str = _DENSE_RESUME_HELP, no_resume_help: str | None = None) -> None:
    """The flags of every ``train`` command (see :data:`TRAIN_FLAG_KEYS`), with the task's help texts.

    ``backbone_checkpoint`` adds ``--backbone-checkpoint`` (dense tasks); ``no_resume_help`` adds
    ``--no-resume``, exclusive with ``--resume``.
    """
    p.add_argument("--recipe", help=recipe_help)
    p.add_argument("--data", help=data_help)
    p.add_argument("--model", help=model_help)
    if backbone_checkpoint:
        p.add_argument("--backbone-checkpoint",
                       help="ImageNet weights for the backbone (leanvit, timm or official file)")
    p.add_argument("--finetune", help=finetune_help)
    p.add_argument("--output", help="output directory")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help=batch_size_help)
    p.add_argument("--max-steps", type=int, help=max_steps_help)
    p.add_argument("--seed", type=int)
    if no_resume_help is None:
        p.add_argument("--resume", help=resume_help)
    else:
        resume = p.add_mutually_exclusive_group()
        resume.add_argument("--resume", help=resume_help)
        resume.add_argument("--no-resume", action="store_true", help=no_resume_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def add_checkpoint_eval_flags(p: argparse.ArgumentParser, *, checkpoint_help: str, data_help: str,
                              batch_size_default: int | None = None) -> None:
    """The flags of ``detect eval`` / ``segment eval``: a dense checkpoint, its data, and how to run.

    ``batch_size_default`` adds ``--batch-size`` (images per evaluation batch) with that default.
    """
    p.add_argument("--checkpoint", required=True, help=checkpoint_help)
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    if batch_size_default is not None:
        p.add_argument("--batch-size", type=int, default=batch_size_default)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", help="write the results as JSON to this file")
    p.add_argument("--no-progress", action="store_true")


def add_checkpoint_predict_flags(p: argparse.ArgumentParser, *, checkpoint_help: str, out_help: str) -> None:
    """The flags of ``detect predict`` / ``segment predict``: images, a dense checkpoint, the output folder."""
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--checkpoint", required=True, help=checkpoint_help)
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--ema", action="store_true")


def best_metric_line(number_format: str) -> Callable[[dict[str, Any]], str | None]:
    """The closing line of a task's training run: its best metric in ``number_format``, the epoch, the outputs."""
    def line(summary: dict[str, Any]) -> str | None:
        if summary.get("best") is None:
            return None
        return (f"best {summary['best_metric']} {summary['best']:{number_format}} (epoch {summary['best_epoch'] + 1}); "
                f"outputs in {summary['output']}")
    return line


def run_train(args: argparse.Namespace, flag_keys: dict[str, str], *, command: str, default_recipe: str,
              summary_line: Callable[[dict[str, Any]], str | None], task: Any = None) -> int:
    """A ``train`` command: the config from the arguments, ``--print-config``, then :func:`leanvit.train.train`.

    With ``task`` (a :class:`leanvit.train.task.Task` class, built as ``task(cfg)``) the command trains that
    task only: it needs ``--recipe`` or ``--resume`` (its recipes are not the classification default) and
    refuses recipes of other tasks. Prints ``summary_line(summary)`` at the end; returns the exit code.
    """
    import yaml

    from ..train.config import config_to_dict
    from ..train.preemption import PREEMPTED_EXIT_CODE, TrainingPreempted
    from ..train.recovery import resolve_run_config
    from ..train.trainer import train

    name = f"leanvit {command}"  # e.g. "leanvit detect train"
    setup_logging()
    if task is not None and not args.recipe and not args.resume:
        print(f"{name}: error: pass --recipe (e.g. {default_recipe}) or --resume", file=sys.stderr)
        return 2
    settings = {key: getattr(args, flag) for flag, key in flag_keys.items() if getattr(args, flag) is not None}
    cfg = resolve_run_config(args.recipe, resume=args.resume, settings=settings, overrides=args.overrides,
                             default_recipe=default_recipe, auto_resume=not getattr(args, "no_resume", False))
    if task is not None and cfg.task.name != task.name:
        print(f"{name}: error: recipe {args.recipe} is a {cfg.task.name} recipe, not {task.name}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    try:
        summary = train(cfg, task=task(cfg) if task is not None else None)
    except FileExistsError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 1
    except TrainingPreempted as stop:
        print(f"{name}: {stop}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except KeyboardInterrupt:
        print(f"{name}: interrupted; continue with --resume OUTPUT/last.ckpt", file=sys.stderr)
        return 130
    line = summary_line(summary)
    if line is not None:
        print(line)
    return 0
