"""Shared building blocks: one implementation each, used by every family."""
from .blocks import ConvFFN, ConvStem, PatchMerging, Residual, Subsample, depthwise_residual
from .conv_norm import ConvNorm, NormLinear, fuse_bn_linear, fuse_conv_bn
from .mobile import ChannelLayerNorm, SpatialGroupNorm, explicit_attention, mobile_norm
from .slicing import linear_from_conv1x1, select_in_channels, select_out_channels
from .windows import WindowedAttention

__all__ = [
    "ConvNorm", "NormLinear", "fuse_conv_bn", "fuse_bn_linear",
    "Residual", "ConvFFN", "PatchMerging", "Subsample", "ConvStem", "depthwise_residual",
    "SpatialGroupNorm", "ChannelLayerNorm", "explicit_attention", "mobile_norm",
    "select_out_channels", "select_in_channels", "linear_from_conv1x1", "WindowedAttention",
]
