"""Labelled images for the analyses (models come from ``leanvit.create_model``).

Labelled images serve the weight-dependent analyses (head similarity and ablation, Taylor importance).

``data`` is what ``leanvit train`` accepts: an ImageFolder root (``train/`` and ``val/`` class folders),
``digits`` (scikit-learn's handwritten digits) or ``fake``. Images go through the papers' evaluation
transform (resize to img_size / crop_pct, centre crop, normalise with the model's mean / std). A seeded
subset keeps runs reproducible: the seed is part of every output's arguments.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..errors import InvalidValueError
from ..models._registry import IMAGENET_MEAN, IMAGENET_STD
from ..train.data import eval_transform, open_source

__all__ = ["labelled_batches"]


def _normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return (tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)),
            float(cfg.get("crop_pct", 0.875)))


def labelled_batches(
    data: str, model: nn.Module, img_size: int, *, split: str = "val", batch_size: int = 32,
    max_images: int | None = 128, seed: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches from ``split`` ('val' or 'train') of ``data``: ``max_images`` of them drawn
    with ``seed`` (all, in order, when None)."""
    if split not in ("val", "train"):
        raise InvalidValueError(f"split must be 'val' or 'train', got {split!r}")
    bundle = open_source(data, img_size=img_size, need_train=split == "train")
    source = bundle.val if split == "val" else bundle.train
    if len(source) == 0:
        raise InvalidValueError(f"the {split} split of {data!r} has no images")
    mean, std, crop_pct = _normalisation(model)
    transform = eval_transform(img_size, mean, std, crop_pct)
    order = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed)).tolist()
    if max_images is not None:
        order = order[:max_images]
    for start in range(0, len(order), batch_size):
        items = [source[i] for i in order[start:start + batch_size]]
        yield torch.stack([transform(img) for img, _ in items]), torch.tensor([t for _, t in items])
