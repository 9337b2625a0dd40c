"""``leanvit segment train | eval | predict | export``: argument parsing only; the work is in leanvit.dense."""
from __future__ import annotations

import argparse
import sys

from ._task import (DENSE_FLAG_KEYS, add_checkpoint_eval_flags, add_checkpoint_predict_flags, add_command_group,
                    add_train_flags, best_metric_line, print_evaluation, run_train, setup_logging)

__all__ = ["register"]


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
    sub = add_command_group(subparsers, "segment", help="semantic segmentation (ADE20K): train, eval, predict, export",
                            description="Semantic FPN and UperNet on leanvit backbones.")

    t = sub.add_parser("train", help="train a segmentor (single process, or distributed under torchrun / SLURM)",
                       description="Train with a segmentation recipe (e.g. semantic_fpn_sepvit_t_80k, "
                                   "upernet_shvit_s4_160k) through leanvit's training loop. Writes OUTPUT/last.ckpt, "
                                   "best.ckpt, config.yaml, metrics.csv, summary.json. Distributed: torchrun "
                                   "--nproc_per_node=K -m leanvit segment train ...")
    add_train_flags(
        t, recipe_help="recipe name or YAML path (default: the checkpoint's config with --resume)",
        data_help="ADE20K root (ADEChallengeData2016/...), a folder with images/<split>/, annotations/<split>/ and "
                  "classes.txt, or 'shapes' (built-in synthetic data)",
        finetune_help="a leanvit segmentation checkpoint to start from",
        max_steps_help="stop after this many optimizer updates (80k / 160k official)",
        set_help="override any config key, e.g. --set task.options.crop_size=384 (repeatable)")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="mIoU / mAcc / aAcc of a segmentation checkpoint")
    add_checkpoint_eval_flags(e, checkpoint_help="a leanvit segmentation checkpoint (OUTPUT/best.ckpt)",
                              data_help="ADE20K root (its validation split), a labelled folder or 'shapes'")
    _inference_flags(e)
    e.set_defaults(func=_eval)

    d = sub.add_parser("predict", help="write colourised masks and overlays of a checkpoint's predictions")
    add_checkpoint_predict_flags(d, checkpoint_help="a leanvit segmentation checkpoint",
                                 out_help="folder for IMAGE stem + _mask.png / _overlay.png")
    d.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours")
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


def _train(args: argparse.Namespace) -> int:
    from ..dense.segmentation_task import SegmentationTask

    return run_train(args, DENSE_FLAG_KEYS, command="segment train", default_recipe="semantic_fpn_shvit_s4_80k",
                     summary_line=best_metric_line(".2f"), task=SegmentationTask)


def _eval(args: argparse.Namespace) -> int:
    from ..dense.seg_predict import evaluate_checkpoint

    setup_logging()
    result = evaluate_checkpoint(args.checkpoint, args.data, ema=args.ema, workers=args.workers, device=args.device,
                                 out=args.out, progress=not args.no_progress, **_inference(args))
    print_evaluation(result, f"mIoU {result['mIoU']:.2f}  mAcc {result['mAcc']:.2f}  aAcc {result['aAcc']:.2f}  "
                             f"({result['images']} images)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ..dense.seg_predict import predict_images

    setup_logging()
    results = predict_images(args.checkpoint, args.images, args.out, device=args.device, ema=args.ema,
                             alpha=args.alpha, **_inference(args))
    for r in results:
        top = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(r["classes"].items(), key=lambda kv: -kv[1])[:3])
        print(f"{r['image']} -> {r['mask']}, {r['overlay']}: {top}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..dense.seg_export import SegExportError
    from ..dense.seg_predict import export_checkpoint

    try:
        result = export_checkpoint(args.checkpoint, args.output, args.format, size=args.size,
                                   fixed_size=args.fixed_size, ema=args.ema)
    except SegExportError as e:
        print(f"leanvit segment export: error: {e}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0
