"""Key layouts of the conv-BN families (SHViT, EfficientViT-M): official repositories and timm.

leanvit's own layout equals timm's EfficientViT-M layout (``stages.N.{downsample.{res1,patchmerge,res2},blocks}``,
``.conv``/``.bn``, ``head.linear``) for both families, so one table serves both official layouts.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

import torch

from ..checkpoint import register_adapter, register_layout
from .efficientvit_m import _bias_index, resize_attention_biases

StateDict = dict[str, torch.Tensor]

_DOWNSAMPLE_PARTS = ("res1", "patchmerge", "res2")
# timm's SHViT keeps the five downsample modules in one flat Sequential.
_SHVIT_TIMM_DOWNSAMPLE = {"0": "res1.0", "1": "res1.1", "2": "patchmerge", "3": "res2.0", "4": "res2.1"}
_SHVIT_TIMM_DOWNSAMPLE_INV = {v: k for k, v in _SHVIT_TIMM_DOWNSAMPLE.items()}


def _rename(sd: Mapping[str, torch.Tensor], fn: Callable[[str], str | None]) -> StateDict:
    out = {}
    for k, v in sd.items():
        nk = fn(k)
        if nk is not None:
            out[nk] = v
    return out


def _short_conv_names_to_leanvit(k: str) -> str:
    # Official/timm-SHViT ConvNorm child "c" and head child "l"; stem indices 0/2/4/6 (ReLUs between).
    k = re.sub(r"^patch_embed\.(\d)\.c\.", lambda m: f"patch_embed.conv{int(m[1]) // 2 + 1}.c.", k)
    k = re.sub(r"^patch_embed\.(\d)\.bn\.", lambda m: f"patch_embed.conv{int(m[1]) // 2 + 1}.bn.", k)
    k = re.sub(r"\.c\.weight$", ".conv.weight", k)
    return re.sub(r"^(head|head_dist)\.l\.", r"\1.linear.", k)


def _short_conv_names_from_leanvit(k: str) -> str:
    k = re.sub(r"^patch_embed\.conv(\d)\.", lambda m: f"patch_embed.{(int(m[1]) - 1) * 2}.", k)
    k = re.sub(r"\.conv\.weight$", ".c.weight", k)
    return re.sub(r"^(head|head_dist)\.linear\.", r"\1.l.", k)


def official_to_leanvit(sd: Mapping[str, torch.Tensor]) -> StateDict:
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
        return _short_conv_names_to_leanvit(k)

    return _rename(sd, fn)


def leanvit_to_official(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """leanvit -> official layout, adding the persistent ``attention_bias_idxs`` the official code saves."""

    def fn(k: str) -> str:
        m = re.match(r"^stages\.(\d)\.(downsample\.(res1|patchmerge|res2)|blocks\.(\d+))\.(.*)$", k)
        if m:
            stage, rest = int(m[1]), m[5]
            if m[3]:
                idx = _DOWNSAMPLE_PARTS.index(m[3])
            else:
                idx = int(m[4]) + (3 if stage > 0 else 0)
            k = f"blocks{stage + 1}.{idx}.{rest}"
        return _short_conv_names_from_leanvit(k)

    out = _rename(sd, fn)
    for k, v in list(out.items()):
        if k.endswith("attention_biases"):
            window = int(round(v.shape[1] ** 0.5))
            out[k[: -len("attention_biases")] + "attention_bias_idxs"] = _bias_index(window)
    return out


def shvit_timm_to_leanvit(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """timm ``shvit.py`` layout -> leanvit."""

    def fn(k: str) -> str:
        k = re.sub(r"^(stages\.\d\.downsample)\.(\d)\.", lambda m: f"{m[1]}.{_SHVIT_TIMM_DOWNSAMPLE[m[2]]}.", k)
        return _short_conv_names_to_leanvit(k)

    return _rename(sd, fn)


def shvit_leanvit_to_timm(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """leanvit -> timm ``shvit.py`` layout."""

    def fn(k: str) -> str:
        k = re.sub(
            r"^(stages\.\d\.downsample)\.(res1\.[01]|patchmerge|res2\.[01])\.",
            lambda m: f"{m[1]}.{_SHVIT_TIMM_DOWNSAMPLE_INV[m[2]]}.", k,
        )
        return _short_conv_names_from_leanvit(k)

    return _rename(sd, fn)


def _is_official(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("blocks1.") for k in sd)


def _is_shvit_timm(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("stages.") for k in sd) and any(k.endswith(".c.weight") for k in sd)


def _identity(sd: Mapping[str, torch.Tensor]) -> StateDict:
    return dict(sd)


def adapt_attention_biases(sd: StateDict, model: torch.nn.Module) -> StateDict:
    """Resize EfficientViT attention-bias tables trained at another resolution (bicubic, as the official
    dense code and timm do)."""
    expected = model.state_dict()
    for k, v in sd.items():
        if k.endswith("attention_biases") and k in expected and v.shape != expected[k].shape:
            if v.shape[0] == expected[k].shape[0]:
                sd[k] = resize_attention_biases(v, int(round(expected[k].shape[1] ** 0.5)))
    return sd


register_layout("shvit", "official", _is_official, official_to_leanvit, leanvit_to_official)
register_layout("shvit", "timm", _is_shvit_timm, shvit_timm_to_leanvit, shvit_leanvit_to_timm)
register_layout("efficientvit_m", "official", _is_official, official_to_leanvit, leanvit_to_official)
# timm's EfficientViT-M layout is leanvit's own; registered so "timm" is a valid save target.
register_layout("efficientvit_m", "timm", lambda sd: False, _identity, _identity)
register_adapter("efficientvit_m", adapt_attention_biases)
