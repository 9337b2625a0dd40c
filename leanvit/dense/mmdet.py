"""Official mmdet 2.x COCO checkpoints <-> leanvit's torchvision detectors (mmdet 2.x parameter names).

The released files (``retinanet_shvit_s4_1x_coco.pth``, ``maskrcnn_shvit_s4_1x_coco.pth``,
``retinanet_efficientvit_m4_fpn_1x_coco.pth``, ``mask_rcnn_efficientvit_m4_fpn_1x_coco.pth``) hold
``{"meta", "state_dict"[, "optimizer"]}`` with ``backbone.*`` (the official classification layout),
``neck.*`` (mmcv ConvModules: ``.conv.`` inside) and ``bbox_head.*`` or ``rpn_head.*`` / ``roi_head.*``.
The map is lossless except for two class-index conventions of the R-CNN heads:

- mmdet's background is the last classifier row, torchvision's the first: ``fc_cls`` rows are rotated;
- mmdet has no background box / mask outputs: ``fc_reg`` gets 4 zero rows, ``conv_logits`` 1 zero row, first
  (torchvision never reads them).

RetinaNet (sigmoid, no background) and the RPN map one to one. Loading is strict and all-or-nothing.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..models.checkpoint import CheckpointError, convert_state_dict, read_state_dict
from ..errors import InvalidValueError
from ..models import family_class

__all__ = ["mmdet_to_torchvision", "torchvision_to_mmdet", "load_mmdet_checkpoint"]

StateDict = dict[str, torch.Tensor]

_BODY = "backbone.body.model."


def _background_last_to_first(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t[-1:], t[:-1]])


def _background_first_to_last(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t[1:], t[:1]])


def _prepend_zero_rows(n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: torch.cat([t.new_zeros((n, *t.shape[1:])), t])


def _drop_first_rows(n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: t[n:]


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


# (mmdet name, torchvision name, mmdet -> torchvision, torchvision -> mmdet); names without ".weight"/".bias",
# "{i}" stands for a layer index.
_RULES: tuple[tuple[str, str, Callable, Callable], ...] = (
    ("neck.lateral_convs.{i}.conv", "backbone.neck.lateral_convs.{i}", _same, _same),
    ("neck.fpn_convs.{i}.conv", "backbone.neck.fpn_convs.{i}", _same, _same),
    ("neck.extra_trans_convs.{i}.conv", "backbone.neck.extra_trans_convs.{i}", _same, _same),
    ("neck.extra_fpn_convs.{i}.conv", "backbone.neck.extra_fpn_convs.{i}", _same, _same),
    ("bbox_head.cls_convs.{i}.conv", "head.classification_head.conv.{i}.0", _same, _same),
    ("bbox_head.reg_convs.{i}.conv", "head.regression_head.conv.{i}.0", _same, _same),
    ("bbox_head.retina_cls", "head.classification_head.cls_logits", _same, _same),
    ("bbox_head.retina_reg", "head.regression_head.bbox_reg", _same, _same),
    ("rpn_head.rpn_conv", "rpn.head.conv.0.0", _same, _same),
    ("rpn_head.rpn_cls", "rpn.head.cls_logits", _same, _same),
    ("rpn_head.rpn_reg", "rpn.head.bbox_pred", _same, _same),
    ("roi_head.bbox_head.shared_fcs.0", "roi_heads.box_head.fc6", _same, _same),
    ("roi_head.bbox_head.shared_fcs.1", "roi_heads.box_head.fc7", _same, _same),
    ("roi_head.bbox_head.fc_cls", "roi_heads.box_predictor.cls_score", _background_last_to_first,
     _background_first_to_last),
    ("roi_head.bbox_head.fc_reg", "roi_heads.box_predictor.bbox_pred", _prepend_zero_rows(4), _drop_first_rows(4)),
    ("roi_head.mask_head.convs.{i}.conv", "roi_heads.mask_head.{i}.0", _same, _same),
    ("roi_head.mask_head.upsample", "roi_heads.mask_predictor.conv5_mask", _same, _same),
    ("roi_head.mask_head.conv_logits", "roi_heads.mask_predictor.mask_fcn_logits", _prepend_zero_rows(1),
     _drop_first_rows(1)),
)


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + r"\.(?P<p>weight|bias)$")


_FORWARD = [(_pattern(mm), tv, fwd) for mm, tv, fwd, _ in _RULES]
_BACKWARD = [(_pattern(tv), mm, bwd) for mm, tv, _, bwd in _RULES]


def _apply(rules: list, key: str, value: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    for pattern, template, fn in rules:
        m = pattern.match(key)
        if m:
            name = template.replace("{i}", m.group("i")) if "{i}" in template else template
            return f"{name}.{m.group('p')}", fn(value)
    return None


def _family(model: nn.Module) -> str:
    try:
        return model.backbone.body.model.leanvit_cfg.family
    except AttributeError:
        raise CheckpointError(
            f"{type(model).__name__} is not a leanvit detector (expected model.backbone.body.model, as "
            "leanvit.dense.create_detector builds)"
        ) from None


def mmdet_to_torchvision(state_dict: Mapping[str, torch.Tensor], family: str) -> tuple[StateDict, list[str]]:
    """mmdet 2.x detector state dict -> (leanvit/torchvision detector state dict, mmdet keys with no mapping).

    ``family`` ("shvit" | "efficientvit_m" | "sepvit") converts the backbone from its official layout.
    Classifier modules the family's dense backbone does not use (its ``dense_settings.unused_modules``: SepViT's
    final norm and head) feed nothing and are dropped.
    """
    out: StateDict = {}
    unmapped: list[str] = []
    body = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    if body:
        body = convert_state_dict(body, family)
        settings = family_class(family).dense_settings
        body = {k: v for k, v in body.items() if not settings.is_unused(k)}
        out.update({_BODY + k: v for k, v in body.items()})
    for k, v in state_dict.items():
        if k.startswith("backbone."):
            continue
        mapped = _apply(_FORWARD, k, v)
        if mapped is None:
            unmapped.append(k)
        else:
            out[mapped[0]] = mapped[1]
    return out, unmapped


def torchvision_to_mmdet(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], family: str | None = None) -> StateDict:
    """A leanvit detector (or its state dict, with ``family``) in mmdet 2.x layout (inverse of the load map)."""
    if isinstance(model_or_state_dict, nn.Module):
        family = family or _family(model_or_state_dict)
        sd = dict(model_or_state_dict.state_dict())
    else:
        sd = dict(model_or_state_dict)
    if family is None:
        raise InvalidValueError("pass family= ('shvit' | 'efficientvit_m' | 'sepvit') with a state dict")
    body = {k[len(_BODY):]: v for k, v in sd.items() if k.startswith(_BODY)}
    out = {"backbone." + k: v for k, v in convert_state_dict(body, family, src="leanvit", dst="official").items()}
    for k, v in sd.items():
        if k.startswith(_BODY):
            continue
        mapped = _apply(_BACKWARD, k, v)
        if mapped is None:
            raise CheckpointError(f"{k} has no mmdet 2.x name (not a leanvit detector built by create_detector?)")
        out[mapped[0]] = mapped[1]
    return out


def _what_it_is(keys: list[str]) -> str:
    if any(k.startswith("bbox_head.") for k in keys):
        return "retinanet"
    if any(k.startswith("roi_head.mask_head.") for k in keys):
        return "mask_rcnn"
    if any(k.startswith("roi_head.") for k in keys):
        return "faster_rcnn"
    return "unknown"


def _num_classes(sd: Mapping[str, torch.Tensor]) -> int | None:
    """Object classes of an mmdet detector state dict (R-CNN: fc_cls rows - background; RetinaNet: 9 anchors)."""
    if "roi_head.bbox_head.fc_cls.weight" in sd:
        return sd["roi_head.bbox_head.fc_cls.weight"].shape[0] - 1
    if "bbox_head.retina_cls.weight" in sd:
        return sd["bbox_head.retina_cls.weight"].shape[0] // 9
    return None


def load_mmdet_checkpoint(model: nn.Module, source: str | os.PathLike | Mapping[str, Any], *,
                          backbone_only: bool = False) -> dict[str, Any]:
    """Load an official mmdet 2.x COCO checkpoint (path or dict) into a detector from ``create_detector``.

    Strict: every model tensor must come from the checkpoint with the right shape and every checkpoint
    tensor must be used, else a :class:`~leanvit.CheckpointError` names the problem and nothing is loaded.
    ``backbone_only`` loads just ``backbone.*`` (e.g. to start another detector from a COCO backbone).
    Returns ``{"arch": what the checkpoint holds, "loaded": number of tensors}``.
    """
    family = _family(model)
    raw, _ = read_state_dict(source)
    if not any(k.startswith("backbone.") for k in raw):
        raise CheckpointError(
            f"not an mmdet detector checkpoint: no 'backbone.*' keys (first keys: {', '.join(list(raw)[:4])}); "
            "ImageNet classification weights go to create_detector(..., checkpoint=PATH) instead"
        )
    ckpt_arch = _what_it_is(list(raw))
    arch = getattr(model, "leanvit_dense", {}).get("arch", "unknown")
    if backbone_only:
        raw = {k: v for k, v in raw.items() if k.startswith("backbone.")}
    try:
        sd, unmapped = mmdet_to_torchvision(raw, family)
    except CheckpointError:
        raise
    except (KeyError, ValueError, RuntimeError) as e:  # a backbone that fails to convert: a wrong checkpoint
        raise CheckpointError(f"the checkpoint's backbone does not convert to a leanvit {family} model: {e}") from e
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if backbone_only:
        expected = {k: v for k, v in expected.items() if k.startswith(_BODY)}
    problems = []
    if not backbone_only and ckpt_arch != arch:
        problems.append(f"the checkpoint holds a {ckpt_arch} but the model is a {arch}")
    mismatched = [k for k in sd if k in expected and tuple(sd[k].shape) != tuple(expected[k])]
    if mismatched:
        problems.append("shape mismatches: " + ", ".join(
            f"{k} {tuple(sd[k].shape)} vs model {tuple(expected[k])}" for k in mismatched[:3]))
    missing = [k for k in expected if k not in sd]
    if missing:
        problems.append("model tensors not in the checkpoint: " + ", ".join(missing[:3]))
    unexpected = unmapped + [k for k in sd if k not in expected]
    if unexpected:
        problems.append("checkpoint tensors the model has no place for: " + ", ".join(unexpected[:3]))
    if problems:
        name = getattr(model, "leanvit_dense", {}).get("backbone", family)
        classes = _num_classes(raw)
        hint = f" The checkpoint has {classes} classes." if classes is not None else ""
        raise CheckpointError(
            f"mmdet checkpoint does not fit this {arch} on {name}: {'; '.join(problems)}.{hint} Build the matching "
            "model with leanvit.dense.create_detector(arch, backbone, num_classes=...) (EfficientViT-M at the dense "
            "img_size 448, the default of create_backbone)."
        )
    model.load_state_dict(sd, strict=not backbone_only)
    return {"arch": ckpt_arch, "loaded": len(sd)}
