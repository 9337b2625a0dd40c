"""Segmentors from leanvit training checkpoints: colourised predictions and exports (the evaluation of a
checkpoint is :meth:`SegmentationTask.evaluate_checkpoint <leanvit.train.task.Task.evaluate_checkpoint>`).

- :func:`load_segmentor`: rebuild the segmentor a ``leanvit segment train`` checkpoint was trained as;
- :func:`predict_images`: per image, ``<stem>_mask.png`` (class colours) and ``<stem>_overlay.png``;
- :func:`export_checkpoint`: ONNX / OpenVINO, verified.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .._io import atomic_write
from ..deploy.export import ExportResult, export_segmentor
from ..errors import MissingFileError
from .ade20k import SegEvalTransform, colorize, overlay, palette
from .options import SegmentationPredictOptions
from .segmentation_task import SegmentationTask, inference_options
from .segmentors import Segmentor, segment

__all__ = ["load_segmentor", "predict_images", "export_checkpoint"]

log = logging.getLogger("leanvit.dense")


def load_segmentor(checkpoint: str | os.PathLike, ema: bool = False) -> tuple[Segmentor, dict[str, Any]]:
    """(segmentor in eval mode, the checkpoint's metadata) of a ``leanvit segment train`` checkpoint."""
    model, meta = SegmentationTask.load_trained(checkpoint, ema)
    assert isinstance(model, Segmentor)  # create_segmentor built it
    return model, meta


def _save_png(path: Path, chw: torch.Tensor) -> None:
    pixels = np.ascontiguousarray(chw.permute(1, 2, 0).numpy())
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))


@torch.no_grad()
def predict_images(options: SegmentationPredictOptions) -> list[dict[str, Any]]:
    """Segment ``options.images``; write ``options.out/<stem>_mask.png`` and ``<stem>_overlay.png``; return the
    class shares. Inference (mode, crop, ...): the checkpoint's, under the options that are set."""
    missing = [p for p in options.images if not Path(p).is_file()]
    if missing:
        raise MissingFileError(f"image file(s) not found: {', '.join(missing[:5])}")
    model, meta = load_segmentor(options.checkpoint, options.ema)
    inference = inference_options(meta, options)
    device = options.device
    model.to(device)
    colours = palette(meta["num_classes"])
    transform = SegEvalTransform(tuple(meta["config"]["task"]["options"].get("eval_scale", (2048, 512))))
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in options.images:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        x, _ = transform(rgb)
        probs = segment(model, x[None].to(device), (rgb.height, rgb.width), **inference)
        label = probs.argmax(1)[0].cpu()
        stem = Path(path).stem
        mask_path, overlay_path = out / f"{stem}_mask.png", out / f"{stem}_overlay.png"
        _save_png(mask_path, colorize(label, colours))
        original = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)
        _save_png(overlay_path, overlay(original, label, colours, options.alpha))
        counts = torch.bincount(label.reshape(-1), minlength=meta["num_classes"])
        shares = {meta["classes"][i]: round(c / label.numel(), 4) for i, c in enumerate(counts.tolist()) if c}
        results.append(dict(image=str(path), mask=str(mask_path), overlay=str(overlay_path), classes=shares))
    log.info("segmented %d image(s) into %s", len(results), out)
    return results


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, format: str | None = None, *,
                      size: Sequence[int] = (512, 512), fixed_size: bool = False, ema: bool = False) -> ExportResult:
    """Export a ``leanvit segment train`` checkpoint (``format``: onnx | openvino, default from the suffix).

    ``size``: the trace size (H, W); ``fixed_size``: only the batch stays free (SepViT backbones need it).
    Raises :class:`~leanvit.deploy.export.ExportVerificationError` (the artifact kept as ``output.failed``)
    when the artifact does not match PyTorch.
    """
    fmt = format or ("openvino" if str(output).endswith(".xml") else "onnx")
    model, _ = load_segmentor(checkpoint, ema)
    return export_segmentor(model, output, fmt, trace_size=(int(size[0]), int(size[1])), dynamic_size=not fixed_size)
