"""Test weights whose outputs depend on the input, and one way to compare two models' logits.

A freshly built model is a poor subject for numerical checks: zero-initialised residual BatchNorms, identity
running statistics and a 0.02-std head make most of every logit a constant (the numbers are in
:func:`signal_weights_`), so a tolerance on such logits judges the constant, not what the network computes
from its input. :func:`signal_weights_` gives every layer normalised activations and non-trivial affine
terms, so that the logits vary across inputs about as much as they are large, and :func:`logit_agreement`
reports errors relative to that variation (and top-1 agreement) instead of the logits' magnitude.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from ..errors import InvalidValueError

__all__ = ["signal_weights_", "logit_agreement", "signal_images"]

_NORMS = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _native_size(model: nn.Module) -> tuple[int, int]:
    """The input size the model was built for (SepViT with per-window tokens runs at no other)."""
    built = getattr(model, "img_size", None)
    if isinstance(built, int):
        return built, built
    if isinstance(built, (tuple, list)) and len(built) == 2:
        return int(built[0]), int(built[1])
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return (int(size[-2]), int(size[-1])) if size else (224, 224)


def signal_images(n: int, img_size: int | tuple[int, int], *, seed: int = 0) -> torch.Tensor:
    """``n`` random unit-variance images (NCHW) that differ as images do: white noise mixed, in a random
    proportion per image, with a random low-frequency field (regions of brightness and colour).

    White noise alone is nearly the same image to a network after global pooling; the smooth part makes
    pooled features, and so the logits, depend on which image went in. The mixture spans pure white noise
    (``torch.randn``), so BatchNorm statistics estimated on these images also suit white-noise inputs.
    """
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, max(h // 32, 2), max(w // 32, 2), generator=g)
    smooth = nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    smooth = (smooth - smooth.mean((1, 2, 3), keepdim=True)) / smooth.std((1, 2, 3), keepdim=True)
    share = torch.rand(n, 1, 1, 1, generator=g)
    return share.sqrt() * smooth + (1 - share).sqrt() * torch.randn(n, 3, h, w, generator=g)


@torch.no_grad()
def _redraw_(model: nn.Module, g: torch.Generator) -> None:
    """Variance-preserving random weights, non-trivial norm affines, random free parameters."""
    owned: set[int] = set()
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=g) / math.sqrt(fan_in))
            if module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
        elif isinstance(module, _NORMS):
            if getattr(module, "weight", None) is not None:
                # away from the papers' zero-gamma residual inits and from 1: every branch and scale counts
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
            if getattr(module, "bias", None) is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.2)
        else:
            continue
        owned.update(id(p) for p in module.parameters(recurse=False))
    for p in model.parameters():
        if id(p) not in owned:  # attention biases, window tokens, layer scales, position tables, ...
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@torch.no_grad()
def _calibrate_batchnorm_(model: nn.Module, images: torch.Tensor, batches: int) -> None:
    """Running statistics = the mean of ``batches`` train-mode batch statistics (momentum None)."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms:
        return
    was_training = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    try:
        model.eval()  # dropout, drop-path and train-only heads stay off: only the BatchNorms learn statistics
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for chunk in images.chunk(batches):
            model(chunk)
    finally:
        for m in norms:
            m.momentum = momenta[m]
        for m, mode in was_training.items():
            m.training = mode


