"""``leanvit segment train | eval | predict | export``: argument parsing only; the work is in leanvit.dense."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .train import _setup_logging, config_from_args

__all__ = ["register"]

# Command-line flags -> config keys (applied after the recipe, before --set).
_FLAG_KEYS = {
    "model": "model.name", "data": "data.path", "epochs": "train.epochs", "batch_size": "train.batch_size",
    "output": "output", "max_steps": "train.max_steps", "seed": "train.seed", "resume": "resume",
    "backbone_checkpoint": "task.backbone_checkpoint", "finetune": "finetune.checkpoint",
}


def _inference_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("whole", "slide"), help="whole-image or sliding-window inference "
                                                              "(default: the checkpoint's, official: whole)")
    p.add_argument("--crop", type=int, help="sliding-window size (default 512)")
    p.add_argument("--stride", type=int, help="sliding-window stride (default 341)")
    p.add_argument("--scales", type=float, nargs="+", help="multi-scale test ratios, e.g. 0.5 0.75 1 1.25 1.5 1.75")
    p.add_argument("--flip", action="store_true", default=None, help="also average the mirrored image")


def _inference(args: argparse.Namespace) -> dict:
    return dict(mode=args.mode, crop=args.crop, stride=args.stride, scales=args.scales, flip=args.flip)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``segment`` with its ``train``, ``eval``, ``predict`` and ``export`` sub-commands."""
    p = subparsers.add_parser("segment", help="semantic segmentation (ADE20K): train, eval, predict, export",
                              description="Semantic FPN and UperNet on leanvit backbones.")
    sub = p.add_subparsers(dest="segment_command", metavar="SUBCOMMAND")

    t = sub.add_parser("train", help="train a segmentor (single process, or distributed under torchrun / SLURM)",
                       description="Train with a segmentation recipe (e.g. semantic_fpn_sepvit_t_80k, "
                                   "upernet_shvit_s4_160k) through leanvit's training loop. Writes OUTPUT/last.ckpt, "
                                   "best.ckpt, config.yaml, metrics.csv, summary.json. Distributed: torchrun "
                                   "--nproc_per_node=K -m leanvit segment train ...")
    t.add_argument("--recipe", help="recipe name or YAML path (default: the checkpoint's config with --resume)")
    t.add_argument("--data", help="ADE20K root (ADEChallengeData2016/...), a folder with images/<split>/, "
                                  "annotations/<split>/ and classes.txt, or 'shapes' (built-in synthetic data)")
    t.add_argument("--model", help="backbone (a leanvit model name; default: the recipe's)")
    t.add_argument("--backbone-checkpoint", help="ImageNet weights for the backbone (leanvit, timm or official file)")
    t.add_argument("--finetune", help="a leanvit segmentation checkpoint to start from")
    t.add_argument("--output", help="output directory")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int, help="images per process per step (official: 2 x 8 GPUs = 16)")
    t.add_argument("--max-steps", type=int, help="stop after this many optimizer updates (80k / 160k official)")
    t.add_argument("--seed", type=int)
    t.add_argument("--resume", help="training checkpoint to continue exactly (e.g. OUTPUT/last.ckpt)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set task.options.crop_size=384 (repeatable)")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="mIoU / mAcc / aAcc of a segmentation checkpoint")
    e.add_argument("--checkpoint", required=True, help="a leanvit segmentation checkpoint (OUTPUT/best.ckpt)")
    e.add_argument("--data", required=True, help="ADE20K root (its validation split), a labelled folder or 'shapes'")
    e.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    e.add_argument("--out", help="write the results as JSON to this file")
    e.add_argument("--no-progress", action="store_true")
    _inference_flags(e)
    e.set_defaults(func=_eval)

    d = sub.add_parser("predict", help="write colourised masks and overlays of a checkpoint's predictions")
    d.add_argument("images", nargs="+", metavar="IMAGE")
    d.add_argument("--checkpoint", required=True, help="a leanvit segmentation checkpoint")
    d.add_argument("--out", required=True, help="folder for IMAGE stem + _mask.png / _overlay.png")
    d.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours")
    d.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    d.add_argument("--ema", action="store_true")
    _inference_flags(d)
    d.set_defaults(func=_predict)

    x = sub.add_parser("export", help="export a segmentation checkpoint to ONNX / OpenVINO, verified",
                       description="Writes the BN-fused segmentor (logits at the input size) with dynamic batch, "
                                   "height and width, checked against PyTorch at two other sizes.")
    x.add_argument("--checkpoint", required=True, help="a leanvit segmentation checkpoint")
    x.add_argument("--output", required=True, help="MODEL.onnx or MODEL.xml (OpenVINO IR + .bin)")
    x.add_argument("--format", choices=("onnx", "openvino"), help="default: from the output's suffix")
    x.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"), help="trace size")
    x.add_argument("--fixed-size", action="store_true",
                   help="only the batch stays dynamic (for backbones whose graph depends on the input size)")
    x.add_argument("--ema", action="store_true")
    x.set_defaults(func=_export)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _train(args: argparse.Namespace) -> int:
    from ..dense.segmentation_task import SegmentationTask
    from ..train.trainer import train

    _setup_logging()
    if not args.recipe and not args.resume:
        print("leanvit segment train: error: pass --recipe (e.g. upernet_shvit_s4_160k) or --resume", file=sys.stderr)
        return 2
    cfg = config_from_args(args, _FLAG_KEYS, "semantic_fpn_shvit_s4_80k")
    if cfg.task.name != "segmentation":
        print(f"leanvit segment train: error: recipe {args.recipe} is a {cfg.task.name} recipe, not segmentation",
              file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        from ..train.config import config_to_dict

        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    try:
        summary = train(cfg, task=SegmentationTask(cfg))
    except FileExistsError as err:
        print(f"leanvit segment train: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("leanvit segment train: interrupted; continue with --resume OUTPUT/last.ckpt", file=sys.stderr)
        return 130
    if summary.get("best") is not None:
        print(f"best {summary['best_metric']} {summary['best']:.2f} (epoch {summary['best_epoch'] + 1}); "
              f"outputs in {summary['output']}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..dense.seg_predict import evaluate_checkpoint

    _setup_logging()
    result = evaluate_checkpoint(args.checkpoint, args.data, ema=args.ema, workers=args.workers, device=args.device,
                                 out=args.out, progress=not args.no_progress, **_inference(args))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"mIoU {result['mIoU']:.2f}  mAcc {result['mAcc']:.2f}  aAcc {result['aAcc']:.2f}  "
              f"({result['images']} images)")
        print(json.dumps(result, indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ..dense.seg_predict import predict_images

    _setup_logging()
    results = predict_images(args.checkpoint, args.images, args.out, device=args.device, ema=args.ema,
                             alpha=args.alpha, **_inference(args))
    for r in results:
        top = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(r["classes"].items(), key=lambda kv: -kv[1])[:3])
        print(f"{r['image']} -> {r['mask']}, {r['overlay']}: {top}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..dense.seg_export import export_segmentor
    from ..dense.seg_predict import load_segmentor

    fmt = args.format or ("openvino" if args.output.endswith(".xml") else "onnx")
    model, _ = load_segmentor(args.checkpoint, args.ema)
    result = export_segmentor(model, args.output, fmt, trace_size=tuple(args.size), dynamic_size=not args.fixed_size)
    print(result.summary())
    return 0
