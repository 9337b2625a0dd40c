"""``leanvit detect train | eval | predict | bench``: argument parsing only; the work is in leanvit.dense."""
from __future__ import annotations

import argparse
import json

from .._flags import add_dataclass_flags, dataclass_from_args
from ..dense.options import DetectionBenchOptions, DetectionEvalOptions, DetectionPredictOptions
from ._task import DENSE_FLAG_KEYS, add_command_group, add_train_flags, best_metric_line, print_evaluation, run_train, setup_logging

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``detect`` with its ``train``, ``eval``, ``predict`` and ``bench`` sub-commands."""
    sub = add_command_group(subparsers, "detect", help="COCO detection / instance segmentation: train, eval, predict",
                            description="RetinaNet, Mask R-CNN and Faster R-CNN on leanvit backbones.")

    t = sub.add_parser("train", help="train a detector (single process, or distributed under torchrun / SLURM)",
                       description="Train with a detection recipe (e.g. retinanet_shvit_s4_1x, mask_rcnn_shvit_s4_1x) "
                                   "through leanvit's training loop. Writes OUTPUT/last.ckpt, best.ckpt, config.yaml, "
                                   "metrics.csv, summary.json. Distributed: torchrun --nproc_per_node=K -m leanvit "
                                   "detect train ...")
    add_train_flags(
        t, exclude=("no_resume", "list_recipes"),
        data="COCO root (annotations/instances_{train,val}2017.json, train2017/, val2017/) or 'shapes' (built-in "
             "synthetic data)",
        finetune="a leanvit detection checkpoint to start from",
        overrides="override any config key, e.g. --set optim.lr=2e-4 or --set 'task.options={min_size: 640, "
                  "max_size: 1066}' (replaces the mapping; repeatable)")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="COCO box (and mask) AP of a detection checkpoint")
    add_dataclass_flags(e, DetectionEvalOptions)
    e.set_defaults(func=_eval)

    d = sub.add_parser("predict", help="draw a checkpoint's detections on images")
    add_dataclass_flags(d, DetectionPredictOptions)
    d.set_defaults(func=_predict)

    b = sub.add_parser("bench", help="backbone latency at 512x512 (SHViT Table 5) and detector images/s",
                       description="Backbone-only latency, BN fused, per image (CPU batch 16 on the process CPU "
                                   "clock, GPU batch 32 under fp16), leanvit beside timm's features_only ports "
                                   "and a ResNet-50 in one interleaved run; then whole detectors at 800x1333.")
    add_dataclass_flags(b, DetectionBenchOptions)
    b.set_defaults(func=_bench)


def _train(args: argparse.Namespace) -> int:
    from ..dense.detection_task import DetectionTask

    return run_train(args, DENSE_FLAG_KEYS, command="detect train", default_recipe="retinanet_shvit_s4_1x",
                     summary_line=best_metric_line(".4g"), task=DetectionTask)


def _eval(args: argparse.Namespace) -> int:
    from ..dense.detection_task import DetectionTask

    setup_logging()
    result = DetectionTask.evaluate_checkpoint(dataclass_from_args(DetectionEvalOptions, args))
    table = result.pop("table")
    print_evaluation(result, table)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ..dense.predict import predict_images

    setup_logging()
    results = predict_images(dataclass_from_args(DetectionPredictOptions, args))
    for r in results:
        print(f"{r['image']} -> {r['output']}: {len(r['detections'])} detection(s)")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .._io import atomic_write_text
    from ..bench.env import environment
    from ..dense.options import DEFAULT_BACKBONES
    from ..dense.speed import backbone_latency, detector_throughput, speed_tables

    o = dataclass_from_args(DetectionBenchOptions, args)
    env = environment(o.device)
    print(f"# {env['device']}; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    rows = backbone_latency(o.names or DEFAULT_BACKBONES, batch=o.batch, device=o.device, threads=o.threads,
                            rounds=o.rounds, duration_s=o.seconds)
    det_rows = [r for arch in o.detectors for r in detector_throughput(
        arch=arch, threads=o.threads, rounds=o.rounds, duration_s=o.seconds)]
    print(speed_tables(rows, det_rows))
    if o.json:
        atomic_write_text(o.json, json.dumps({"env": env, "backbones": rows, "detectors": det_rows}, indent=2))
    return 0
