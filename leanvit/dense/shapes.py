"""A deterministic synthetic "shapes" dataset with exact boxes, instance masks and class maps.

Every scene is a pure function of ``(seed, index, size)``: a background (base colour, linear gradient,
Gaussian noise) with 1-4 non-overlapping objects of three classes (rectangle, ellipse, upward triangle).
The ground truth is exact by construction: the mask is the rasterised shape, the box the tight bounds of
its pixels ``[xmin, ymin, xmax + 1, ymax + 1]``.

- :func:`render_scene` -> :class:`Scene` (image, masks, boxes, labels) in memory;
- :func:`semantic_map` -> the scene as a class map (background 0, classes 1-3), for segmentation;
- :func:`shapes_coco` -> (images, COCO-format dict with RLE masks);
- :func:`write_shapes_coco` writes the standard COCO layout (``annotations/instances_{train,val}2017.json``,
  ``train2017/``, ``val2017/``, lossless PNGs), so synthetic data goes through the same loader and
  evaluator as real COCO data.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .._io import atomic_write, atomic_write_text
from ..errors import InvalidValueError

__all__ = ["SHAPE_CLASSES", "Scene", "render_scene", "semantic_map", "shapes_coco", "write_shapes_coco",
           "SPLIT_SEED_OFFSET"]

SHAPE_CLASSES = ("rectangle", "ellipse", "triangle")
# The validation split renders other scenes than the training split of the same seed.
SPLIT_SEED_OFFSET = {"train": 0, "val": 1_000_003}
_MIN_PIXELS = 64
_NOISE = 0.04


@dataclass
class Scene:
    """One rendered image and its exact ground truth."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    masks: np.ndarray  # (N, H, W) bool
    boxes: np.ndarray  # (N, 4) float32, xyxy in pixels, tight around the mask
    labels: np.ndarray  # (N,) int64, 1-based index into SHAPE_CLASSES


def _shape_mask(kind: int, x0: int, y0: int, w: int, h: int, size: int) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres
    u, v = (xs - x0) / w, (ys - y0) / h  # [0, 1] inside the shape's box
    if kind == 0:
        return (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
    if kind == 1:
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    # Upward isosceles triangle: apex at the top centre, base along the bottom edge.
    return (v >= 0) & (v < 1) & (np.abs(u - 0.5) <= 0.5 * v)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(0.1, 0.9, 3)
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-9
    ys, xs = np.mgrid[0:size, 0:size] / size - 0.5
    ramp = (xs * direction[0] + ys * direction[1])[..., None] * rng.uniform(0.1, 0.3, 3)
    return base + ramp


def render_scene(index: int, seed: int = 0, size: int = 160, max_objects: int = 4,
                 min_side: int | None = None, max_side: int | None = None) -> Scene:
    """Render scene ``index`` of the dataset ``seed`` as a ``size`` x ``size`` image (deterministic)."""
    if size < 32:
        raise InvalidValueError(f"shapes images need size >= 32, got {size}")
    rng = np.random.default_rng([seed, index])
    lo = min_side or max(12, size // 10)
    hi = max_side or max(lo + 1, int(size * 0.45))
    image = _background(rng, size)
    occupied = np.zeros((size, size), bool)
    masks, labels = [], []
    wanted = int(rng.integers(1, max_objects + 1))
    for _ in range(60):  # placement attempts
        if len(masks) == wanted:
            break
        kind = int(rng.integers(0, len(SHAPE_CLASSES)))
        w, h = (int(v) for v in rng.integers(lo, hi + 1, 2))
        x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        mask = _shape_mask(kind, x0, y0, w, h, size)
        # A 2-pixel margin keeps objects apart, so every instance mask is one connected region.
        grown = np.zeros_like(occupied)
        grown[max(0, y0 - 2):y0 + h + 2, max(0, x0 - 2):x0 + w + 2] = True
        if mask.sum() < _MIN_PIXELS or (grown & occupied).any():
            continue
        colour = rng.uniform(0, 1, 3)
        while np.abs(colour - image[y0 + h // 2, x0 + w // 2]).sum() < 0.6:  # keep objects visible
            colour = rng.uniform(0, 1, 3)
        image[mask] = colour
        occupied |= mask
        masks.append(mask)
        labels.append(kind + 1)
    image = image + rng.normal(0, _NOISE, image.shape)
    image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    masks_arr = np.stack(masks) if masks else np.zeros((0, size, size), bool)
    boxes = []
    for m in masks_arr:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return Scene(image, masks_arr, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64))


def semantic_map(scene: Scene) -> np.ndarray:
    """(H, W) uint8 class map of ``scene``: 0 background, 1-3 the classes of :data:`SHAPE_CLASSES`."""
    out = np.zeros(scene.image.shape[:2], np.uint8)
    for mask, label in zip(scene.masks, scene.labels):
        out[mask] = label
    return out


def shapes_coco(num_images: int, seed: int = 0, size: int = 160, file_prefix: str = "shapes",
                **render_kwargs: Any) -> tuple[list[np.ndarray], dict[str, Any]]:
    """(images, COCO dict) of scenes ``0 .. num_images - 1``: RLE masks, xywh boxes, category ids 1-3."""
    from pycocotools import mask as mask_utils

    images, coco_images, annotations = [], [], []
    for i in range(num_images):
        scene = render_scene(i, seed, size, **render_kwargs)
        images.append(scene.image)
        coco_images.append(dict(id=i + 1, file_name=f"{file_prefix}_{i:06d}.png", width=size, height=size))
        for mask, box, label in zip(scene.masks, scene.boxes, scene.labels):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append(dict(id=len(annotations) + 1, image_id=i + 1, category_id=int(label),
                                    bbox=[x0, y0, x1 - x0, y1 - y0], area=float(mask.sum()), iscrowd=0,
                                    segmentation=rle))
    categories = [dict(id=i + 1, name=n, supercategory="shape") for i, n in enumerate(SHAPE_CLASSES)]
    return images, dict(images=coco_images, annotations=annotations, categories=categories,
                        info=dict(description=f"leanvit synthetic shapes, seed {seed}, {size}px"))


def write_shapes_coco(root: str | Path, train_images: int = 64, val_images: int = 16, seed: int = 0,
                      size: int = 160, **render_kwargs: Any) -> Path:
    """Write the shapes dataset in the standard COCO layout under ``root`` (idempotent, atomic); returns root.

    ``train2017`` renders scenes of ``seed``, ``val2017`` those of ``seed + SPLIT_SEED_OFFSET['val']``.
    """
    root = Path(root)
    for split, n in (("train", train_images), ("val", val_images)):
        ann_path = root / "annotations" / f"instances_{split}2017.json"
        images, coco = shapes_coco(n, seed + SPLIT_SEED_OFFSET[split], size, file_prefix=split, **render_kwargs)
        folder = root / f"{split}2017"
        folder.mkdir(parents=True, exist_ok=True)
        for img, meta in zip(images, coco["images"]):
            path = folder / meta["file_name"]
            if not path.exists():
                atomic_write(path, lambda tmp, img=img: Image.fromarray(img).save(tmp, format="PNG"))
        ann_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(ann_path, json.dumps(coco))
    return root
