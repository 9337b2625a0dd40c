"""Detection speed: SHViT Table 5's backbone-latency protocol and end-to-end detector throughput.

Backbones (leanvit's dense backbones, timm's ``features_only`` ports of the same variants, torchvision's
ResNet-50) run a 512x512 batch (16 on CPU, 32 under fp16 on a GPU), BN fused, in one interleaved run on the
process CPU clock; then whole detectors at 800x1333, batch 1. This is ``leanvit detect bench`` with the
detectors on by default; the work is in ``leanvit.dense.speed``.

    python benchmarks/dense_speed.py                                  # s1, s4, m0, m4, sepvit_lite + resnet50
    python benchmarks/dense_speed.py shvit_s4 efficientvit_m4 --threads 1 --rounds 3 --json out.json
"""
from __future__ import annotations

import sys

from leanvit.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--detectors" not in argv:
        argv += ["--detectors", "retinanet", "mask_rcnn"]
    sys.exit(main(["detect", "bench", *argv]))
