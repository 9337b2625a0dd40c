"""Inference fusion: fold every BatchNorm into its conv / linear and depthwise residuals into kernels,
then give each module the form that runs fastest on the target runtime."""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from ..errors import InvalidValueError
from ..layers import mobile_norm

__all__ = ["TARGETS", "MOBILE_TARGETS", "fuse", "fuse_"]

# runtimes whose compilers lower a graph to a delegate (XNNPACK, Core ML): they get the exact rewrites of
# leanvit.layers.mobile (explicit bmm attention, slices instead of splits, GroupNorm from spatial means)
MOBILE_TARGETS = ("executorch", "coreml")
TARGETS = ("torch", "openvino", "onnx", *MOBILE_TARGETS)


def _replace_each_child_(module: nn.Module, replace: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Replace every child by ``replace(child)`` (itself to keep it), recursively into the result; returns
    ``module``."""
    for name, child in list(module.named_children()):
        new = replace(child)
        if new is not child:
            setattr(module, name, new)
        _replace_each_child_(new, replace)
    return module


def _replace_children_(module: nn.Module, hook: str, *args: object) -> nn.Module:
    """Replace every child that has a callable ``hook`` by ``child.hook(*args)``, recursively; returns ``module``."""
    def replace(child: nn.Module) -> nn.Module:
        method = getattr(child, hook, None)
        return method(*args) if callable(method) else child

    return _replace_each_child_(module, replace)


@torch.no_grad()
def fuse_(module: nn.Module) -> nn.Module:
    """Fuse ``module`` in place (children exposing ``fuse()`` are replaced by its result); returns it."""
    return _replace_children_(module, "fuse")


def fuse(model: nn.Module, channels_last: bool | None = None, *, target: str = "torch") -> nn.Module:
    """An eval-mode deep copy of ``model`` ready for inference: Conv2d+BN -> Conv2d, BN+Linear -> Linear,
    residual depthwise ConvNorm -> one conv with the identity in its centre tap. The input is untouched.

    ``channels_last`` (default: the model's ``prefers_channels_last``, True for the conv-BN families) stores
    conv weights NHWC: oneDNN then runs every conv without layout reorders (measured 1.2x eager on CPU,
    benchmarks/NOTES.md); activations follow the weights, callers need not convert inputs.

    ``target`` (one of ``TARGETS``) is the runtime the result will run on. After BN folding,
    modules with a ``deploy_form(target)`` hook are replaced by what it returns; the family decides (the
    knowledge lives in the model files). Same outputs up to fp32 rounding, different graphs:

    * "openvino": EfficientViT-M's cascaded group attention computes q, k and v with three convs instead
      of one conv + split, with the attention scale folded into the q depthwise conv. OpenVINO's CPU
      plugin runs those channel splits with a reference kernel; without them efficientvit_m0 / m5 run
      17 % / 11 % faster in bf16 (benchmarks/NOTES.md entries 6 and 12). Since entry 15 the cascade
      also runs token-major with the q / k / v projections as Linear layers, and its local windows (up
      to 4) are cut out by slicing instead of a 6-D permute: no planar reorders or generic Transposes
      left for OpenVINO (m0 +5.6 %, m5 +2.5 % more on the AMD machine).
    * "executorch" and "coreml" (``MOBILE_TARGETS``): every family's attention runs ``bmm`` + ``softmax``
      on static slices (``leanvit.layers.mobile``) and GroupNorm(1) / LayerNorm are written with 4-D
      means, and SepViT's window tokens reach the windows without ``expand``, so that ExecuTorch's XNNPACK
      partitioner delegates the whole graph (ExecuTorch 1.5.1, 224 px: every SHViT and EfficientViT-M variant
      and sepvit_lite keep no op outside the delegate).
    * "torch" (default) and "onnx" keep the one-conv form: three small convs are slower in PyTorch jit
      (fp32 channels-last: m0 361 -> 341, m5 86.2 -> 83.9 images/s), and ONNX Runtime gained at most
      1-3 %, no more than two sessions of the same graph differ (NOTES.md entry 12).

    Models without anything to fold (SepViT) come back as an equivalent eval-mode copy.
    """
    if target not in TARGETS:
        raise InvalidValueError(f"unknown fuse target {target!r}; choose from {', '.join(map(repr, TARGETS))}")
    fused = copy.deepcopy(model).eval()
    fuse_(fused)
    with torch.no_grad():
        _replace_children_(fused, "deploy_form", target)
        if target in MOBILE_TARGETS:  # every GroupNorm(1, C) / LayerNorm(C) in its mobile_norm form
            _replace_each_child_(fused, lambda child: mobile_norm(child) or child)
    if channels_last is None:  # mobile delegates take NCHW graphs and choose their own layouts
        channels_last = getattr(model, "prefers_channels_last", False) and target not in MOBILE_TARGETS
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    fused.fused = True
    fused.fuse_target = target
    return fused
