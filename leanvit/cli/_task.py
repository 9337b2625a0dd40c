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
from typing import Any, Callable, Sequence

from .._flags import add_dataclass_flags
from ..train.options import TrainCommandOptions

__all__ = ["TRAIN_FLAG_KEYS", "DENSE_FLAG_KEYS", "setup_logging", "on_main_process", "print_evaluation",
           "add_command_group", "add_train_flags", "run_train", "best_metric_line"]

# Command-line flags -> config keys (applied after the recipe, before --set); --resume is applied apart.
TRAIN_FLAG_KEYS = {
    "model": "model.name", "data": "data.path", "epochs": "train.epochs", "batch_size": "train.batch_size",
    "output": "output", "max_steps": "train.max_steps", "seed": "train.seed", "finetune": "finetune.checkpoint",
}
DENSE_FLAG_KEYS = {**TRAIN_FLAG_KEYS, "backbone_checkpoint": "task.backbone_checkpoint"}


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


def add_train_flags(p: argparse.ArgumentParser, exclude: Sequence[str] = (), **helps: str) -> None:
    """The flags of every ``train`` command (:class:`~leanvit.train.options.TrainCommandOptions`; see
    :data:`TRAIN_FLAG_KEYS`) without those in ``exclude``, with the task's help texts (``helps``: field -> text)."""
    add_dataclass_flags(p, TrainCommandOptions, exclude, helps)


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
