"""Held-out learning curve of a detector or a segmentor on the synthetic shapes data (a benchmark, not a test).

Trains ``--arch`` (retinanet | mask_rcnn | faster_rcnn | semantic_fpn | upernet) on ``--train`` fresh shapes
images and evaluates on ``--val`` *other* images (COCO AP, or mIoU) every ``--eval-every`` epochs, through
leanvit's one training loop, then prints the curve from the run's metrics.csv. ``--backbone-checkpoint``
starts the backbone from classification weights (e.g. a short ``leanvit train`` run); without it the backbone is randomly initialised and BatchNorm trains (norm_eval off),
which in CPU minutes barely generalises (docs/benchmarks.md). Example::

    PYTHONPATH=. python benchmarks/dense_learning.py --arch mask_rcnn --epochs 30 --out runs/dense_curve
    PYTHONPATH=. python benchmarks/dense_learning.py --arch semantic_fpn --epochs 30 --out runs/seg_curve
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
from pathlib import Path

import torch

from leanvit.dense.detection_task import DetectionTask
from leanvit.dense.segmentation_task import SegmentationTask
from leanvit.train import load_config, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mask_rcnn", choices=("retinanet", "mask_rcnn", "faster_rcnn", "semantic_fpn", "upernet"))
    ap.add_argument("--backbone", default="efficientvit_m0")
    ap.add_argument("--backbone-checkpoint", help="classification weights for the backbone (any leanvit layout)")
    ap.add_argument("--train", type=int, default=256, help="training images")
    ap.add_argument("--val", type=int, default=64, help="held-out images")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/dense_learning")
    args = ap.parse_args()

    pretrained = args.backbone_checkpoint is not None
    segmentation = args.arch in ("semantic_fpn", "upernet")
    shapes = {"train": args.train, "val": args.val, "size": args.size}
    if segmentation:
        s = args.size  # no rescale or crop: the scenes are already at the training size
        options = {"crop_size": s, "scale": [s, s], "ratio_range": [1.0, 1.0], "eval_scale": [s, s], "flip": 0.5,
                   "norm_eval": pretrained, "shapes": shapes,
                   "segmentor": {"channels": 64, "neck_channels": 64} if args.arch == "semantic_fpn" else {}}
        metrics = ("mIoU", "mAcc", "aAcc")
    else:
        detector = {"fpn_channels": 64}
        if args.arch != "retinanet":
            detector.update(rpn_post_nms_top_n_train=300, box_batch_size_per_image=64)
        options = {"min_size": args.size, "max_size": args.size, "norm_eval": pretrained, "flip_prob": 0.5,
                   "detector": detector, "shapes": shapes}
        metrics = ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50")
    cfg = load_config(None, {
        "task.name": "segmentation" if segmentation else "detection", "task.arch": args.arch,
        "model.name": args.backbone, "data.path": "shapes", "task.backbone_checkpoint": args.backbone_checkpoint,
        "task.options": options, "optim.lr": args.lr,
        "optim.no_decay_names": ["attention_biases"], "sched.sched": "cosine",
        "sched.step_on": "update", "sched.warmup_steps": 100, "sched.warmup_ratio": 0.001, "sched.min_lr": 1e-5,
        "train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.eval_every": args.eval_every,
        "train.threads": args.threads, "data.workers": 0, "output": args.out, "log.tensorboard": False,
        **({"data.train_split": "train", "data.val_split": "val"} if segmentation else {}),
    })
    summary = train(cfg, task=SegmentationTask(cfg) if segmentation else DetectionTask(cfg))
    with open(Path(args.out) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get(metrics[0])]
    curve = [dict(epoch=int(r["epoch"]) + 1, step=int(r["global_step"]), train_loss=float(r["train_loss"]),
                  **{k: float(r[k]) for k in metrics if r.get(k)})
             for r in rows]
    report = dict(arch=args.arch, backbone=args.backbone, backbone_start="classification checkpoint " +
                  str(args.backbone_checkpoint) if pretrained else "random init", train_images=args.train,
                  held_out_images=args.val, size=args.size, curve=curve, wall_time_s=summary["wall_time_s"],
                  machine=platform.processor() or platform.machine(), torch=torch.__version__)
    (Path(args.out) / "learning_curve.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
