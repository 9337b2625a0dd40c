"""``leanvit detect train | eval | predict``: argument parsing only; the work is in leanvit.dense."""
from __future__ import annotations

import argparse
import json

from .train import _setup_logging, train_task_command

__all__ = ["register"]

# Command-line flags -> config keys (applied after the recipe, before --set).
_FLAG_KEYS = {
    "model": "model.name", "data": "data.path", "epochs": "train.epochs", "batch_size": "train.batch_size",
    "output": "output", "max_steps": "train.max_steps", "seed": "train.seed", "resume": "resume",
    "backbone_checkpoint": "task.backbone_checkpoint", "finetune": "finetune.checkpoint",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``detect`` with its ``train``, ``eval`` and ``predict`` sub-commands."""
    p = subparsers.add_parser("detect", help="COCO detection / instance segmentation: train, eval, predict",
                              description="RetinaNet, Mask R-CNN and Faster R-CNN on leanvit backbones.")
    sub = p.add_subparsers(dest="detect_command", metavar="SUBCOMMAND")

    t = sub.add_parser("train", help="train a detector (single process, or distributed under torchrun / SLURM)",
                       description="Train with a detection recipe (e.g. retinanet_shvit_s4_1x, mask_rcnn_shvit_s4_1x) "
                                   "through leanvit's training loop. Writes OUTPUT/last.ckpt, best.ckpt, config.yaml, "
                                   "metrics.csv, summary.json. Distributed: torchrun --nproc_per_node=K -m leanvit "
                                   "detect train ...")
    t.add_argument("--recipe", help="recipe name or YAML path (default: the checkpoint's config with --resume)")
    t.add_argument("--data", help="COCO root (annotations/instances_{train,val}2017.json, train2017/, val2017/) "
                                  "or 'shapes' (built-in synthetic data)")
    t.add_argument("--model", help="backbone (a leanvit model name; default: the recipe's)")
    t.add_argument("--backbone-checkpoint", help="ImageNet weights for the backbone (leanvit, timm or official file)")
    t.add_argument("--finetune", help="a leanvit detection checkpoint to start from")
    t.add_argument("--output", help="output directory")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int, help="images per process per step (official: 2 x 8 GPUs = 16)")
    t.add_argument("--max-steps", type=int, help="stop after this many optimizer updates")
    t.add_argument("--seed", type=int)
    t.add_argument("--resume", help="training checkpoint to continue exactly (e.g. OUTPUT/last.ckpt)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.lr=2e-4 or --set 'task.options={min_size: 640, "
                        "max_size: 1066}' (replaces the mapping; repeatable)")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="COCO box (and mask) AP of a detection checkpoint")
    e.add_argument("--checkpoint", required=True, help="a leanvit detection checkpoint (OUTPUT/best.ckpt)")
    e.add_argument("--data", required=True, help="COCO root (its val2017 split) or 'shapes'")
    e.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    e.add_argument("--batch-size", type=int, default=2)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    e.add_argument("--out", help="write the results as JSON to this file")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_eval)

    d = sub.add_parser("predict", help="draw a checkpoint's detections on images")
    d.add_argument("images", nargs="+", metavar="IMAGE")
    d.add_argument("--checkpoint", required=True, help="a leanvit detection checkpoint")
    d.add_argument("--out", required=True, help="folder for the drawn images (IMAGE stem + .png)")
    d.add_argument("--score-thresh", type=float, default=0.5, help="draw detections scoring at least this")
    d.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    d.add_argument("--ema", action="store_true")
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
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _train(args: argparse.Namespace) -> int:
    from ..dense.detection_task import DetectionTask

    return train_task_command(args, _FLAG_KEYS, command="detect", task_name="detection", task_factory=DetectionTask,
                              example_recipe="retinanet_shvit_s4_1x")


def _eval(args: argparse.Namespace) -> int:
    import os

    from ..dense.predict import evaluate_checkpoint

    _setup_logging()
    result = evaluate_checkpoint(args.checkpoint, args.data, ema=args.ema, batch_size=args.batch_size,
                                 workers=args.workers, device=args.device, out=args.out,
                                 progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(result.pop("table"))
        print(json.dumps(result, indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ..dense.predict import predict_images

    _setup_logging()
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
