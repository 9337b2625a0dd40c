"""Exact rewrites for mobile delegates (ExecuTorch's XNNPACK, Core ML): the same function in the few ops
those compilers lower whole.

Measured with ExecuTorch 1.5.1's XNNPACK partitioner (torch 2.14.1): ``F.scaled_dot_product_attention``
exports as ``_safe_softmax`` (``any`` / ``where`` / ``eq`` / ``logical_not`` / ``full_like`` masks), scalar
``mul``s and broadcast ``expand_copy``s, ``GroupNorm`` as ``native_group_norm`` and tensor ``split`` /
``chunk`` as ``split_with_sizes_copy``: all of them stay outside the delegate and run as portable kernels,
with a copy on every delegate boundary. :func:`explicit_attention` (``bmm`` + ``softmax``), static slices and
:class:`SpatialGroupNorm` / :class:`ChannelLayerNorm` (4-D means; ``native_layer_norm`` is not delegated
either) are lowered whole. :func:`mobile_norm` picks the form of a torch norm.
"""
from __future__ import annotations

import torch
from torch import nn
from ..errors import InvalidValueError

__all__ = ["explicit_attention", "SpatialGroupNorm", "ChannelLayerNorm", "mobile_norm"]


def explicit_attention(q: torch.Tensor, k_t: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
                       scale: float | None = None) -> torch.Tensor:
    """``softmax(q @ k_t * scale + bias) @ v`` with ``torch.bmm`` on 3-D tensors.

    ``q`` (B, N, d), ``k_t`` (B, d, M) (keys already transposed), ``v`` (B, M, dv); ``bias`` broadcasts to
    (B, N, M). Callers fold ``scale`` into their q projection where they can (``None`` = already applied).
    """
    logits = torch.bmm(q, k_t)
    if scale is not None:
        logits = logits * scale
    if bias is not None:
        logits = logits + bias
    return torch.bmm(logits.softmax(dim=-1), v)


class _AffineNorm(nn.Module):
    """Per-channel weight and bias after a normalisation (what both rewrites share)."""

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    @classmethod
    def _copy_of(cls, norm: nn.Module, num_channels: int) -> "_AffineNorm":
        out = cls(num_channels, norm.eps).to(norm.weight.device, norm.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(norm.weight)
            out.bias.copy_(norm.bias)
        return out


class SpatialGroupNorm(_AffineNorm):
    """``GroupNorm(1, C)`` on (B, C, H, W) from spatial means only (XNNPACK lowers ``mean`` over H, W with
    ``keepdim``): the per-image mean over C, H and W is the mean over C of the per-channel spatial means
    (all channels count the same H * W values), the variance likewise, as ``GroupNorm`` computes it
    (biased, two-pass)."""

    @classmethod
    def from_group_norm(cls, norm: nn.GroupNorm) -> "SpatialGroupNorm":
        """The same normalisation as a single-group, affine ``norm``."""
        if norm.num_groups != 1 or not norm.affine:
            raise InvalidValueError(f"only an affine GroupNorm with one group has this form, got {norm}")
        return cls._copy_of(norm, norm.num_channels)

    @staticmethod
    def _mean_chw(x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1, 1, 1) mean, through two spatial means of 4-D tensors."""
        per_channel = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        return per_channel.reshape(x.shape[0], 1, x.shape[1], 1).mean((2, 3), keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - self._mean_chw(x)
        inv_std = torch.rsqrt(self._mean_chw(centred * centred) + self.eps)
        C = x.shape[1]
        return centred * inv_std * self.weight.view(1, C, 1, 1) + self.bias.view(1, C, 1, 1)


class ChannelLayerNorm(_AffineNorm):
    """``LayerNorm`` over the last dim written with the 4-D spatial means XNNPACK lowers: (..., C) is viewed
    as (tokens, 1, C, 1) and averaged over its last two dims. Same values as ``nn.LayerNorm`` (biased
    variance, two-pass)."""

    @classmethod
    def from_layer_norm(cls, norm: nn.LayerNorm) -> "ChannelLayerNorm":
        """The same normalisation as ``norm`` (over one trailing dim, with affine parameters)."""
        if len(norm.normalized_shape) != 1 or not norm.elementwise_affine or norm.bias is None:
            raise InvalidValueError(f"only a LayerNorm over one dim with weight and bias has this form, got {norm}")
        return cls._copy_of(norm, norm.normalized_shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C = x.shape[-1]
        rows = x.reshape(-1, 1, C, 1)
        centred = rows - rows.mean((2, 3), keepdim=True)
        inv_std = torch.rsqrt((centred * centred).mean((2, 3), keepdim=True) + self.eps)
        return (centred * inv_std).reshape(x.shape) * self.weight + self.bias


def mobile_norm(module: nn.Module) -> nn.Module | None:
    """The delegate-friendly exact form of a torch norm (``GroupNorm(1, C)``, ``LayerNorm(C)``), or None."""
    if isinstance(module, nn.GroupNorm) and module.num_groups == 1 and module.affine:
        return SpatialGroupNorm.from_group_norm(module)
    if (isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1 and module.elementwise_affine
            and module.bias is not None):
        return ChannelLayerNorm.from_layer_norm(module)
    return None
