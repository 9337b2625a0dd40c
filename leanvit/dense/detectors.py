"""RetinaNet, Mask R-CNN and Faster R-CNN from torchvision on leanvit backbones, set up as the official mmdet 2.x configs.

``create_detector(arch, backbone)`` returns a stock torchvision detection model (``model(images, targets)``
-> losses in train mode, ``model(images)`` -> detections in eval mode) whose AP-changing settings equal the
official configurations (docs/detection.md, Settings that change AP):

- the papers' neck (:func:`~leanvit.dense.necks.fpn_preset`): RetinaNet strides 8-128, R-CNN strides 4-64;
- anchors at the configured strides with float sizes (:class:`FixedStrideAnchorGenerator`; torchvision infers
  strides from padded image / map size, wrong for the ceil-rounded stride-64/128 maps, and rounds anchors);
- aligned RoIAlign with adaptive sampling (:class:`AlignedMultiScaleRoIAlign`);
- RetinaNet 100 detections per image; RPN 2000/1000 pre-NMS, 1000 post-NMS proposals in training;
- mmdet's head initialisation (Xavier FPN, N(0, 0.01) classifier, N(0, 0.001) box regressor);
- mmdet's input pipeline and mask pasting (``pipeline="official"``, :mod:`leanvit.dense.mmdet_pipeline`:
  round-to-nearest resize of the 8-bit image, normalisation after it, ``grid_sample`` mask pasting);
  ``pipeline="torchvision"`` keeps torchvision's ``GeneralizedRCNNTransform``.

Class indices: RetinaNet predicts labels ``0 .. num_classes-1``; the R-CNNs have torchvision's background at 0
and objects at ``1 .. num_classes`` (:func:`label_offset`).
"""
from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, box_area, roi_align

from ..errors import InvalidValueError
from .backbone import DenseBackbone, create_backbone
from .mmdet_pipeline import PIPELINES, MMDetTransform
from .necks import DenseFPN, fpn_preset

__all__ = [
    "ARCHS", "DetectionBackbone", "FixedStrideAnchorGenerator", "AlignedMultiScaleRoIAlign", "create_detector",
    "label_offset", "retinanet_anchor_sizes", "rpn_anchor_sizes",
]

ARCHS = ("retinanet", "mask_rcnn", "faster_rcnn")
_ARCH_CLASS = {"retinanet": RetinaNet, "mask_rcnn": MaskRCNN, "faster_rcnn": FasterRCNN}
_ASPECT_RATIOS = (0.5, 1.0, 2.0)  # h / w, as in both libraries


