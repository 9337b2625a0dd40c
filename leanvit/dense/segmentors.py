"""Semantic segmentors on the dense backbone adapter: Semantic FPN and UperNet (+ auxiliary FCN).

``create_segmentor(arch, backbone, num_classes=150, **overrides)`` builds a :class:`Segmentor`:

* ``semantic_fpn``: the DenseFPN preset with 4 outputs at strides 4/8/16/32 (SepViT: its 4 levels as in
  mmseg's FPN; SHViT / EfficientViT-M: two transposed-conv levels from the merged stride-16 lateral, the
  stride-64 output dropped) -> :class:`~leanvit.dense.seg_heads.SemanticFPNHead` (128 channels).
* ``upernet``: :class:`~leanvit.dense.seg_heads.UPerHead` (512 channels, PPM 1/2/3/6) on the backbone
  levels; stride-16/32/64 backbones get two transposed-conv levels first (:class:`FinerLevels`), so every
  head decodes at stride 4. An auxiliary :class:`FCNHead` (loss weight 0.4) reads the stride-16 map:
  SepViT's stage 3 as in the official config, the first stage of SHViT / EfficientViT-M.

``model(images)`` returns logits at the input size (also the exported graph); ``model(images, labels)``
returns the training losses. :func:`segment` runs whole-image or sliding-window inference, optionally
multi-scale and flipped, and returns class probabilities at a requested size.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidValueError
from .backbone import DenseBackbone, create_backbone
from .necks import fpn_preset
from .seg_heads import FCNHead, FinerLevels, SemanticFPNHead, UPerHead, resize_to

__all__ = ["Segmentor", "create_segmentor", "segment", "ARCHS"]

ARCHS = ("semantic_fpn", "upernet")
_HEAD_OPTIONS = {
    "semantic_fpn": {"channels": 128, "neck_channels": 256, "dropout": 0.1},
    "upernet": {"channels": 512, "pool_scales": (1, 2, 3, 6), "dropout": 0.1, "aux": True, "aux_weight": 0.4,
                "aux_channels": 256},
}
_COMMON_OPTIONS = {"ignore_index": 255, "loss_average": "all"}


class Segmentor(nn.Module):
    """Backbone -> (neck | finer levels) -> decode head, with an optional auxiliary head for training.

    ``loss_average``: ``"all"`` divides the cross-entropy by every pixel, ignored ones included (mmseg
    0.10 ``cross_entropy_loss.py``, the official SepViT runs), ``"valid"`` by the labelled pixels (PyTorch's mean).
    """

    def __init__(self, backbone: DenseBackbone, decode_head: nn.Module, num_classes: int, *,
                 neck: nn.Module | None = None, finer: FinerLevels | None = None, aux_head: nn.Module | None = None,
                 aux_index: int = 0, aux_weight: float = 0.4, ignore_index: int = 255,
                 loss_average: str = "all") -> None:
        super().__init__()
        if loss_average not in ("all", "valid"):
            raise InvalidValueError(f"loss_average must be 'all' (mmseg 0.10) or 'valid', got {loss_average!r}")
        self.backbone = backbone
        self.neck = neck
        self.finer = finer
        self.decode_head = decode_head
        self.aux_head = aux_head
        self.num_classes = num_classes
        self.aux_index = aux_index
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.loss_average = loss_average

    def _levels(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.neck is not None:
            out = self.neck(feats)
            return list(out.values()) if isinstance(out, dict) else list(out)
        if self.finer is not None:
            return self.finer(feats)
        return feats

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        """Logits ``(N, classes, H, W)`` at the input size, or with ``labels`` a dict of weighted losses."""
        feats = list(self.backbone(images).values())
        logits = self.decode_head(self._levels(feats))
        if labels is None:
            return resize_to(logits, images.shape[-2:])
        losses = {"loss_decode": self.cross_entropy(logits, labels)}
        if self.aux_head is not None:
            losses["loss_aux"] = self.aux_weight * self.cross_entropy(self.aux_head(feats[self.aux_index]), labels)
        return losses

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """CE of logits upsampled to the label size, ``ignore_index`` excluded, averaged per ``loss_average``."""
        logits = resize_to(logits, labels.shape[-2:]).float()
        if self.loss_average == "valid":
            return F.cross_entropy(logits, labels.long(), ignore_index=self.ignore_index)
        total = F.cross_entropy(logits, labels.long(), ignore_index=self.ignore_index, reduction="sum")
        return total / labels.numel()


def _options(arch: str, overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    opts = {**_HEAD_OPTIONS[arch], **_COMMON_OPTIONS}
    head = {k: overrides.pop(k) for k in list(overrides) if k in opts}
    return {**opts, **head}, overrides


def create_segmentor(arch: str, backbone: str | DenseBackbone, num_classes: int = 150, **overrides: Any) -> Segmentor:
    """Semantic FPN or UperNet on ``backbone`` (a model name or a built :class:`DenseBackbone`).

    Head overrides: ``channels``, ``dropout``, ``ignore_index``, ``loss_average``; Semantic FPN
    ``neck_channels``; UperNet ``pool_scales``, ``aux`` (bool), ``aux_weight``, ``aux_channels``. Any other
    keyword goes to :func:`~leanvit.dense.backbone.create_backbone` (``norm_eval``, ``checkpoint``, ...).
    """
    if arch not in ARCHS:
        raise InvalidValueError(f"unknown segmentor {arch!r}; choose one of {', '.join(ARCHS)}")
    if num_classes < 1:
        raise InvalidValueError(f"num_classes must be >= 1, got {num_classes}")
    opts, backbone_kwargs = _options(arch, dict(overrides))
    if isinstance(backbone, str):
        backbone = create_backbone(backbone, **backbone_kwargs)
    elif backbone_kwargs:
        raise InvalidValueError(f"unknown option(s) {sorted(backbone_kwargs)} for {arch} on a built backbone; head options: "
                                f"{sorted({**_HEAD_OPTIONS[arch], **_COMMON_OPTIONS})}")
    channels, strides = list(backbone.out_channels), list(backbone.strides)
    extra = (strides[0] // 4).bit_length() - 1  # transposed-conv levels down to stride 4 (2 for stride 16)
    common = dict(ignore_index=opts["ignore_index"], loss_average=opts["loss_average"])
    if arch == "semantic_fpn":
        width = opts["neck_channels"]
        neck = fpn_preset("semantic_fpn", channels, strides, width)
        head = SemanticFPNHead([width] * len(neck.strides), neck.strides, num_classes, opts["channels"], opts["dropout"])
        return Segmentor(backbone, head, num_classes, neck=neck, **common)
    finer = FinerLevels(channels[0], extra) if extra else None
    levels = [channels[0]] * extra + channels
    head = UPerHead(levels, num_classes, opts["channels"], opts["pool_scales"], opts["dropout"])
    aux_index = strides.index(16) if 16 in strides else min(2, len(strides) - 1)
    aux = FCNHead(channels[aux_index], num_classes, opts["aux_channels"], dropout=opts["dropout"]) if opts["aux"] else None
    return Segmentor(backbone, head, num_classes, finer=finer, aux_head=aux, aux_index=aux_index,
                     aux_weight=opts["aux_weight"], **common)


def _slide_logits(model: nn.Module, image: torch.Tensor, num_classes: int, crop: int, stride: int) -> torch.Tensor:
    # mmseg's 'slide' mode: overlapping crops (the last one flush with the border), logits averaged.
    n, _, h, w = image.shape
    rows = max(h - crop + stride - 1, 0) // stride + 1
    cols = max(w - crop + stride - 1, 0) // stride + 1
    total = image.new_zeros(n, num_classes, h, w)
    count = image.new_zeros(1, 1, h, w)
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, h), min(c * stride + crop, w)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            total[:, :, y1:y2, x1:x2] += model(image[:, :, y1:y2, x1:x2]).float()
            count[:, :, y1:y2, x1:x2] += 1
    return total / count


@torch.no_grad()
def segment(model: Segmentor, images: torch.Tensor, out_size: Sequence[int] | None = None, *, mode: str = "whole",
            crop: int = 512, stride: int = 341, scales: Sequence[float] = (1.0,), flip: bool = False) -> torch.Tensor:
    """Class probabilities ``(N, classes, *out_size)`` (default: the input size) for normalised ``images``.

    ``mode``: ``"whole"`` (one forward of the whole image) or ``"slide"`` (``crop`` x ``crop`` windows every
    ``stride`` pixels). ``scales`` (ratios of the input size) and ``flip`` average the softmax over the
    resized / mirrored copies, as mmseg's ``--aug-test``.
    """
    if mode not in ("whole", "slide"):
        raise InvalidValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
    if mode == "slide" and not 0 < stride <= crop:
        raise InvalidValueError(f"sliding-window stride must be in 1..crop ({crop}), got {stride}")
    if not scales or any(s <= 0 for s in scales):
        raise InvalidValueError(f"scales must be positive ratios, got {list(scales)}")
    size = tuple(out_size) if out_size is not None else tuple(images.shape[-2:])
    probs = None
    for scale in scales:
        h, w = (max(1, round(d * scale)) for d in images.shape[-2:])
        x = resize_to(images, (h, w)) if (h, w) != tuple(images.shape[-2:]) else images
        for mirrored in ((False, True) if flip else (False,)):
            xi = x.flip(-1) if mirrored else x
            if mode == "slide":
                logits = _slide_logits(model, xi, model.num_classes, crop, stride)
            else:
                logits = model(xi).float()
            if mirrored:
                logits = logits.flip(-1)
            p = resize_to(logits, size).softmax(dim=1)
            probs = p if probs is None else probs + p
    return probs / (len(scales) * (2 if flip else 1))
