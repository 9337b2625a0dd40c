"""Detectors from leanvit training checkpoints, their evaluation, and predictions drawn on images.

- :func:`load_detector`: rebuild the detector a ``leanvit detect train`` checkpoint was trained as;
- :func:`evaluate_checkpoint`: COCO AP of a checkpoint on a dataset's val split (table printed, JSON written);
- :func:`draw_detections` / :func:`predict_images`: boxes, masks, labels and scores drawn with
  torchvision's ``draw_bounding_boxes`` / ``draw_segmentation_masks``, written as PNGs.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch import nn
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from .._io import atomic_write, atomic_write_text
from ..errors import InvalidValueError, MissingFileError
from ..train.distributed import cleanup, init_distributed
from .coco import build_eval_loader, iter_images
from .coco_eval import format_table
from .detection_task import DetectionTask, evaluate_detections
from .trained import evaluation_config, load_trained_model

__all__ = ["load_detector", "evaluate_checkpoint", "draw_detections", "predict_images"]

log = logging.getLogger("leanvit.dense")


def load_detector(checkpoint: str | os.PathLike, ema: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """(detector in eval mode, the checkpoint's metadata) of a ``leanvit detect train`` checkpoint."""
    return load_trained_model(checkpoint, DetectionTask, ema=ema,
                              other_commands="leanvit eval for classification checkpoints")


def evaluate_checkpoint(checkpoint: str | os.PathLike, data: str, *, ema: bool = False, batch_size: int = 2,
                        workers: int = 2, device: str = "auto", out: str | os.PathLike | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """COCO AP of ``checkpoint`` on the val split of ``data`` (a COCO root or ``shapes``); writes ``out`` JSON."""
    model, meta = load_detector(checkpoint, ema)
    cfg = evaluation_config(meta, checkpoint, data, workers=workers, device=device)
    cfg.data.eval_batch_size = batch_size
    info = init_distributed(device)
    try:
        task = DetectionTask(cfg, need_train=False)
        task.open_data(info)
        if task.category_ids != meta["category_ids"]:
            raise InvalidValueError(f"{data} has other categories ({len(task.category_ids)}) than the checkpoint was "
                                    f"trained on ({len(meta['category_ids'])})")
        val_loader = build_eval_loader(task.val_set, batch_size, workers, info.rank, info.world_size)
        model.to(info.device)
        metrics, skipped = evaluate_detections(model, val_loader, task.val_set, info, progress=progress)
    finally:
        cleanup(info)
    result = dict(checkpoint=str(checkpoint), arch=meta["arch"], backbone=meta["model_name"], data=data,
                  images=len(task.val_set), skipped_files=len(set(skipped)),
                  skipped_annotations=dict(task.val_set.skipped), metrics=metrics, table=format_table(metrics))
    if out is not None and info.is_main:
        atomic_write_text(out, json.dumps(result, indent=2))
    return result


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
def predict_images(checkpoint: str | os.PathLike, images: Sequence[str], out_dir: str | os.PathLike, *,
                   score_thresh: float = 0.5, device: str = "cpu", ema: bool = False) -> list[dict[str, Any]]:
    """Run the checkpoint's detector on ``images``; write ``out_dir/<stem>.png`` drawings and return the detections."""
    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        raise MissingFileError(f"image file(s) not found: {', '.join(missing[:5])}")
    model, meta = load_detector(checkpoint, ema)
    model.to(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path, image in iter_images(list(images)):
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
