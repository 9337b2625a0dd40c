"""Detection speed: the papers' backbone-latency protocol and end-to-end detector throughput (SHViT paper Table 5 caption).

Backbone latency (SHViT Table 5): a 512x512 batch through the backbone only (no neck, no head), BatchNorms
fused, after warm-up; per-image ms = batch time / batch size; CPU batch 16, GPU batch 32 under fp16 autocast.
leanvit's dense backbones race timm's ``features_only`` versions of the same models and a ResNet-50 in one
interleaved run (:func:`leanvit.bench.timing.interleaved_medians`): on CPU on the process CPU clock, so load
from other processes does not count, with the thread count stated (CPU time summed over threads).

Used by ``leanvit detect bench`` and ``benchmarks/dense_speed.py``.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import timm
import torch
import torchvision
from torch import nn
from torch.fx.experimental import optimization as fx_optimization
from torchvision.models.feature_extraction import create_feature_extractor

from .._text import markdown_table
from ..bench.timing import interleaved_medians
from ..deploy.capabilities import torch_threads
from ..errors import InvalidValueError, UnknownNameError
from ..models import is_model
from ..zoo import fuse_model
from .backbone import create_backbone, dense_model_kwargs
from .detectors import create_detector
from .options import DEFAULT_BACKBONES

__all__ = [
    "backbone_latency", "detector_throughput", "speed_tables", "DEFAULT_BACKBONES", "DEFAULT_DETECTOR_BACKBONES",
    "resnet50_features",
]

DEFAULT_DETECTOR_BACKBONES = ("shvit_s4", "efficientvit_m4")


def resnet50_features() -> nn.Module:
    """torchvision's ResNet-50 (random weights) returning its 4 stage maps (strides 4-32), BatchNorms folded by
    ``torch.fx``'s conv-BN fusion."""
    fused = fx_optimization.fuse(torchvision.models.resnet50().eval())
    return create_feature_extractor(fused, {f"layer{i}": str(i - 1) for i in range(1, 5)}).eval()


