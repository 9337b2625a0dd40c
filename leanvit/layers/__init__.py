"""Shared building blocks: one implementation each, used by every family."""
from .blocks import ConvFFN, ConvStem, PatchMerging, Residual, Subsample, depthwise_residual
from .conv_norm import ConvNorm, NormLinear, fuse_bn_linear, fuse_conv_bn
from .mobile import ChannelLayerNorm, SpatialGroupNorm, explicit_attention, mobile_norm

__all__ = [
    "ConvNorm", "NormLinear", "fuse_conv_bn", "fuse_bn_linear",
    "Residual", "ConvFFN", "PatchMerging", "Subsample", "ConvStem", "depthwise_residual",
    "SpatialGroupNorm", "ChannelLayerNorm", "explicit_attention", "mobile_norm",
]
