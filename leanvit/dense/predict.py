"""Detectors from leanvit training checkpoints and their predictions drawn on images (the evaluation of a
checkpoint is :meth:`DetectionTask.evaluate_checkpoint <leanvit.train.task.Task.evaluate_checkpoint>`).

- :func:`load_detector`: rebuild the detector a ``leanvit detect train`` checkpoint was trained as;
- :func:`draw_detections` / :func:`predict_images`: boxes, masks, labels and scores drawn with
  torchvision's ``draw_bounding_boxes`` / ``draw_segmentation_masks``, written as PNGs.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch import nn
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from .._io import atomic_write
from ..errors import MissingFileError
from .coco import iter_images
from .detection_task import DetectionTask
from .options import DetectionPredictOptions

__all__ = ["load_detector", "draw_detections", "predict_images"]

log = logging.getLogger("leanvit.dense")


def load_detector(checkpoint: str | os.PathLike, ema: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """(detector in eval mode, the checkpoint's metadata) of a ``leanvit detect train`` checkpoint."""
    return DetectionTask.load_trained(checkpoint, ema)


def draw_detections(image: torch.Tensor, output: dict[str, torch.Tensor], classes: Sequence[str],
                    label_offset: int, score_thresh: float = 0.5) -> torch.Tensor:
    """uint8 (3, H, W) ``image`` (float in [0, 1]) with the detections scoring >= ``score_thresh`` drawn."""
    keep = output["scores"] >= score_thresh
    canvas = (image.clamp(0, 1) * 255).to(torch.uint8)
    if not keep.any():
        return canvas
    labels = output["labels"][keep] - label_offset
    names = [f"{classes[i] if 0 <= i < len(classes) else i} {s:.2f}"
             for i, s in zip(labels.tolist(), output["scores"][keep].tolist())]
    if "masks" in output:
        canvas = draw_segmentation_masks(canvas, output["masks"][keep][:, 0] >= 0.5, alpha=0.45)
    return draw_bounding_boxes(canvas, output["boxes"][keep], labels=names, width=2)


@torch.no_grad()
def predict_images(options: DetectionPredictOptions) -> list[dict[str, Any]]:
    """Run the checkpoint's detector on ``options.images``; write ``options.out/<stem>.png`` drawings and return
    the detections."""
    missing = [p for p in options.images if not Path(p).is_file()]
    if missing:
        raise MissingFileError(f"image file(s) not found: {', '.join(missing[:5])}")
    model, meta = load_detector(options.checkpoint, options.ema)
    device, score_thresh = options.device, options.score_thresh
    model.to(device)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path, image in iter_images(list(options.images)):
        pred = {k: v.cpu() for k, v in model([image.to(device)])[0].items()}
        drawn = draw_detections(image, pred, meta["classes"], meta["label_offset"], score_thresh)
        target = out / f"{Path(path).stem}.png"
        pixels = drawn.permute(1, 2, 0).numpy()
        atomic_write(target, lambda tmp, px=pixels: Image.fromarray(px).save(tmp, format="PNG"))
        keep = pred["scores"] >= score_thresh
        results.append(dict(image=str(path), output=str(target), detections=[
            dict(label=meta["classes"][int(lab) - meta["label_offset"]], score=round(float(s), 4),
                 box=[round(float(v), 1) for v in box])
            for lab, s, box in zip(pred["labels"][keep], pred["scores"][keep], pred["boxes"][keep])]))
    log.info("drew %d image(s) into %s", len(results), out)
    return results
