"""``leanvit detect train | eval | predict | bench``: argument parsing only; the work is in leanvit.dense."""
from __future__ import annotations

import argparse
import json

from ._task import (DENSE_FLAG_KEYS, add_checkpoint_eval_flags, add_checkpoint_predict_flags, add_command_group,
                    add_train_flags, best_metric_line, print_evaluation, run_train, setup_logging)

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
        t, recipe_help="recipe name or YAML path (default: the checkpoint's config with --resume)",
        data_help="COCO root (annotations/instances_{train,val}2017.json, train2017/, val2017/) or 'shapes' "
                  "(built-in synthetic data)",
        finetune_help="a leanvit detection checkpoint to start from",
        set_help="override any config key, e.g. --set optim.lr=2e-4 or --set 'task.options={min_size: 640, "
                 "max_size: 1066}' (replaces the mapping; repeatable)")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="COCO box (and mask) AP of a detection checkpoint")
    add_checkpoint_eval_flags(e, checkpoint_help="a leanvit detection checkpoint (OUTPUT/best.ckpt)",
                              data_help="COCO root (its val2017 split) or 'shapes'", batch_size_default=2)
    e.set_defaults(func=_eval)

    d = sub.add_parser("predict", help="draw a checkpoint's detections on images")
    add_checkpoint_predict_flags(d, checkpoint_help="a leanvit detection checkpoint",
                                 out_help="folder for the drawn images (IMAGE stem + .png)")
    d.add_argument("--score-thresh", type=float, default=0.5, help="draw detections scoring at least this")
    d.set_defaults(func=_predict)

    b = sub.add_parser("bench", help="backbone latency at 512x512 (SHViT Table 5) and detector images/s",
                       description="Backbone-only latency, BN fused, per image (CPU batch 16 on the process CPU "
                                   "clock, GPU batch 32 under fp16), leanvit beside timm's features_only ports "
                                   "and a ResNet-50 in one interleaved run; then whole detectors at 800x1333.")
    b.add_argument("names", nargs="*", help="leanvit backbones (default: shvit_s1 shvit_s4 efficientvit_m0 "
                                            "efficientvit_m4 sepvit_lite)")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    b.add_argument("--batch", type=int, help="default: 16 on CPU, 32 on GPU")
    b.add_argument("--threads", type=int, default=1, help="CPU threads (CPU time is summed over threads)")
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument("--seconds", type=float, default=1.0, help="timed seconds per model and round")
    b.add_argument("--detectors", nargs="*", default=[], metavar="ARCH",
                   help="also time these detectors end to end at 800x1333 on CPU (retinanet mask_rcnn faster_rcnn)")
    b.add_argument("--json", help="write the rows as JSON to this file")
    b.set_defaults(func=_bench)


def _train(args: argparse.Namespace) -> int:
    from ..dense.detection_task import DetectionTask

    return run_train(args, DENSE_FLAG_KEYS, command="detect train", default_recipe="retinanet_shvit_s4_1x",
                     summary_line=best_metric_line(".4g"), task=DetectionTask)


def _eval(args: argparse.Namespace) -> int:
    from ..dense.predict import evaluate_checkpoint

    setup_logging()
    result = evaluate_checkpoint(args.checkpoint, args.data, ema=args.ema, batch_size=args.batch_size,
                                 workers=args.workers, device=args.device, out=args.out,
                                 progress=not args.no_progress)
    table = result.pop("table")
    print_evaluation(result, table)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ..dense.predict import predict_images

    setup_logging()
    results = predict_images(args.checkpoint, args.images, args.out, score_thresh=args.score_thresh,
                             device=args.device, ema=args.ema)
    for r in results:
        print(f"{r['image']} -> {r['output']}: {len(r['detections'])} detection(s)")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .._io import atomic_write_text
    from ..bench.env import environment
    from ..dense.speed import DEFAULT_BACKBONES, backbone_latency, detector_throughput, speed_tables

    env = environment(args.device)
    print(f"# {env['device']}; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    rows = backbone_latency(args.names or DEFAULT_BACKBONES, batch=args.batch, device=args.device,
                            threads=args.threads, rounds=args.rounds, duration_s=args.seconds)
    det_rows = [r for arch in args.detectors for r in detector_throughput(
        arch=arch, threads=args.threads, rounds=args.rounds, duration_s=args.seconds)]
    print(speed_tables(rows, det_rows))
    if args.json:
        atomic_write_text(args.json, json.dumps({"env": env, "backbones": rows, "detectors": det_rows}, indent=2))
    return 0
