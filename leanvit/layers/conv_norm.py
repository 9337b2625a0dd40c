"""Fusable Conv2d+BatchNorm and BatchNorm+Linear pairs (shared by SHViT and EfficientViT-M)."""
from __future__ import annotations

import torch
from torch import nn
from timm.layers import trunc_normal_

from .recompute import conv_norm_recomputable

__all__ = ["ConvNorm", "NormLinear", "fuse_conv_bn", "fuse_bn_linear"]


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Fold an eval-mode BatchNorm into the preceding conv: W' = W*s, b' = beta + (b - mean)*s."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale[:, None, None, None]
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, bias=True, device=weight.device, dtype=weight.dtype,
    )
    fused.weight.copy_(weight)
    fused.bias.copy_(bias)
    return fused


@torch.no_grad()
def fuse_bn_linear(bn: nn.BatchNorm1d, linear: nn.Linear) -> nn.Linear:
    """Fold an eval-mode BatchNorm1d into the following Linear (scales the input columns)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    weight = linear.weight * scale[None, :]
    bias = linear.weight @ shift
    if linear.bias is not None:
        bias = bias + linear.bias
    fused = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    fused.weight.copy_(weight)
    fused.bias.copy_(bias)
    return fused


class ConvNorm(nn.Module):
    """Conv2d (no bias) followed by BatchNorm2d; ``fuse()`` returns one Conv2d with bias.

    ``bn_weight_init=0`` makes a residual branch start as the identity (the papers' init).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """``channels_last``: run the conv with NHWC weights, so that the output is NHWC whatever the
        input layout (oneDNN follows the weights), without copying the input."""
        return conv_norm_recomputable(self.conv, self.bn, x, channels_last)

    def fuse(self) -> nn.Conv2d:
        """The equivalent single Conv2d (eval statistics)."""
        return fuse_conv_bn(self.conv, self.bn)


class NormLinear(nn.Module):
    """BatchNorm1d -> (dropout) -> Linear classifier head; ``fuse()`` returns one Linear."""

    def __init__(self, in_features: int, out_features: int, drop: float = 0.0, std: float = 0.02) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)
        self.drop = nn.Dropout(drop)
        self.linear = nn.Linear(in_features, out_features)
        trunc_normal_(self.linear.weight, std=std)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(self.bn(x)))

    def fuse(self) -> nn.Linear:
        """The equivalent single Linear (eval statistics; dropout is a no-op at inference)."""
        return fuse_bn_linear(self.bn, self.linear)
