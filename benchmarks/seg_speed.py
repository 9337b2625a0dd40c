"""Segmentor speed and memory at 512x512: leanvit's dense backbones beside timm's ``features_only`` ones.

For each family (one variant each) and head (Semantic FPN, UperNet), the same heads are built on
(a) ``leanvit.dense.create_backbone`` and (b) ``timm.create_model(name, features_only=True)``, fused for
inference (``leanvit.fuse``; timm models are folded the same way), and raced in interleaved rounds on the
process CPU clock (``leanvit.bench.timing.interleaved_medians``), batch 1, fp32, eager PyTorch. Peak memory
is the RSS high-water mark of one forward above the RSS before it. SepViT has no timm port: leanvit only.

Note: leanvit's EfficientViT-M dense backbone uses 7x7 windows in every stage (the official detectors);
timm's is the 224-px classifier (stage-3 window clamped to 4), so the two compute different functions.

    OMP_NUM_THREADS=1 python benchmarks/seg_speed.py --rounds 5 --out seg_speed.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from collections import OrderedDict

import timm
import torch
from torch import nn

import leanvit
from leanvit._io import atomic_write_text
from leanvit.bench.memory import PeakMemory
from leanvit.bench.timing import interleaved_medians
from leanvit.dense import create_backbone, create_segmentor

FAMILIES = {"shvit": "shvit_s1", "efficientvit_m": "efficientvit_m0", "sepvit": "sepvit_lite"}


class TimmFeatures(nn.Module):
    """timm's ``features_only`` model with the adapter's interface (``out_channels``, ``strides``, dict output)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.model = timm.create_model(name, features_only=True, pretrained=False)
        self.out_channels = list(self.model.feature_info.channels())
        self.strides = list(self.model.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict((str(i), f.contiguous()) for i, f in enumerate(self.model(x)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per call per round")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--out", help="write the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = torch.randn(1, 3, args.size, args.size)
    models: dict[str, nn.Module] = {}
    for family in args.families:
        name = FAMILIES[family]
        backbones = {"leanvit": create_backbone(name, norm_eval=False)}
        if family != "sepvit":
            backbones["timm"] = TimmFeatures(name)
        for arch in ("semantic_fpn", "upernet"):
            for source, backbone in backbones.items():
                seg = create_segmentor(arch, backbone, num_classes=150).eval()
                models[f"{name} {arch} {source}"] = leanvit.fuse(seg)
    memory = {}
    for key, model in models.items():
        with torch.no_grad(), PeakMemory() as peak:
            model(x)
        memory[key] = peak.peak_mb
    calls = {key: (lambda m=m: m(x)) for key, m in models.items()}
    with torch.no_grad():
        medians = interleaved_medians(calls, rounds=args.rounds, duration_s=args.duration,
                                      clock=time.process_time)
    rows = []
    for key, times in medians.items():
        best = sorted(times)[len(times) // 2]
        rows.append(dict(model=key, images_per_s=round(1.0 / best, 3), ms=round(1000 * best, 1),
                         peak_mb=round(memory[key], 1), rounds=[round(1000 * t, 1) for t in times]))
        print(f"{key:40s} {1.0 / best:7.2f} img/s  {1000 * best:8.1f} ms  peak {memory[key]:7.1f} MiB")
    env = dict(machine=platform.processor() or platform.machine(), torch=torch.__version__, timm=timm.__version__,
               threads=1, size=args.size, batch=1, clock="process CPU time")
    if args.out:
        atomic_write_text(args.out, json.dumps(dict(env=env, rows=rows), indent=2))


if __name__ == "__main__":
    main()
