"""Inference fusion: fold every BatchNorm into its conv / linear and depthwise residuals into kernels."""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["fuse", "fuse_"]


@torch.no_grad()
def fuse_(module: nn.Module) -> nn.Module:
    """Fuse ``module`` in place (children exposing ``fuse()`` are replaced by its result); returns it."""
    for name, child in list(module.named_children()):
        fused = child.fuse() if hasattr(child, "fuse") and callable(child.fuse) else child
        if fused is not child:
            setattr(module, name, fused)
        fuse_(fused)
    return module


def fuse(model: nn.Module, channels_last: bool | None = None) -> nn.Module:
    """An eval-mode deep copy of ``model`` ready for inference: Conv2d+BN -> Conv2d, BN+Linear -> Linear,
    residual depthwise ConvNorm -> one conv with the identity in its centre tap. The input is untouched.

    ``channels_last`` (default: the model's ``prefers_channels_last``, True for the conv-BN families) stores
    conv weights NHWC: oneDNN then runs every conv without layout reorders (measured 1.2x eager on CPU,
    benchmarks/NOTES.md); activations follow the weights, callers need not convert inputs.
    Models without anything to fold (SepViT) come back as an equivalent eval-mode copy.
    """
    fused = copy.deepcopy(model).eval()
    fuse_(fused)
    if channels_last is None:
        channels_last = getattr(model, "prefers_channels_last", False)
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    fused.fused = True
    return fused
