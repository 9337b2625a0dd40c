"""Semantic segmentation heads with mmseg 0.x semantics (``fpn_head.py``, ``uper_head.py``, ``fcn_head.py``): Semantic FPN, UperNet, FCN.

Every head takes a list of NCHW maps, finest first, and returns class logits at the finest map's
resolution. ``align_corners=False`` everywhere; every ConvModule is conv (no bias) -> BN -> ReLU.

The pyramid pooling of UperNet is written as two small averaging matrices built from the map's run-time
size (:func:`adaptive_avg_pool2d_exportable`) instead of ``nn.AdaptiveAvgPool2d``: the result is the same,
but ONNX / OpenVINO exports keep a dynamic height and width (``adaptive_avg_pool2d`` needs a
trace-time-constant input size there; microsoft/Cream#261).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation
from ..errors import InvalidValueError

__all__ = [
    "ConvModule", "resize_to", "adaptive_avg_pool2d_exportable", "PyramidPooling", "SemanticFPNHead",
    "UPerHead", "FCNHead", "FinerLevels",
]


class ConvModule(Conv2dNormActivation):
    """conv (no bias) -> BatchNorm -> ReLU, Kaiming-normal (fan_out) init as mmcv's ConvModule."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, norm_layer=nn.BatchNorm2d,
                         activation_layer=nn.ReLU)
        nn.init.kaiming_normal_(self[0].weight, mode="fan_out", nonlinearity="relu")


def resize_to(x: torch.Tensor, size: Sequence[int] | torch.Size) -> torch.Tensor:
    """Bilinear resize to ``size`` (align_corners=False).

    Always resizes (an identity at equal sizes): a size comparison would be frozen into an exported graph.
    """
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _pool_matrix(length: int, bins: int, like: torch.Tensor) -> torch.Tensor:
    # Row i averages positions [floor(i*L/bins), ceil((i+1)*L/bins)): the bins of adaptive average pooling.
    i = torch.arange(bins, device=like.device)
    start = torch.div(i * length, bins, rounding_mode="floor")
    end = torch.div((i + 1) * length + bins - 1, bins, rounding_mode="floor")
    pos = torch.arange(length, device=like.device)
    inside = (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


def adaptive_avg_pool2d_exportable(x: torch.Tensor, bins: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, bins)`` as ``P_h @ x @ P_w^T``, so the export keeps H and W dynamic."""
    rows = _pool_matrix(x.shape[-2], bins, x)  # (bins, H)
    cols = _pool_matrix(x.shape[-1], bins, x)  # (bins, W)
    return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


def _init_classifier(conv: nn.Conv2d) -> None:
    nn.init.normal_(conv.weight, std=0.01)  # mmseg's cls_seg init
    nn.init.zeros_(conv.bias)


class _DecodeHead(nn.Module):
    """Shared classifier ``cls_seg``: Dropout2d -> 1x1 conv to the classes (mmseg decode_head)."""

    def __init__(self, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        _init_classifier(self.conv_seg)

    def cls_seg(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class PyramidPooling(nn.Module):
    """PSPNet's pooling module: per scale, average-pool to s x s -> 1x1 ConvModule -> resize back."""

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.pool_scales = tuple(int(s) for s in pool_scales)
        self.convs = nn.ModuleList(ConvModule(in_channels, channels, 1) for _ in self.pool_scales)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [resize_to(conv(adaptive_avg_pool2d_exportable(x, s)), x.shape[-2:])
                for s, conv in zip(self.pool_scales, self.convs)]


class SemanticFPNHead(_DecodeHead):
    """Kirillov et al.'s Semantic FPN head (mmseg ``FPNHead``) on FPN maps at power-of-two strides.

    Level i gets ``max(1, log2(s_i / s_0))`` ConvModules, each followed by x2 bilinear upsampling on the
    coarser levels; the branches are summed at the finest resolution and classified.
    """

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int], num_classes: int,
                 channels: int = 128, dropout: float = 0.1) -> None:
        super().__init__(channels, num_classes, dropout)
        if len(in_channels) != len(strides):
            raise InvalidValueError(f"SemanticFPNHead: {len(in_channels)} input channel counts but {len(strides)} strides")
        if any(s & (s - 1) for s in strides) or list(strides) != sorted(strides):
            raise InvalidValueError(f"SemanticFPNHead needs increasing power-of-two strides, got {list(strides)}")
        self.strides = list(strides)
        self.scale_heads = nn.ModuleList()
        for c_in, s in zip(in_channels, strides):
            steps = max(1, (s // strides[0]).bit_length() - 1)
            layers: list[nn.Module] = []
            for k in range(steps):
                layers.append(ConvModule(c_in if k == 0 else channels, channels, 3))
                if s != strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](features[0])
        for head, x in zip(self.scale_heads[1:], features[1:]):
            out = out + resize_to(head(x), out.shape[-2:])  # guards odd sizes (ceil-rounded maps)
        return self.cls_seg(out)


class UPerHead(_DecodeHead):
    """UperNet (mmseg ``UPerHead``): PPM on the coarsest map + FPN top-down fusion of all levels."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1) -> None:
        super().__init__(channels, num_classes, dropout)
        *lower, top = in_channels
        self.psp_modules = PyramidPooling(top, channels, pool_scales)
        self.bottleneck = ConvModule(top + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in lower)
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3) for _ in lower)
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        *lower, top = features
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, lower)]
        laterals.append(self.bottleneck(torch.cat([top, *self.psp_modules(top)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize_to(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([resize_to(o, size) for o in outs], dim=1))
        return self.cls_seg(fused)


class FCNHead(_DecodeHead):
    """mmseg ``FCNHead`` as UperNet's auxiliary head: ``num_convs`` 3x3 ConvModules, no input concat."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, num_convs: int = 1,
                 dropout: float = 0.1) -> None:
        super().__init__(channels, num_classes, dropout)
        self.convs = nn.Sequential(*(ConvModule(in_channels if k == 0 else channels, channels, 3)
                                     for k in range(num_convs)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_seg(self.convs(x))


class FinerLevels(nn.Module):
    """Adds ``num_levels`` finer maps (each x2) in front of a pyramid with 2x2 stride-2 transposed convs.

    Gives stride-16/32/64 backbones (SHViT, EfficientViT-M) the stride-8 and stride-4 inputs UperNet
    expects, as EfficientViTFPN does for detection (leanvit's choice: no official segmentation code); no norm or activation, as there.
    """

    def __init__(self, channels: int, num_levels: int = 2) -> None:
        super().__init__()
        self.trans_convs = nn.ModuleList(nn.ConvTranspose2d(channels, channels, 2, stride=2)
                                         for _ in range(num_levels))
        for conv in self.trans_convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        finer: list[torch.Tensor] = []
        x = features[0]
        for conv in self.trans_convs:
            x = conv(x)
            finer.insert(0, x)
        return finer + list(features)
