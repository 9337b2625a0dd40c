"""Segmentors from leanvit training checkpoints: evaluation and colourised predictions.

- :func:`load_segmentor`: rebuild the segmentor a ``leanvit segment train`` checkpoint was trained as;
- :func:`evaluate_checkpoint`: mIoU / mAcc / aAcc (and per-class IoU) on a dataset's val split;
- :func:`predict_images`: per image, ``<stem>_mask.png`` (class colours) and ``<stem>_overlay.png``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .._io import atomic_write, atomic_write_text
from ..errors import InvalidValueError, MissingFileError
from ..train.distributed import cleanup, init_distributed
from .ade20k import SegEvalTransform, build_seg_loaders, colorize, overlay, palette
from .seg_export import SegExportResult, export_segmentor
from .segmentation_task import EVAL_DEFAULTS, SegmentationTask, evaluate_segmentation
from .segmentors import Segmentor, segment
from .trained import evaluation_config, load_trained_model

__all__ = ["load_segmentor", "evaluate_checkpoint", "predict_images", "export_checkpoint"]

log = logging.getLogger("leanvit.dense")


def load_segmentor(checkpoint: str | os.PathLike, ema: bool = False) -> tuple[Segmentor, dict[str, Any]]:
    """(segmentor in eval mode, the checkpoint's metadata) of a ``leanvit segment train`` checkpoint."""
    model, meta = load_trained_model(checkpoint, SegmentationTask, ema=ema,
                                     other_commands="leanvit eval / leanvit detect eval for those")
    assert isinstance(model, Segmentor)  # create_segmentor built it
    return model, meta


def _inference_options(meta: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(EVAL_DEFAULTS))
    if unknown:
        raise InvalidValueError(f"unknown inference option(s) {unknown}; valid: {', '.join(EVAL_DEFAULTS)}")
    return {**EVAL_DEFAULTS, **meta.get("inference", {}), **{k: v for k, v in overrides.items() if v is not None}}


def evaluate_checkpoint(checkpoint: str | os.PathLike, data: str, *, ema: bool = False, workers: int = 2,
                        device: str = "auto", out: str | os.PathLike | None = None, progress: bool = True,
                        **inference: Any) -> dict[str, Any]:
    """mIoU of ``checkpoint`` on the val split of ``data`` (ADE20K root, folder or ``shapes``); writes ``out``.

    ``inference``: ``mode`` (whole | slide), ``crop``, ``stride``, ``scales``, ``flip``; the checkpoint's by default.
    """
    model, meta = load_segmentor(checkpoint, ema)
    options = _inference_options(meta, inference)
    cfg = evaluation_config(meta, checkpoint, data, workers=workers, device=device)
    info = init_distributed(device)
    try:
        task = SegmentationTask(cfg, need_train=False)
        task.open_data(info)
        if task.classes != meta["classes"]:
            raise InvalidValueError(f"{data} has other classes ({len(task.classes)}) than the checkpoint was trained on "
                                    f"({len(meta['classes'])})")
        _, val_loader, _ = build_seg_loaders(None, task.val_set, None, SegEvalTransform(tuple(task.options["eval_scale"])),
                                             batch_size=1, eval_batch_size=1, workers=workers, seed=0,
                                             rank=info.rank, world=info.world_size)
        model.to(info.device)
        scores, skipped = evaluate_segmentation(model, val_loader, meta["num_classes"], info, classes=task.classes,
                                                progress=progress, **options)
    finally:
        cleanup(info)
    result = dict(checkpoint=str(checkpoint), arch=meta["arch"], backbone=meta["model_name"], data=data,
                  images=len(task.val_set), inference=options, skipped_files=len(set(skipped)),
                  skipped_while_scanning={k: len(v) for k, v in task.val_set.skipped.items()},
                  mIoU=100 * scores["mIoU"], mAcc=100 * scores["mAcc"], aAcc=100 * scores["aAcc"],
                  IoU={k: 100 * v for k, v in scores["IoU"].items()})
    if out is not None and info.is_main:
        atomic_write_text(out, json.dumps(result, indent=2))
    return result


def _save_png(path: Path, chw: torch.Tensor) -> None:
    pixels = np.ascontiguousarray(chw.permute(1, 2, 0).numpy())
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))


@torch.no_grad()
def predict_images(checkpoint: str | os.PathLike, images: Sequence[str], out_dir: str | os.PathLike, *,
                   device: str = "cpu", ema: bool = False, alpha: float = 0.5, **inference: Any) -> list[dict[str, Any]]:
    """Segment ``images``; write ``out_dir/<stem>_mask.png`` and ``<stem>_overlay.png``; return class shares."""
    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        raise MissingFileError(f"image file(s) not found: {', '.join(missing[:5])}")
    model, meta = load_segmentor(checkpoint, ema)
    options = _inference_options(meta, inference)
    model.to(device)
    colours = palette(meta["num_classes"])
    transform = SegEvalTransform(tuple(meta["config"]["task"]["options"].get("eval_scale", (2048, 512))))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in images:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        x, _ = transform(rgb)
        probs = segment(model, x[None].to(device), (rgb.height, rgb.width), **options)
        label = probs.argmax(1)[0].cpu()
        stem = Path(path).stem
        mask_path, overlay_path = out / f"{stem}_mask.png", out / f"{stem}_overlay.png"
        _save_png(mask_path, colorize(label, colours))
        original = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)
        _save_png(overlay_path, overlay(original, label, colours, alpha))
        counts = torch.bincount(label.reshape(-1), minlength=meta["num_classes"])
        shares = {meta["classes"][i]: round(c / label.numel(), 4) for i, c in enumerate(counts.tolist()) if c}
        results.append(dict(image=str(path), mask=str(mask_path), overlay=str(overlay_path), classes=shares))
    log.info("segmented %d image(s) into %s", len(results), out)
    return results


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, format: str | None = None, *,
                      size: Sequence[int] = (512, 512), fixed_size: bool = False, ema: bool = False) -> SegExportResult:
    """Export a ``leanvit segment train`` checkpoint (``format``: onnx | openvino, default from the suffix).

    ``size``: the trace size (H, W); ``fixed_size``: only the batch stays free (SepViT backbones need it).
    Raises :class:`~leanvit.dense.seg_export.SegExportError` when the artifact does not match PyTorch.
    """
    fmt = format or ("openvino" if str(output).endswith(".xml") else "onnx")
    model, _ = load_segmentor(checkpoint, ema)
    return export_segmentor(model, output, fmt, trace_size=(int(size[0]), int(size[1])), dynamic_size=not fixed_size)
