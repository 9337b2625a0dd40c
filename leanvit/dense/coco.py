"""COCO-format detection data: the standard layout or any COCO json, validated, as torchvision targets.

Layout (COCO 2017): ``ROOT/annotations/instances_{train,val}2017.json`` with ``ROOT/train2017/`` and
``ROOT/val2017/``; custom data is any COCO json plus its image folder (:func:`coco_split`).

Images come out as float RGB in [0, 1] at their **original** resolution: resizing (1333x800 keeping the
ratio), normalising and padding to 32 happen in exactly one place, the detector's
``GeneralizedRCNNTransform`` (torchvision's detection input convention). The only training augmentation outside the model is the
official horizontal flip (p 0.5) of image, boxes and masks, drawn from an RNG seeded by the sample's
(seed, epoch, rank, position), so a resumed run sees the same flips.

Bad data never crashes an epoch (mmdet 2.x ``CocoDataset`` filters): annotations that are crowd, degenerate (w < 1, h < 1, area
<= 0) or outside the image (clipped first) are dropped; images whose file is missing, that have no usable
annotation (training), or whose short side is < 32 px (training) are skipped; an undecodable image is
skipped when it is loaded (the next one is used) and its path reported. Every case is counted in
``CocoDetection.skipped``; a split with nothing usable is a ``ValueError`` that says why.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import InvalidValueError, MissingFileError
from ..train.data import BadImageError

__all__ = ["CocoSplit", "coco_split", "CocoDetection", "RandomHorizontalFlip", "read_coco_json",
           "hflip", "iter_images"]

log = logging.getLogger("leanvit.dense")
_MIN_TRAIN_SIDE = 32


@dataclass
class CocoSplit:
    """One split: its annotation json and the folder its ``file_name`` entries are relative to."""

    annotations: Path
    images: Path


def coco_split(root: str | os.PathLike, split: str) -> CocoSplit:
    """The ``split`` ("train" / "val") of a COCO-layout ``root``; a clear error names what is missing."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingFileError(f"COCO data directory {root} does not exist; expected ROOT/annotations/"
                               f"instances_{split}2017.json and ROOT/{split}2017/ (or --data shapes)")
    ann = root / "annotations" / f"instances_{split}2017.json"
    images = root / f"{split}2017"
    if not ann.is_file():
        found = sorted(p.name for p in (root / "annotations").glob("*.json")) if (root / "annotations").is_dir() else []
        raise MissingFileError(f"no {ann} (found: {', '.join(found) or 'nothing'}); the COCO layout is "
                               f"ROOT/annotations/instances_{{train,val}}2017.json + ROOT/{{train,val}}2017/. For "
                               "another json set task.options.{train,val}_json and {train,val}_images")
    if not images.is_dir():
        raise MissingFileError(f"no image folder {images} for {ann.name}")
    return CocoSplit(ann, images)


