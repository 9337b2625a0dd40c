"""Exact channel slicing of layers: a new layer computing only some output channels or reading only some input
channels of a known one (Conv2d dense or depthwise, Linear, ConvNorm with its BatchNorm). Channel pruning
(``leanvit.analysis.taylor``) and deploy forms that split one fused projection into several
(``leanvit.models.efficientvit_m_deploy``) build their layers with these.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidValueError
from .conv_norm import ConvNorm

__all__ = ["select_out_channels", "select_in_channels", "linear_from_conv1x1"]


def _conv_like(conv: nn.Conv2d, in_chs: int, out_chs: int, groups: int) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups=groups,
                     bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)


def _select_bn(bn: nn.BatchNorm2d, rows: torch.Tensor) -> nn.BatchNorm2d:
    out = nn.BatchNorm2d(len(rows), bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                         device=bn.weight.device, dtype=bn.weight.dtype)
    out.load_state_dict({k: (v[rows] if v.dim() else v) for k, v in bn.state_dict().items()})
    return out.train(bn.training)


@torch.no_grad()
def select_out_channels(layer: nn.Module, rows: torch.Tensor) -> nn.Module:
    """``layer`` computing only output channels ``rows`` (ConvNorm, Conv2d dense or depthwise, Linear).

    A ConvNorm is sliced in place (its conv and BatchNorm replaced) and returned; other layers are new.
    """
    if isinstance(layer, ConvNorm):
        layer.conv, layer.bn = select_out_channels(layer.conv, rows), _select_bn(layer.bn, rows)
        return layer
    if isinstance(layer, nn.Conv2d):
        depthwise = layer.groups == layer.out_channels == layer.in_channels and layer.groups > 1
        if layer.groups != 1 and not depthwise:
            raise InvalidValueError(f"cannot slice grouped conv {layer}")
        out = _conv_like(layer, len(rows) if depthwise else layer.in_channels, len(rows),
                         len(rows) if depthwise else 1)
    elif isinstance(layer, nn.Linear):
        out = nn.Linear(layer.in_features, len(rows), bias=layer.bias is not None, device=layer.weight.device,
                        dtype=layer.weight.dtype)
    else:
        raise TypeError(f"cannot slice the outputs of {type(layer).__name__}")
    out.weight.copy_(layer.weight[rows])
    if layer.bias is not None:
        out.bias.copy_(layer.bias[rows])
    return out


@torch.no_grad()
def select_in_channels(layer: nn.Module, cols: torch.Tensor) -> nn.Module:
    """``layer`` reading only input channels ``cols`` (ConvNorm in place, dense Conv2d, Linear)."""
    if isinstance(layer, ConvNorm):
        layer.conv = select_in_channels(layer.conv, cols)
        return layer
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise InvalidValueError(f"cannot slice the inputs of grouped conv {layer}")
        out = _conv_like(layer, len(cols), layer.out_channels, 1)
    elif isinstance(layer, nn.Linear):
        out = nn.Linear(len(cols), layer.out_features, bias=layer.bias is not None, device=layer.weight.device,
                        dtype=layer.weight.dtype)
    else:
        raise TypeError(f"cannot slice the inputs of {type(layer).__name__}")
    out.weight.copy_(layer.weight[:, cols])
    if layer.bias is not None:
        out.bias.copy_(layer.bias)
    return out


@torch.no_grad()
def linear_from_conv1x1(conv: nn.Conv2d) -> nn.Linear:
    """The Linear computing a dense 1x1 ``conv`` on (..., C) tokens (a zero bias where the conv has none)."""
    if conv.kernel_size != (1, 1) or conv.groups != 1:
        raise InvalidValueError(f"only a dense 1x1 conv is a Linear on tokens, not {conv}")
    out = nn.Linear(conv.in_channels, conv.out_channels, device=conv.weight.device, dtype=conv.weight.dtype)
    out.weight.copy_(conv.weight.flatten(1))
    out.bias.copy_(conv.bias if conv.bias is not None else torch.zeros_like(out.bias))
    return out