class _StageMaps(nn.Module):
    """A (fused) leanvit model as its dense backbone: the stage maps only, no classifier work."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, intermediates_only=True)


def _backbones(names: Sequence[str], with_timm: bool, baseline: str | None) -> dict[str, nn.Module]:
    calls: dict[str, nn.Module] = {}
    for name in names:
        if not is_model(name):
            raise UnknownNameError(f"{name!r} is not a leanvit model (leanvit.list_models())")
        calls[name] = _StageMaps(fuse_model(create_backbone(name).model, "torch"))
        if with_timm and name in timm.list_models():  # timm ports SHViT and EfficientViT-M, not SepViT
            # timm's port built with leanvit's dense settings (EfficientViT-M: 448 px, the same 7x7 windows)
            ported = fuse_model(timm.create_model(name, pretrained=False, features_only=True,
                                                  **dense_model_kwargs(name)))
            calls[f"timm:{name}"] = ported
    if baseline == "resnet50":
        calls["resnet50"] = resnet50_features()
    elif baseline is not None:
        raise InvalidValueError(f"unknown baseline {baseline!r}; use 'resnet50' or None")
    return calls


def _timed(calls: dict[str, Callable[[], Any]], device: torch.device, rounds: int, duration_s: float,
           warmup_s: float) -> dict[str, float]:
    if device.type == "cuda":
        def sync(fn: Callable[[], Any]) -> Callable[[], Any]:
            return lambda: (fn(), torch.cuda.synchronize(device))
        calls = {k: sync(fn) for k, fn in calls.items()}
        clock = time.perf_counter
    else:
        clock = time.process_time
    medians = interleaved_medians(calls, rounds=rounds, duration_s=duration_s, warmup_s=warmup_s, clock=clock)
    return {k: sorted(v)[len(v) // 2] for k, v in medians.items()}


def backbone_latency(
    names: Sequence[str] = DEFAULT_BACKBONES,
    *,
    img_size: int = 512,
    batch: int | None = None,
    device: str | torch.device = "cpu",
    with_timm: bool = True,
    baseline: str | None = "resnet50",
    threads: int | None = None,
    rounds: int = 5,
    duration_s: float = 1.0,
    warmup_s: float = 1.0,
) -> list[dict[str, Any]]:
    """Per-image backbone latency (ms) of leanvit dense backbones, timm's ``features_only`` ports and ResNet-50.

    ``batch`` defaults to 16 on CPU, 32 on GPU (fp16 autocast there). Rows: ``model``, ``ms_per_image``,
    ``batch``, ``img_size``, ``device``, ``threads``, and ``vs_timm`` (leanvit / timm latency) where timm has the model.
    """
    device = torch.device(device)
    batch = batch or (32 if device.type == "cuda" else 16)
    with torch_threads(threads), torch.inference_mode():
        models = _backbones(names, with_timm, baseline)
        for m in models.values():
            m.to(device)
        x = torch.rand(batch, 3, img_size, img_size, device=device)
        use_amp = device.type == "cuda"

        def call(fn: nn.Module) -> Callable[[], Any]:
            def run() -> Any:
                with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                    return fn(x)
            return run

        seconds = _timed({k: call(fn) for k, fn in models.items()}, device, rounds, duration_s, warmup_s)
        n_threads = torch.get_num_threads()
    rows = []
    for key, s in seconds.items():
        row = dict(model=key, ms_per_image=1000 * s / batch, batch=batch, img_size=img_size, device=str(device),
                   threads=n_threads if device.type == "cpu" else None)
        if f"timm:{key}" in seconds:
            row["vs_timm"] = s / seconds[f"timm:{key}"]
        rows.append(row)
    return rows


def detector_throughput(
    names: Sequence[str] = DEFAULT_DETECTOR_BACKBONES,
    arch: str = "retinanet",
    *,
    size: tuple[int, int] = (800, 1333),
    batch: int = 1,
    threads: int | None = None,
    rounds: int = 3,
    duration_s: float = 2.0,
    warmup_s: float = 1.0,
) -> list[dict[str, Any]]:
    """End-to-end CPU images/s of ``arch`` on each backbone at ``size`` (H, W): the torchvision model's whole
    eval forward (resize no-op at 800x1333, normalise, pad to 32, backbone, neck, head, post-processing).
    Random weights: with untrained heads few boxes pass the score threshold, so mask pasting is not timed."""
    with torch_threads(threads), torch.inference_mode():
        models = {n: create_detector(arch, n).eval() for n in names}
        images = [torch.rand(3, *size) for _ in range(batch)]
        seconds = _timed({n: (lambda m=m: m(images)) for n, m in models.items()}, torch.device("cpu"), rounds,
                         duration_s, warmup_s)
        n_threads = torch.get_num_threads()
    return [dict(model=n, arch=arch, images_per_s=batch / s, ms_per_image=1000 * s / batch, size=list(size),
                 batch=batch, threads=n_threads) for n, s in seconds.items()]


def speed_tables(backbone_rows: list[dict[str, Any]], detector_rows: list[dict[str, Any]] = ()) -> str:
    """Markdown tables of :func:`backbone_latency` and :func:`detector_throughput` rows."""
    lines = []
    if backbone_rows:
        r0 = backbone_rows[0]
        threads = f", {r0['threads']} thread(s)" if r0["threads"] else ""
        lines += [f"Backbone latency, {r0['img_size']}x{r0['img_size']}, batch {r0['batch']}, {r0['device']}{threads}, "
                  "BN fused", ""]
        lines.append(markdown_table(["backbone", "ms / image", "leanvit / timm"], [
            [r["model"], f"{r['ms_per_image']:.1f}", f"{r['vs_timm']:.2f}" if "vs_timm" in r else ""]
            for r in backbone_rows]).rstrip("\n"))
    if detector_rows:
        r0 = detector_rows[0]
        lines += ["", f"Detectors end to end, {r0['size'][0]}x{r0['size'][1]}, batch {r0['batch']}, "
                  f"{r0['threads']} thread(s), random weights", ""]
        lines.append(markdown_table(["detector", "backbone", "images / s", "ms / image"], [
            [r["arch"], r["model"], f"{r['images_per_s']:.3f}", f"{r['ms_per_image']:.0f}"]
            for r in detector_rows]).rstrip("\n"))
    return "\n".join(lines)
