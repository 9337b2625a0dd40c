"""``leanvit train`` and ``leanvit eval``: argument parsing only; the work is in leanvit.train."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

__all__ = ["register", "config_from_args", "train_task_command"]

# Command-line flags -> config keys (applied after the recipe, before --set).
_FLAG_KEYS = {
    "model": "model.name", "data": "data.path", "epochs": "train.epochs", "batch_size": "train.batch_size",
    "output": "output", "max_steps": "train.max_steps", "seed": "train.seed", "resume": "resume",
    "finetune": "finetune.checkpoint",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``eval`` sub-commands."""
    p = subparsers.add_parser(
        "train", help="train a model (single process, or distributed under torchrun / SLURM)",
        description="Train with a recipe (recipes/*.yaml; 'a+b' composes) and overrides. Writes OUTPUT/last.ckpt, "
                    "best.ckpt, config.yaml, metrics.csv, summary.json. Distributed: torchrun --nproc_per_node=K "
                    "-m leanvit train ... Run again with the same arguments, an interrupted run continues from its "
                    "checkpoint. SIGTERM/SIGUSR1/SIGINT: finish the update, write a checkpoint, exit with code 75.",
    )
    p.add_argument("--model", help="model name (default: the recipe's)")
    p.add_argument("--recipe", help="recipe name or YAML path, 'a+b' to compose (default: quick, or the "
                                    "checkpoint's own config with --resume)")
    p.add_argument("--data", help="ImageFolder root (train/ + val/ or validation/), 'digits' or 'fake'")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="batch size per process")
    p.add_argument("--output", help="output directory")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer updates")
    p.add_argument("--seed", type=int)
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", help="training checkpoint to continue exactly (e.g. OUTPUT/last.ckpt), with its "
                                         "own config; flags and --set change it. Default: continue the run in OUTPUT "
                                         "if there is one and its config matches")
    resume.add_argument("--no-resume", action="store_true", help="never continue a run: an OUTPUT that holds one "
                                                                 "is refused")
    p.add_argument("--finetune", help="weights to start from (leanvit, timm or official file); new head if the "
                                      "class count differs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.lr=2e-3 --set aug.mixup=0 (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--list-recipes", action="store_true", help="list the known recipes and exit")
    p.set_defaults(func=_train)

    e = subparsers.add_parser("eval", help="evaluate a checkpoint: top-1, top-5, loss, throughput",
                              description="Evaluate a leanvit training checkpoint or an official/timm weights file.")
    e.add_argument("model", help="model name, e.g. shvit_s1")
    e.add_argument("--checkpoint", required=True, help="weights file")
    e.add_argument("--data", required=True, help="ImageFolder root (its val/ or validation/ split), 'digits' or 'fake'")
    e.add_argument("--split", help="split folder name (default: val, else validation)")
    e.add_argument("--img-size", type=int, help="input size (default: the checkpoint's or the model's)")
    e.add_argument("--crop-pct", type=float, help="resize to img_size / crop_pct before the centre crop (0.875)")
    e.add_argument("--batch-size", type=int, default=128)
    e.add_argument("--workers", type=int, default=4)
    e.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    e.add_argument("--fuse", action="store_true", help="fold BatchNorms (leanvit.fuse) before evaluating")
    e.add_argument("--amp", choices=("none", "bf16", "fp16", "auto"), default="none")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    e.add_argument("--channels-last", action="store_true")
    e.add_argument("--num-classes", type=int, help="class count of a foreign checkpoint (default: from its head)")
    e.add_argument("--out", help="write the results as JSON to this file")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_eval)


def _setup_logging() -> None:
    logger = logging.getLogger("leanvit.train")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def config_from_args(args: argparse.Namespace, flag_keys: dict[str, str], default_recipe: str) -> Any:
    """The TrainConfig of a training command: recipe (or the resumed run's own config), flags, then --set."""
    from ..train.config import apply_overrides, config_from_dict, load_recipe

    if args.recipe:
        data = load_recipe(args.recipe)
    elif args.resume:
        from ..train.recovery import open_resume_checkpoint

        data = open_resume_checkpoint(args.resume).state["config"]  # continue with the run's own settings
        data.pop("resume", None)
    else:
        data = load_recipe(default_recipe)
    flags = {key: getattr(args, name) for name, key in flag_keys.items() if getattr(args, name) is not None}
    if not args.resume:
        flags["resume"] = None if getattr(args, "no_resume", False) else "auto"
    data = apply_overrides(apply_overrides(data, flags), args.overrides)
    cfg = config_from_dict(data)
    cfg.recipe = [p for p in (args.recipe or "").split("+") if p] or cfg.recipe or [default_recipe]
    return cfg


def train_task_command(args: argparse.Namespace, flag_keys: dict[str, str], *, command: str, task_name: str,
                       task_factory: Any, example_recipe: str) -> int:
    """``leanvit <command> train`` for a task other than classification: config from the arguments, checks,
    ``--print-config``, then :func:`leanvit.train.train` with ``task_factory(cfg)``; returns the exit code."""
    from ..train.trainer import train

    _setup_logging()
    if not args.recipe and not args.resume:
        print(f"leanvit {command} train: error: pass --recipe (e.g. {example_recipe}) or --resume", file=sys.stderr)
        return 2
    cfg = config_from_args(args, flag_keys, example_recipe)
    if cfg.task.name != task_name:
        print(f"leanvit {command} train: error: recipe {args.recipe} is a {cfg.task.name} recipe, not {task_name}",
              file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        from ..train.config import config_to_dict

        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    try:
        summary = train(cfg, task=task_factory(cfg))
    except FileExistsError as err:
        print(f"leanvit {command} train: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"leanvit {command} train: interrupted; continue with --resume OUTPUT/last.ckpt", file=sys.stderr)
        return 130
    if summary.get("best") is not None:
        print(f"best {summary['best_metric']} {summary['best']:.4g} (epoch {summary['best_epoch'] + 1}); "
              f"outputs in {summary['output']}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from ..train.config import list_recipes

    if args.list_recipes:
        print("\n".join(list_recipes()))
        return 0
    _setup_logging()
    cfg = config_from_args(args, _FLAG_KEYS, "quick")
    if args.print_config:
        import yaml

        from ..train.config import config_to_dict

        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    from ..train.preemption import PREEMPTED_EXIT_CODE, TrainingPreempted
    from ..train.trainer import train

    try:
        summary = train(cfg)
    except FileExistsError as err:
        print(f"leanvit train: error: {err}", file=sys.stderr)
        return 1
    except TrainingPreempted as stop:
        print(f"leanvit train: {stop}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except KeyboardInterrupt:
        print("leanvit train: interrupted; continue with --resume OUTPUT/last.ckpt", file=sys.stderr)
        return 130
    if summary.get("best_top1") is not None:
        print(f"best top-1 {summary['best_top1']:.2f}% (epoch {summary['best_epoch'] + 1}); "
              f"{summary['train_images_per_s']} train images/s; outputs in {summary['output']}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..train.evaluate import evaluate

    _setup_logging()
    result = evaluate(
        args.model, args.checkpoint, args.data, split=args.split, img_size=args.img_size, crop_pct=args.crop_pct,
        batch_size=args.batch_size, workers=args.workers, ema=args.ema, fuse=args.fuse, amp=args.amp,
        device=args.device, channels_last=args.channels_last, num_classes=args.num_classes, out=args.out,
        progress=not args.no_progress,
    )
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, indent=2))
    return 0