def signal_weights_(
    model: nn.Module, *, seed: int = 0, img_size: int | tuple[int, int] | None = None, batches: int = 3,
    batch_size: int = 8,
) -> nn.Module:
    """Give ``model`` (in place) random weights under which its outputs depend on its input; returns it.

    Every Conv/Linear weight is redrawn with variance 1 / fan-in (biases small), every BatchNorm /
    LayerNorm / GroupNorm gets a random scale in [0.5, 1.5) and shift, every other parameter (attention
    biases, window tokens, layer scales) random values, all from ``seed`` alone; then the BatchNorms'
    running statistics are re-estimated on ``batches`` x ``batch_size`` :func:`signal_images` at
    ``img_size`` (default: the model's native size), so that each layer's activations are normalised as in
    a trained network. The model's mode and the BatchNorms' momentum are restored. Works on leanvit and timm
    models; call it before fusing (a fused model has no BatchNorm left to calibrate: only the redraw applies).

    Measured on 8 ``torch.randn`` images at 224 (std of the logits over the images, averaged over the 1000
    classes, vs their mean magnitude; AMD EPYC Zen 5, torch 2.14.1, timm 1.0.31)::

                                     shvit_s1                efficientvit_m0
                                     std     |logit|         std     |logit|
        default init                 5.0e-6  2.2e-5          3.4e-6  1.5e-5
        BatchNorms perturbed only*   1.4e-6  0.16            8.7e-7  0.11
        tests' old randomize         1.4e-3  0.51            3.1e-4  0.39
        signal_weights_              1.2     1.1             2.0     2.0

    (* random running statistics and affines in every BatchNorm, the rest of the default init: the
    former ``zoo.perturb_batchnorm_``, which this function replaced.)

    With these weights the BN-fused model's max error is 1.6e-5 / 3.5e-5 of the spread (shvit_s1 /
    efficientvit_m0, 4 :func:`signal_images`) with all top-1 classes equal; every leanvit variant and timm's
    shvit_s1, efficientvit_m0, mobileone_s0 and repvit_m0_9 reach spread / |logit| of 0.6-1.2. SepViT
    (LayerNorm throughout, no BatchNorm to calibrate) reaches 0.15-0.24: its logits keep a larger constant.
    Cost: 0.3-3.5 s of CPU per model (one thread), most of it the calibration forwards.
    """
    first = next(model.parameters(), None)
    if first is None:
        return model
    _redraw_(model, torch.Generator().manual_seed(seed))
    images = signal_images(batches * batch_size, img_size or _native_size(model), seed=seed + 1)
    _calibrate_batchnorm_(model, images.to(first.device, first.dtype), batches)
    return model


def logit_agreement(reference: Any, output: Any) -> dict[str, float]:
    """How closely ``output`` follows ``reference`` (both (batch, classes); tensors or arrays).

    Returns ``max_abs_error``; ``spread``: the reference logits' standard deviation across the batch, averaged
    over classes (what depends on the input; needs a batch of at least 2); ``relative_error``: max abs
    error / spread; ``top1_agreement``: the fraction of rows whose arg-max class is the same; and
    ``input_correlation``: the correlation of the two input-dependent parts (each logit minus its mean over the
    batch), over all rows and classes. An output that ignores its input scores 0 there (its rows are equal:
    nothing is left once the batch mean is removed) and one that answers for the wrong input scores below 0,
    however close its values are to the reference's; an output that only adds a constant keeps 1.
    """
    ref = torch.as_tensor(reference).detach().to("cpu", torch.float64)
    out = torch.as_tensor(output).detach().to("cpu", torch.float64)
    if ref.shape != out.shape or ref.ndim != 2:
        raise InvalidValueError(f"logit_agreement needs two (batch, classes) arrays of one shape, got "
                                f"{tuple(ref.shape)} and {tuple(out.shape)}")
    if ref.shape[0] < 2:
        raise InvalidValueError("logit_agreement needs a batch of at least 2 inputs: the spread is measured across it")
    max_abs = (out - ref).abs().max().item()
    spread = ref.std(dim=0).mean().item()
    ref_part, out_part = ref - ref.mean(0), out - out.mean(0)
    norms = (ref_part.norm() * out_part.norm()).item()
    return {
        "max_abs_error": max_abs,
        "spread": spread,
        "relative_error": max_abs / spread if spread > 0 else math.inf,
        "top1_agreement": (out.argmax(1) == ref.argmax(1)).double().mean().item(),
        "input_correlation": (ref_part * out_part).sum().item() / norms if norms > 0 else 0.0,
    }
