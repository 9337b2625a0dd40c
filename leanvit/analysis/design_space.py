"""Design-space speed studies: models built from config switches, timed with leanvit's benchmark protocol.

Protocol (the papers' CPU speed test): BN-fused model, ``torch.jit.trace``, batch 16, fp32, one thread,
random weights; timed in interleaved rounds on the process CPU clock (``leanvit.bench.timing``), so load
from other jobs hits every configuration alike. Ratios to the study's reference row are the result;
absolute images/s belong to this machine. Accuracy columns need one ImageNet training per point.

Studies (``STUDIES``):

- ``shvit-macro`` (SHViT Fig. 2): (a) 4x4 patchify + 4 stages, (b) 16x16 patchify + 3 stages, (b') = (b) at
  256, (b'') = (b) with attention in stage 1. The paper's per-stage widths are in an image table not yet
  transcribed: these presets are **provisional** (leanvit's choice): (b) = SHViT-S1, (a) = two extra
  leading stages at strides 4 and 8 (widths w1/4, w1/2, depth 2) then (b)'s first two stages.
- ``shvit-tab6`` (SHViT Tab. 6 speed rows on S3): no attention, partial ratio 1/8, 1/4.67 (default), 1/2.
  Row (1) (SHSA -> MHSA) is not built: leanvit has no MHSA block for SHViT yet.
- ``evit-fig7`` (EfficientViT Fig. 7 on M4): per-head Q/K dim 4..64 at V ratio 1, and V ratio 0.25..2 at
  Q/K 16 (two one-dimensional sweeps, a project choice; V ratio != 1 runs without the cascade, flagged).
- ``evit-tab6`` (EfficientViT Tab. 6 speed side on M4): MHSA instead of CGA, no cascade, FFN ratio 4.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..errors import InvalidValueError
from ..models import count_macs, count_params
from ..bench.timing import interleaved_medians
from ..models import fuse
from ..deploy.capabilities import torch_threads
from ..deploy.runtime import build_runtime
from ..models.efficientvit_m import EfficientViTM
from ..models.shvit import SHViT

__all__ = ["DesignPoint", "STUDIES", "build_point", "study_rows"]

_S1 = dict(embed_dim=(128, 224, 320), depth=(2, 4, 5), partial_dim=(32, 48, 68), block_types=("i", "s", "s"))
_S3 = dict(embed_dim=(192, 352, 448), depth=(3, 5, 5), partial_dim=(48, 75, 96), block_types=("i", "s", "s"))
_M4 = dict(embed_dim=(128, 256, 384), depth=(1, 2, 3), num_heads=(4, 4, 4), kernels=(7, 5, 3, 3))


@dataclass(frozen=True)
class DesignPoint:
    """One configuration: a family class, its constructor switches, the input size and a note."""

    label: str
    family: str  # "shvit" or "efficientvit_m"
    switches: dict[str, Any] = field(default_factory=dict)
    img_size: int = 224
    note: str = ""


def _shvit(label: str, note: str = "", img_size: int = 224, **changes: Any) -> DesignPoint:
    return DesignPoint(label, "shvit", {**_S1, **changes}, img_size, note)


def _s3(label: str, note: str = "", **changes: Any) -> DesignPoint:
    return DesignPoint(label, "shvit", {**_S3, **changes}, 224, note)


def _m4(label: str, note: str = "", **changes: Any) -> DesignPoint:
    return DesignPoint(label, "efficientvit_m", {**_M4, **changes}, 224, note)


STUDIES: dict[str, tuple[str, list[DesignPoint]]] = {
    "shvit-macro": ("SHViT Fig. 2 macro design (provisional presets)", [
        _shvit("a", "4x4 patchify, 4 stages (provisional)", stem_stride=4, embed_dim=(32, 64, 128, 224),
               depth=(2, 2, 2, 4), partial_dim=(8, 16, 32, 48), block_types=("i", "i", "i", "s")),
        _shvit("b", "16x16 patchify, 3 stages = SHViT-S1"),
        _shvit("b'", "(b) at 256x256", img_size=256),
        _shvit("b''", "(b) with attention in stage 1", block_types=("s", "s", "s")),
    ]),
    "shvit-tab6": ("SHViT Tab. 6 speed rows (S3)", [
        _s3("(4) partial 1/4.67", "S3 default (reference)"),
        _s3("(2) no attention", block_types=("i", "i", "i")),
        _s3("(3) partial 1/8", partial_dim=(24, 44, 56)),
        _s3("(5) partial 1/2", partial_dim=(96, 176, 224)),
    ]),
    "evit-fig7": ("EfficientViT Fig. 7 Q/K dim and V ratio sweeps (M4)", [
        _m4("qk16 v1", "M4 (reference)"),
        *[_m4(f"qk{d} v1", key_dim=d) for d in (4, 8, 32, 64)],
        *[_m4(f"qk16 v{r}", "no cascade (V ratio != 1)", v_ratio=r, cascade=False) for r in (0.25, 0.5, 1.5, 2.0)],
        _m4("qk16 v1 no-cascade", "no cascade", cascade=False),
    ]),
    "evit-tab6": ("EfficientViT Tab. 6 speed side (M4)", [
        _m4("M4", "reference"),
        _m4("MHSA instead of CGA", mixer="mhsa"),
        _m4("no cascade", cascade=False),
        _m4("FFN ratio 4", ffn_ratio=4),
    ]),
}


def build_point(point: DesignPoint) -> nn.Module:
    """The random-weight eval model of a design point."""
    if point.family == "shvit":
        return SHViT(**point.switches).eval()
    if point.family == "efficientvit_m":
        return EfficientViTM(img_size=point.img_size, **point.switches).eval()
    raise InvalidValueError(f"unknown family {point.family!r} (shvit or efficientvit_m)")


def _stage1_tokens(model: nn.Module, img_size: int) -> int:
    with torch.no_grad():
        return int(torch.tensor(model._embed(torch.zeros(1, 3, img_size, img_size)).shape[-2:]).prod())


def study_rows(
    study: str, *, batch_size: int = 16, threads: int = 1, duration_s: float = 2.0, rounds: int = 3,
    measure_speed: bool = True, img_size: int | None = None, progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per design point of ``study``: params, MACs (fused, batch 1), stage-1 tokens and, with
    ``measure_speed``, jit throughput at ``batch_size`` on ``threads`` threads with the ratio to the first row.
    ``img_size`` replaces every point's input side (smoke runs; (b') then equals (b))."""
    if study not in STUDIES:
        raise InvalidValueError(f"unknown study {study!r}; choose from {', '.join(STUDIES)}")
    _, points = STUDIES[study]
    if img_size:
        points = [DesignPoint(p.label, p.family, p.switches, img_size, p.note) for p in points]
    rows, calls = [], {}
    with torch_threads(threads):
        for point in points:
            model = build_point(point)
            fused = fuse(model)
            rows.append(dict(study=study, config=point.label, note=point.note, img_size=point.img_size,
                             params_m=count_params(fused) / 1e6, macs_m=count_macs(model, point.img_size) / 1e6,
                             stage1_tokens=_stage1_tokens(model, point.img_size), switches=point.switches))
            if measure_speed:
                example = torch.randn(batch_size, 3, point.img_size, point.img_size)
                runtime = build_runtime(fused, "jit", example, threads=threads)
                prepared = runtime.prepare(example)
                calls[point.label] = lambda rt=runtime, x=prepared: rt.run(x)
            if progress:
                progress(point.label)
        if measure_speed:
            with torch.no_grad():
                medians = interleaved_medians(calls, rounds=rounds, duration_s=duration_s,
                                              warmup_s=min(1.0, duration_s), clock=time.process_time)
            for row in rows:
                per_round = sorted(medians[row["config"]])
                row["ms_per_batch"] = per_round[len(per_round) // 2] * 1e3
                row["throughput"] = batch_size / (row["ms_per_batch"] / 1e3)
            ref = rows[0]["throughput"]
            for row in rows:
                row["speed_ratio"] = row["throughput"] / ref
    ref_macs = rows[0]["macs_m"]
    for row in rows:
        row["macs_ratio"] = row["macs_m"] / ref_macs
    return rows
