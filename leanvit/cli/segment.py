"""``leanvit segment train | eval | predict | export``: argument parsing only; the work is in leanvit.dense."""
from __future__ import annotations

import argparse
import sys

from .._flags import add_dataclass_flags, dataclass_from_args
from ..dense.options import SegmentationEvalOptions, SegmentationExportOptions, SegmentationPredictOptions
from ._task import DENSE_FLAG_KEYS, add_command_group, add_train_flags, best_metric_line, print_evaluation, run_train, setup_logging

__all__ = ["register"]


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
        t, exclude=("no_resume", "list_recipes"),
        data="ADE20K root (ADEChallengeData2016/...), a folder with images/<split>/, annotations/<split>/ and "
             "classes.txt, or 'shapes' (built-in synthetic data)",
        finetune="a leanvit segmentation checkpoint to start from",
        max_steps="stop after this many optimizer updates (80k / 160k official)",
        overrides="override any config key, e.g. --set task.options.crop_size=384 (repeatable)")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="mIoU / mAcc / aAcc of a segmentation checkpoint")
    add_dataclass_flags(e, SegmentationEvalOptions)
    e.set_defaults(func=_eval)

    d = sub.add_parser("predict", help="write colourised masks and overlays of a checkpoint's predictions")
    add_dataclass_flags(d, SegmentationPredictOptions)
    d.set_defaults(func=_predict)

    x = sub.add_parser("export", help="export a segmentation checkpoint to ONNX / OpenVINO, verified",
                       description="Writes the BN-fused segmentor (logits at the input size) with dynamic batch, "
                                   "height and width, checked against PyTorch at two other sizes.")
    add_dataclass_flags(x, SegmentationExportOptions)
    x.set_defaults(func=_export)


def _train(args: argparse.Namespace) -> int:
    from ..dense.segmentation_task import SegmentationTask

    return run_train(args, DENSE_FLAG_KEYS, command="segment train", default_recipe="semantic_fpn_shvit_s4_80k",
                     summary_line=best_metric_line(".2f"), task=SegmentationTask)


def _eval(args: argparse.Namespace) -> int:
    from ..dense.segmentation_task import SegmentationTask

    setup_logging()
    result = SegmentationTask.evaluate_checkpoint(dataclass_from_args(SegmentationEvalOptions, args))
    print_evaluation(result, f"mIoU {result['mIoU']:.2f}  mAcc {result['mAcc']:.2f}  aAcc {result['aAcc']:.2f}  "
                             f"({result['images']} images)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ..dense.seg_predict import predict_images

    setup_logging()
    results = predict_images(dataclass_from_args(SegmentationPredictOptions, args))
    for r in results:
        top = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(r["classes"].items(), key=lambda kv: -kv[1])[:3])
        print(f"{r['image']} -> {r['mask']}, {r['overlay']}: {top}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..deploy.export import ExportVerificationError
    from ..dense.seg_predict import export_checkpoint

    try:
        o = dataclass_from_args(SegmentationExportOptions, args)
        result = export_checkpoint(o.checkpoint, o.output, o.format, size=o.size, fixed_size=o.fixed_size, ema=o.ema)
    except ExportVerificationError as e:
        print(e.result.summary())
        print(f"leanvit segment export: error: {e}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0
