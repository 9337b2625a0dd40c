"""Building blocks shared by the conv-BN families (SHViT, EfficientViT-M)."""
from __future__ import annotations

import torch
from torch import nn
from timm.layers import SqueezeExcite

from .conv_norm import ConvNorm

__all__ = ["Residual", "ConvFFN", "PatchMerging", "Subsample", "ConvStem", "depthwise_residual"]


class Residual(nn.Module):
    """``x + m(x)``. ``fuse()`` folds a depthwise ConvNorm branch and the identity into one conv."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """Fold the skip into a depthwise kernel's centre tap when the branch is a depthwise ConvNorm."""
        m = self.m
        if not isinstance(m, ConvNorm):
            return self
        conv = m.conv
        is_identity_shaped = (
            conv.groups == conv.in_channels == conv.out_channels
            and conv.stride == (1, 1)
            and conv.kernel_size[0] % 2 == 1
            and conv.kernel_size[0] == conv.kernel_size[1]
            and conv.padding == (conv.kernel_size[0] // 2,) * 2
        )
        fused = m.fuse()
        if not is_identity_shaped:
            return _FusedResidual(fused)
        centre = conv.kernel_size[0] // 2
        fused.weight[:, 0, centre, centre] += 1.0
        return fused


class _FusedResidual(nn.Module):
    """Residual around an already-fused conv that cannot absorb the identity."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)


def depthwise_residual(dim: int, bn_weight_init: float = 0.0) -> Residual:
    """Residual 3x3 depthwise ConvNorm (local mixing / conditional position encoding)."""
    return Residual(ConvNorm(dim, dim, 3, 1, 1, groups=dim, bn_weight_init=bn_weight_init))


class ConvFFN(nn.Module):
    """1x1 ConvNorm -> ReLU -> 1x1 ConvNorm (last BN gamma 0: the branch starts as zero)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.pw1 = ConvNorm(dim, hidden)
        self.act = nn.ReLU()
        self.pw2 = ConvNorm(hidden, dim, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.act(self.pw1(x)))


class PatchMerging(nn.Module):
    """Stride-2 inverted residual without skip: 1x1 expand x4, 3x3 s2 depthwise, squeeze-excite, 1x1 project.

    SE reduced width is ``make_divisible(4*in*0.25, 8)`` (timm's SqueezeExcite), e.g. 312 for SHViT-S2.
    """

    def __init__(self, dim: int, out_dim: int, expansion: int = 4) -> None:
        super().__init__()
        hidden = dim * expansion
        self.conv1 = ConvNorm(dim, hidden)
        self.act1 = nn.ReLU()
        self.conv2 = ConvNorm(hidden, hidden, 3, 2, 1, groups=hidden)
        self.act2 = nn.ReLU()
        self.se = SqueezeExcite(hidden, rd_ratio=0.25)
        self.conv3 = ConvNorm(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        return self.conv3(self.se(x))


class Subsample(nn.Sequential):
    """Between stages: (DW + FFN) at the input width, PatchMerging, (DW + FFN) at the output width.

    The depthwise convs here start with BN gamma 1 (unlike the zero-init DWs inside blocks).
    """

    def __init__(self, dim: int, out_dim: int, ffn_ratio: int = 2) -> None:
        super().__init__()
        self.res1 = nn.Sequential(
            depthwise_residual(dim, bn_weight_init=1.0), Residual(ConvFFN(dim, dim * ffn_ratio))
        )
        self.patchmerge = PatchMerging(dim, out_dim)
        self.res2 = nn.Sequential(
            depthwise_residual(out_dim, bn_weight_init=1.0), Residual(ConvFFN(out_dim, out_dim * ffn_ratio))
        )


class ConvStem(nn.Sequential):
    """Four 3x3 stride-2 ConvNorm layers (widths dim/8, dim/4, dim/2, dim) with ReLU between: stride 16."""

    def __init__(self, in_chs: int, widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        chs = (in_chs, *widths)
        for i in range(4):
            self.add_module(f"conv{i + 1}", ConvNorm(chs[i], chs[i + 1], 3, 2, 1))
            if i < 3:
                self.add_module(f"act{i + 1}", nn.ReLU())

    def forward(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """``channels_last``: produce NHWC activations from the first conv on (the input is not copied)."""
        first, *rest = self.children()
        # a fused stem's first conv is a plain Conv2d whose weights leanvit.fuse already stored NHWC
        x = first(x, channels_last=True) if channels_last and isinstance(first, ConvNorm) else first(x)
        for module in rest:
            x = module(x)
        return x
