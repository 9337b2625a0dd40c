"""Checkpoint key layouts as data: what a family declares so that ``leanvit.models.checkpoint`` can read
foreign checkpoints without knowing any family.

A family class lists its foreign layouts in ``checkpoint_layouts`` and the functions that fit
resolution-dependent tensors to a model (bias tables, window tokens) in ``checkpoint_adapters``.
leanvit's own layout is the model's ``state_dict()`` and needs no entry.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

__all__ = [
    "Layout", "StateDict", "Adapter", "rename_keys", "identity_layout", "short_conv_names_to_leanvit",
    "short_conv_names_from_leanvit", "conv_bn_official_to_leanvit", "conv_bn_leanvit_to_official", "is_conv_bn_official",
]

StateDict = dict[str, torch.Tensor]
Adapter = Callable[[StateDict, nn.Module], StateDict]


@dataclass(frozen=True)
class Layout:
    """A foreign key layout and its lossless conversions to and from leanvit's.

    ``detect`` says whether a state dict is in this layout; a layout that is never auto-detected
    (``detect`` always False) is still a valid save target (``save_checkpoint(..., layout=name)``).
    """

    name: str
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    to_leanvit: Callable[[Mapping[str, torch.Tensor]], StateDict]
    from_leanvit: Callable[[Mapping[str, torch.Tensor]], StateDict]


def rename_keys(sd: Mapping[str, torch.Tensor], fn: Callable[[str], str | None]) -> StateDict:
    """``{fn(k): v}``; keys mapped to None are dropped."""
    out = {}
    for k, v in sd.items():
        nk = fn(k)
        if nk is not None:
            out[nk] = v
    return out


def identity_layout(name: str) -> Layout:
    """A layout equal to leanvit's (never detected; makes ``name`` a valid save target)."""
    return Layout(name, lambda sd: False, dict, dict)


def short_conv_names_to_leanvit(k: str) -> str:
    """Official / timm-SHViT ConvNorm child ``c`` and head child ``l``; stem indices 0/2/4/6 (ReLUs between)."""
    k = re.sub(r"^patch_embed\.(\d)\.c\.", lambda m: f"patch_embed.conv{int(m[1]) // 2 + 1}.c.", k)
    k = re.sub(r"^patch_embed\.(\d)\.bn\.", lambda m: f"patch_embed.conv{int(m[1]) // 2 + 1}.bn.", k)
    k = re.sub(r"\.c\.weight$", ".conv.weight", k)
    return re.sub(r"^(head|head_dist)\.l\.", r"\1.linear.", k)


def short_conv_names_from_leanvit(k: str) -> str:
    """Inverse of :func:`short_conv_names_to_leanvit`."""
    k = re.sub(r"^patch_embed\.conv(\d)\.", lambda m: f"patch_embed.{(int(m[1]) - 1) * 2}.", k)
    k = re.sub(r"\.conv\.weight$", ".c.weight", k)
    return re.sub(r"^(head|head_dist)\.linear\.", r"\1.l.", k)


# The official SHViT and EfficientViT-M repositories share one layout: blocks1/2/3, with the first three
# modules of blocks2/3 being the subsample (res1, patchmerge, res2).
_DOWNSAMPLE_PARTS = ("res1", "patchmerge", "res2")


def conv_bn_official_to_leanvit(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Official SHViT / EfficientViT-M (``blocks1/2/3``) -> leanvit. Drops ``attention_bias_idxs`` (recomputed)."""

    def fn(k: str) -> str | None:
        if k.endswith("attention_bias_idxs"):
            return None
        m = re.match(r"^blocks(\d)\.(\d+)\.(.*)$", k)
        if m:
            stage, idx, rest = int(m[1]) - 1, int(m[2]), m[3]
            if stage == 0:
                k = f"stages.0.blocks.{idx}.{rest}"
            elif idx < 3:
                k = f"stages.{stage}.downsample.{_DOWNSAMPLE_PARTS[idx]}.{rest}"
            else:
                k = f"stages.{stage}.blocks.{idx - 3}.{rest}"
        return short_conv_names_to_leanvit(k)

    return rename_keys(sd, fn)


def conv_bn_leanvit_to_official(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """leanvit -> the official ``blocks1/2/3`` layout."""

    def fn(k: str) -> str:
        m = re.match(r"^stages\.(\d)\.(downsample\.(res1|patchmerge|res2)|blocks\.(\d+))\.(.*)$", k)
        if m:
            stage, rest = int(m[1]), m[5]
            idx = _DOWNSAMPLE_PARTS.index(m[3]) if m[3] else int(m[4]) + (3 if stage > 0 else 0)
            k = f"blocks{stage + 1}.{idx}.{rest}"
        return short_conv_names_from_leanvit(k)

    return rename_keys(sd, fn)


def is_conv_bn_official(sd: Mapping[str, torch.Tensor]) -> bool:
    """True for the official SHViT / EfficientViT-M layout."""
    return any(k.startswith("blocks1.") for k in sd)