def read_coco_json(path: str | os.PathLike) -> dict[str, Any]:
    """A COCO json as a dict, checked for the keys detection needs."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise InvalidValueError(f"{path} is not valid JSON ({e}); is the annotation file truncated?") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise InvalidValueError(f"{path} is not a COCO detection file: it has no {', '.join(missing)} list(s)")
    if not data["categories"]:
        raise InvalidValueError(f"{path} defines no categories")
    return data


def _clip_box(ann: dict[str, Any], width: int, height: int) -> tuple[list[float] | None, str | None]:
    """xyxy box clipped to the image, or (None, reason) for an unusable annotation."""
    box = ann.get("bbox")
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return None, "malformed_annotations"
    x, y, w, h = (float(v) for v in box)
    if not np.isfinite([x, y, w, h]).all() or w < 1 or h < 1 or ann.get("area", 1) <= 0:
        return None, "degenerate_boxes"
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None, "out_of_image_boxes"
    return [x0, y0, x1, y1], None


class CocoDetection(Dataset):
    """A validated COCO-format split; ``load(i)`` -> (image float CHW in [0, 1], torchvision target dict).

    Targets: ``boxes`` (N, 4) xyxy float, ``labels`` (N,) int64 = contiguous category index (sorted ids)
    + ``label_offset`` (1 for R-CNN, whose class 0 is the background; 0 for RetinaNet), ``masks`` (N, H, W)
    uint8 when ``masks``, ``image_id``. ``train`` applies the training-only filters.
    """

    def __init__(self, split: CocoSplit, *, train: bool, masks: bool = False, label_offset: int = 1,
                 data: dict[str, Any] | None = None) -> None:
        self.split = split
        self.train = train
        self.masks = masks
        self.label_offset = label_offset
        self.coco = data if data is not None else read_coco_json(split.annotations)
        self.category_ids = sorted(int(c["id"]) for c in self.coco["categories"])
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in self.coco["categories"]}
        self.classes = [names[i] for i in self.category_ids]
        self.label_of = {cid: i + label_offset for i, cid in enumerate(self.category_ids)}
        self.skipped: Counter[str] = Counter()
        self.records = self._index()
        if not self.records:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "no images listed"
            raise InvalidValueError(f"{split.annotations} has no usable {'training ' if train else ''}images ({counts}); "
                                    f"check that the image files are in {split.images} and the boxes are valid")
        if self.skipped:
            log.warning("%s: %s", split.annotations.name, ", ".join(f"{v} {k}" for k, v in sorted(self.skipped.items())))

    def _index(self) -> list[dict[str, Any]]:
        per_image: dict[int, list[dict[str, Any]]] = {}
        images = {}
        for img in self.coco["images"]:
            try:
                images[int(img["id"])] = img
            except (KeyError, TypeError, ValueError):
                self.skipped["malformed_images"] += 1
        for ann in self.coco["annotations"]:
            image_id = ann.get("image_id")
            if image_id not in images or int(ann.get("category_id", -1)) not in self.label_of:
                self.skipped["malformed_annotations"] += 1
                continue
            per_image.setdefault(image_id, []).append(ann)
        records = []
        for image_id, img in images.items():
            try:
                width, height, name = int(img["width"]), int(img["height"]), str(img["file_name"])
            except (KeyError, TypeError, ValueError):
                self.skipped["malformed_images"] += 1
                continue
            if not (self.split.images / name).is_file():
                self.skipped["missing_files"] += 1
                continue
            anns = []
            for ann in per_image.get(image_id, []):
                if ann.get("iscrowd", 0):
                    self.skipped["crowd_annotations"] += 1  # torchvision cannot ignore regions: dropped
                    continue
                box, reason = _clip_box(ann, width, height)
                if box is None:
                    self.skipped[reason] += 1
                    continue
                anns.append(dict(box=box, label=self.label_of[int(ann["category_id"])],
                                 segmentation=ann.get("segmentation")))
            if self.train and not anns:
                self.skipped["images_without_annotations"] += 1
                continue
            if self.train and min(width, height) < _MIN_TRAIN_SIDE:
                self.skipped["small_images"] += 1
                continue
            records.append(dict(image_id=image_id, file_name=name, width=width, height=height, anns=anns))
        return records

    @property
    def image_ids(self) -> list[int]:
        """COCO ids of the usable images, in dataset order."""
        return [r["image_id"] for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def _mask(self, segmentation: Any, height: int, width: int) -> np.ndarray:
        from pycocotools import mask as mask_utils

        if isinstance(segmentation, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(segmentation, dict):
            rle = dict(segmentation, counts=segmentation["counts"].encode("ascii")
                       if isinstance(segmentation["counts"], str) else segmentation["counts"])
        else:
            raise InvalidValueError("no segmentation")
        return mask_utils.decode(rle)

    def load(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Image ``index`` and its target; raises :class:`BadImageError` for an undecodable file."""
        r = self.records[index]
        path = self.split.images / r["file_name"]
        try:
            with Image.open(path) as im:
                pixels = np.asarray(im.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as e:
            raise BadImageError(str(path), f"cannot decode image ({e})") from None
        h, w = pixels.shape[:2]
        if (h, w) != (r["height"], r["width"]):
            raise BadImageError(str(path), f"image is {w}x{h} but the json says {r['width']}x{r['height']}")
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255)
        anns = r["anns"]
        target: dict[str, Any] = dict(
            boxes=torch.tensor([a["box"] for a in anns], dtype=torch.float32).reshape(-1, 4),
            labels=torch.tensor([a["label"] for a in anns], dtype=torch.int64),
            image_id=r["image_id"],
        )
        if self.masks:
            masks = np.zeros((len(anns), h, w), np.uint8)
            for i, a in enumerate(anns):
                try:
                    masks[i] = self._mask(a["segmentation"], h, w)
                except (ValueError, TypeError, KeyError, IndexError):
                    # No usable polygon/RLE: the box itself is the best available mask.
                    x0, y0, x1, y1 = (int(round(v)) for v in a["box"])
                    masks[i, y0:y1, x0:x1] = 1
            target["masks"] = torch.from_numpy(masks)
        return image, target


def hflip(image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Mirror image, boxes (x' = W - x) and masks."""
    width = image.shape[-1]
    target = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target


class RandomHorizontalFlip:
    """The training flip of a detection sample with probability ``prob`` (drawn from torch's RNG, which
    :class:`~leanvit.train.data.SampleDataset` seeds per sample)."""

    def __init__(self, prob: float = 0.5) -> None:
        self.prob = prob

    def __call__(self, image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.prob > 0 and float(torch.rand(())) < self.prob:
            return hflip(image, target)
        return image, target


def iter_images(paths: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """(path, float CHW image in [0, 1]) for prediction on loose image files."""
    for p in paths:
        with Image.open(p) as im:
            pixels = np.asarray(im.convert("RGB"))
        yield p, torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255)
