"""``leanvit train`` and ``leanvit eval``: argument parsing only; the work is in leanvit.train."""
from __future__ import annotations

import argparse
from typing import Any

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
        p, recipe_help="recipe name or YAML path, 'a+b' to compose (default: quick, or the checkpoint's own config "
                       "with --resume)",
        data_help="ImageFolder root (train/ + val/ or validation/), 'digits' or 'fake'",
        model_help="model name (default: the recipe's)", backbone_checkpoint=False,
        finetune_help="weights to start from (leanvit, timm or official file); new head if the class count differs",
        batch_size_help="batch size per process",
        resume_help="training checkpoint to continue exactly (e.g. OUTPUT/last.ckpt), with its own config; flags "
                    "and --set change it. Default: continue the run in OUTPUT if there is one and its config matches",
        no_resume_help="never continue a run: an OUTPUT that holds one is refused",
        set_help="override any config key, e.g. --set optim.lr=2e-3 --set aug.mixup=0 (repeatable)")
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
    from ..train.evaluate import evaluate

    setup_logging()
    result = evaluate(
        args.model, args.checkpoint, args.data, split=args.split, img_size=args.img_size, crop_pct=args.crop_pct,
        batch_size=args.batch_size, workers=args.workers, ema=args.ema, fuse=args.fuse, amp=args.amp,
        device=args.device, channels_last=args.channels_last, num_classes=args.num_classes, out=args.out,
        progress=not args.no_progress,
    )
    print_evaluation(result)
    return 0