class FixedStrideAnchorGenerator(AnchorGenerator):
    """torchvision's anchor generator with the configured ``strides`` and unrounded (float) base anchors, as mmdet."""

    def __init__(self, sizes: tuple[tuple[float, ...], ...], aspect_ratios: tuple[tuple[float, ...], ...],
                 strides: tuple[int, ...]) -> None:
        super().__init__(sizes, aspect_ratios)
        if len(strides) != len(sizes):
            raise InvalidValueError(f"one stride per level: {len(sizes)} size tuples but strides {strides}")
        self.strides = tuple(int(s) for s in strides)

    def generate_anchors(self, scales: list[float], aspect_ratios: list[float], dtype: torch.dtype = torch.float32,
                         device: torch.device = torch.device("cpu")) -> torch.Tensor:
        """Base anchors centred on 0, ratio-major then scale, not rounded."""
        scales_t = torch.as_tensor(scales, dtype=dtype, device=device)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=dtype, device=device))
        ws = (scales_t[None, :] / h_ratios[:, None]).reshape(-1)
        hs = (scales_t[None, :] * h_ratios[:, None]).reshape(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(feature_maps) != len(self.strides):
            raise InvalidValueError(f"{len(feature_maps)} feature maps for anchors at {len(self.strides)} strides")
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        device = feature_maps[0].device
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(feature_maps[0].dtype, device)
        per_level = self.grid_anchors(grid_sizes, strides)
        anchors = torch.cat(per_level)
        return [anchors for _ in image_list.image_sizes]


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's multi-level RoIAlign (same level mapping and scale inference, written out here on public
    API) with ``aligned=True`` (mmcv's default, half-pixel corrected) and ``sampling_ratio=0`` (adaptive) by
    default."""

    def __init__(self, featmap_names: list[str], output_size: int | tuple[int, int], sampling_ratio: int = 0,
                 aligned: bool = True) -> None:
        super().__init__(featmap_names, output_size, sampling_ratio)
        self.aligned = aligned

    def _levels(self, boxes: list[torch.Tensor], feats: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        """Each box's level index: torchvision's rule (FPN eq. 1), floor(4 + log2(sqrt(area) / 224) + 1e-6)
        clamped to the levels present, whose scales are powers of 2 inferred from the largest image."""
        if self.scales is None:
            size = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
            self.scales = [2.0 ** round(math.log2(f.shape[-2] / size[0])) for f in feats]
        k_min, k_max = int(-math.log2(self.scales[0])), int(-math.log2(self.scales[-1]))
        side = torch.sqrt(torch.cat([box_area(b) for b in boxes]))
        levels = torch.floor(self.canonical_level + torch.log2(side / self.canonical_scale) + 1e-6)
        return levels.clamp(min=k_min, max=k_max).to(torch.int64) - k_min

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        feats = [v for k, v in x.items() if k in self.featmap_names]
        levels = self._levels(boxes, feats, image_shapes)
        # (batch index, x0, y0, x1, y1) rows, as roi_align takes them
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        out = feats[0].new_zeros((len(rois), feats[0].shape[1], *self.output_size))
        for level, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == level)[0]
            pooled = roi_align(feat, rois[idx], self.output_size, spatial_scale=scale,
                               sampling_ratio=self.sampling_ratio, aligned=self.aligned)
            out[idx] = pooled.to(out.dtype)
        return out


class DetectionBackbone(nn.Module):
    """``body`` (:class:`~leanvit.dense.backbone.DenseBackbone`) followed by ``neck`` (:class:`DenseFPN`), the
    ``backbone`` torchvision's detectors expect: ``out_channels`` is the neck width."""

    def __init__(self, body: DenseBackbone, neck: DenseFPN) -> None:
        super().__init__()
        self.body = body
        self.neck = neck
        self.out_channels = neck.out_channels
        self.strides = neck.strides

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Padded image batch -> pyramid ``{"0": finest, ...}``."""
        return self.neck(self.body(x))


def retinanet_anchor_sizes(strides: tuple[int, ...]) -> tuple[tuple[float, ...], ...]:
    """mmdet RetinaNet: octave base scale 4, 3 scales per octave -> (4s, 4s 2^(1/3), 4s 2^(2/3)) per level."""
    return tuple(tuple(4.0 * s * 2 ** (k / 3) for k in range(3)) for s in strides)


def rpn_anchor_sizes(strides: tuple[int, ...]) -> tuple[tuple[float, ...], ...]:
    """mmdet RPN: one scale, 8 x stride."""
    return tuple((8.0 * s,) for s in strides)


def label_offset(arch: str) -> int:
    """Label of the first object class: 0 for RetinaNet (no background class), 1 for the R-CNNs."""
    _check_arch(arch)
    return 0 if arch == "retinanet" else 1


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise InvalidValueError(f"unknown detector {arch!r}; choose one of {', '.join(ARCHS)}")


def _official_settings(arch: str, strides: tuple[int, ...]) -> dict[str, Any]:
    if arch == "retinanet":
        return dict(
            anchor_generator=FixedStrideAnchorGenerator(retinanet_anchor_sizes(strides),
                                                        (_ASPECT_RATIOS,) * len(strides), strides),
            detections_per_img=100, score_thresh=0.05, nms_thresh=0.5, topk_candidates=1000,
            fg_iou_thresh=0.5, bg_iou_thresh=0.4,
            min_size=800, max_size=1333, size_divisible=32,
        )
    settings = dict(
        rpn_anchor_generator=FixedStrideAnchorGenerator(rpn_anchor_sizes(strides), (_ASPECT_RATIOS,) * len(strides),
                                                        strides),
        rpn_pre_nms_top_n_train=2000, rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_train=1000, rpn_post_nms_top_n_test=1000, rpn_nms_thresh=0.7,
        box_roi_pool=AlignedMultiScaleRoIAlign(["0", "1", "2", "3"], 7, sampling_ratio=0),
        box_score_thresh=0.05, box_nms_thresh=0.5, box_detections_per_img=100,
        min_size=800, max_size=1333, size_divisible=32,
    )
    if arch == "mask_rcnn":
        settings["mask_roi_pool"] = AlignedMultiScaleRoIAlign(["0", "1", "2", "3"], 14, sampling_ratio=0)
    return settings


def _accepted(arch: str) -> set[str]:
    names = set(inspect.signature(_ARCH_CLASS[arch].__init__).parameters)
    names |= set(inspect.signature(GeneralizedRCNNTransform.__init__).parameters)
    return names - {"self", "backbone", "num_classes", "kwargs"}


def _init_like_mmdet(model: nn.Module, arch: str) -> None:
    # RetinaNet's torchvision head already uses mmdet's init (N(0, 0.01), prior-probability bias).
    if arch == "retinanet":
        return
    box_head, predictor = model.roi_heads.box_head, model.roi_heads.box_predictor
    for fc in (getattr(box_head, "fc6", None), getattr(box_head, "fc7", None)):
        if isinstance(fc, nn.Linear):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
    for layer, std in ((getattr(predictor, "cls_score", None), 0.01), (getattr(predictor, "bbox_pred", None), 0.001)):
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)


def create_detector(arch: str, backbone: str | DenseBackbone, num_classes: int = 80, **overrides: Any) -> nn.Module:
    """A torchvision ``arch`` ("retinanet" | "mask_rcnn" | "faster_rcnn") on leanvit ``backbone`` (a name or a
    built :class:`DenseBackbone`), configured as the official mmdet 2.x 1x configs.

    ``num_classes`` counts object classes (80 for COCO); the R-CNNs add torchvision's background class.
    ``overrides``: any argument of the torchvision class or its ``GeneralizedRCNNTransform`` (``min_size``,
    ``detections_per_img``, ``rpn_post_nms_top_n_train``, ``box_roi_pool``, ``size_divisible``, ...) replaces the
    official value; ``fpn_channels`` sets the neck width (256); everything else goes to
    :func:`~leanvit.dense.backbone.create_backbone` (``norm_eval``, ``frozen_stages``, ``checkpoint``, ...).
    ``pipeline``: "official" (mmdet's resize, normalisation order and mask pasting; the default) or
    "torchvision" (``GeneralizedRCNNTransform`` as is). The returned model carries
    ``leanvit_dense = {"arch", "backbone", "num_classes", "pipeline"}``.
    """
    _check_arch(arch)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise InvalidValueError(f"num_classes must be an int >= 1 (object classes, without background), got {num_classes!r}")
    pipeline = overrides.pop("pipeline", "official")
    if pipeline not in PIPELINES:
        raise InvalidValueError(f"pipeline must be one of {', '.join(PIPELINES)} (official: mmdet's input pipeline and mask "
                                f"pasting; torchvision: GeneralizedRCNNTransform), got {pipeline!r}")
    accepted = _accepted(arch)
    detector_kwargs = {k: v for k, v in overrides.items() if k in accepted}
    fpn_channels = int(overrides.pop("fpn_channels", 256))
    backbone_kwargs = {k: v for k, v in overrides.items() if k not in accepted}
    if isinstance(backbone, str):
        name = backbone
        body = create_backbone(backbone, **backbone_kwargs)
    elif isinstance(backbone, DenseBackbone):
        if backbone_kwargs:
            raise InvalidValueError(f"unknown option(s) {sorted(backbone_kwargs)} for {arch} on a built backbone; "
                                    f"detector options: {sorted(accepted)}")
        name, body = backbone.model.leanvit_cfg.name, backbone
    else:
        raise TypeError(f"backbone must be a leanvit model name or a DenseBackbone, got {type(backbone).__name__}")
    neck = fpn_preset(arch, body.out_channels, body.strides, fpn_channels)
    settings = {**_official_settings(arch, tuple(neck.strides)), **detector_kwargs}
    classes = num_classes if arch == "retinanet" else num_classes + 1
    model = _ARCH_CLASS[arch](DetectionBackbone(body, neck), classes, **settings)
    _init_like_mmdet(model, arch)
    if pipeline == "official":
        model.transform = MMDetTransform.like(model.transform)
    model.leanvit_dense = dict(arch=arch, backbone=name, num_classes=num_classes, pipeline=pipeline)
    return model
