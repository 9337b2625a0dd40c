"""SHViT: Single-Head Vision Transformer with memory-efficient macro design (Yun & Ro, CVPR 2024).

Only what is specific to SHViT lives here: the single-head attention on a partial channel slice
(SHSA) and the block layout. Stem, subsample, FFN and heads are the shared ``leanvit.layers``.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InvalidValueError
from ..layers import ConvFFN, ConvNorm, ConvStem, NormLinear, Residual, depthwise_residual, explicit_attention
from ._base import LeanViTModel
from ._layouts import (Layout, StateDict, conv_bn_leanvit_to_official, conv_bn_official_to_leanvit, is_conv_bn_official,
                       rename_keys, short_conv_names_from_leanvit, short_conv_names_to_leanvit)
from ._pretrained import official_and_timm
from ._registry import ModelConfig
from .factory import register_variant
from .fusion import MOBILE_TARGETS

__all__ = ["SHViT", "SHViTArch", "SingleHeadAttention", "StridedConvStem", "shvit_s1", "shvit_s2", "shvit_s3", "shvit_s4"]


class SingleHeadAttention(nn.Module):
    """SHSA: one attention head over the first ``pdim`` channels; the rest pass through untouched.

    ``pre_norm`` is GroupNorm with a single group (normalises the slice over C, H and W), as in the
    official code and timm; the paper's "LayerNorm" wording does not match the released weights.
    """

    def __init__(self, dim: int, qk_dim: int, pdim: int) -> None:
        super().__init__()
        self.scale = qk_dim ** -0.5
        self.qk_dim = qk_dim
        self.pdim = pdim
        self.v_dim = pdim  # the head's value width: pdim, below it after leanvit.analysis.taylor.prune_channels
        self.pre_norm = nn.GroupNorm(1, pdim)
        self.qkv = ConvNorm(pdim, qk_dim * 2 + pdim)
        self.proj = nn.Sequential(nn.ReLU(), ConvNorm(dim, dim, bn_weight_init=0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        x1, x2 = x.split([self.pdim, C - self.pdim], dim=1)
        # Token-major view (B, N, C): free for channels-last maps (the deploy layout), one copy for NCHW.
        qkv = self.qkv(self.pre_norm(x1)).permute(0, 2, 3, 1).reshape(B, 1, H * W, -1)
        q, k, v = qkv.split([self.qk_dim, self.qk_dim, self.v_dim], dim=3)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = out.view(B, H, W, self.v_dim).permute(0, 3, 1, 2)
        return self.proj(torch.cat([out, x2], dim=1))

    def deploy_form(self, target: str) -> nn.Module:
        """Hook of ``leanvit.fuse(target=...)``: mobile delegates get :class:`_MobileSingleHeadAttention`."""
        if target not in MOBILE_TARGETS or not isinstance(self.qkv, nn.Conv2d):
            return self  # unfused modules stay as they are
        return _MobileSingleHeadAttention(self)


class _MobileSingleHeadAttention(nn.Module):
    """Deploy form of a fused :class:`SingleHeadAttention` for ExecuTorch / Core ML (``leanvit.layers.mobile``):
    channel slices instead of ``split``, ``bmm`` attention with the scale
    folded into the q rows of the qkv conv (2^-2 for qk_dim 16: exact). Same values up to fp32 rounding."""

    def __init__(self, attn: SingleHeadAttention) -> None:
        super().__init__()
        self.pdim, self.qk_dim, self.v_dim = attn.pdim, attn.qk_dim, attn.v_dim
        self.pre_norm = copy.deepcopy(attn.pre_norm)  # fuse() then gives it its mobile form
        self.qkv = copy.deepcopy(attn.qkv)
        with torch.no_grad():
            self.qkv.weight[:attn.qk_dim] *= attn.scale
            self.qkv.bias[:attn.qk_dim] *= attn.scale
        self.proj = copy.deepcopy(attn.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        qkv = self.qkv(self.pre_norm(x[:, :self.pdim])).flatten(2)  # (B, 2 qk + v, N)
        qk = self.qk_dim
        q = qkv[:, :qk].transpose(1, 2)
        out = explicit_attention(q, qkv[:, qk:2 * qk], qkv[:, 2 * qk:].transpose(1, 2))  # (B, N, v)
        out = out.transpose(1, 2).reshape(B, self.v_dim, H, W)
        return self.proj(torch.cat([out, x[:, self.pdim:]], dim=1))


class SHViTBlock(nn.Module):
    """conv (residual 3x3 depthwise) -> mixer (residual SHSA, or nothing in stage 1) -> ffn."""

    def __init__(self, dim: int, qk_dim: int, pdim: int, use_attention: bool) -> None:
        super().__init__()
        self.conv = depthwise_residual(dim, bn_weight_init=0.0)
        self.mixer = Residual(SingleHeadAttention(dim, qk_dim, pdim)) if use_attention else nn.Identity()
        self.ffn = Residual(ConvFFN(dim, dim * 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.mixer(self.conv(x)))


class StridedConvStem(ConvStem):
    """A :class:`ConvStem` of ``len(widths)`` 3x3 stride-2 ConvNorm layers (stride 2^len), for macro-design studies."""

    def __init__(self, in_chs: int, widths: tuple[int, ...]) -> None:
        nn.Sequential.__init__(self)
        chs = (in_chs, *widths)
        for i in range(len(widths)):
            self.add_module(f"conv{i + 1}", ConvNorm(chs[i], chs[i + 1], 3, 2, 1))
            if i < len(widths) - 1:
                self.add_module(f"act{i + 1}", nn.ReLU())


# timm's SHViT keeps the five subsample modules in one flat Sequential.
_TIMM_DOWNSAMPLE = {"0": "res1.0", "1": "res1.1", "2": "patchmerge", "3": "res2.0", "4": "res2.1"}
_TIMM_DOWNSAMPLE_INV = {v: k for k, v in _TIMM_DOWNSAMPLE.items()}


def _timm_to_leanvit(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """timm ``shvit.py`` layout -> leanvit."""

    def fn(k: str) -> str:
        k = re.sub(r"^(stages\.\d\.downsample)\.(\d)\.", lambda m: f"{m[1]}.{_TIMM_DOWNSAMPLE[m[2]]}.", k)
        return short_conv_names_to_leanvit(k)

    return rename_keys(sd, fn)


def _leanvit_to_timm(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """leanvit -> timm ``shvit.py`` layout."""

    def fn(k: str) -> str:
        k = re.sub(r"^(stages\.\d\.downsample)\.(res1\.[01]|patchmerge|res2\.[01])\.",
                   lambda m: f"{m[1]}.{_TIMM_DOWNSAMPLE_INV[m[2]]}.", k)
        return short_conv_names_from_leanvit(k)

    return rename_keys(sd, fn)


def _is_timm(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("stages.") for k in sd) and any(k.endswith(".c.weight") for k in sd)


class SHViT(LeanViTModel):
    """SHViT backbone + BN-Linear head. Runs at any input size (no position or bias tables)."""

    family = "shvit"
    prefers_channels_last = True
    checkpoint_layouts = (
        Layout("official", is_conv_bn_official, conv_bn_official_to_leanvit, conv_bn_leanvit_to_official),
        Layout("timm", _is_timm, _timm_to_leanvit, _leanvit_to_timm),
    )

    def __init__(
        self,
        embed_dim: tuple[int, int, int] = (128, 224, 320),
        depth: tuple[int, int, int] = (2, 4, 5),
        partial_dim: tuple[int, int, int] = (32, 48, 68),
        qk_dim: int = 16,
        block_types: tuple[str, str, str] = ("i", "s", "s"),
        num_classes: int = 1000,
        in_chans: int = 3,
        distillation: bool = False,
        drop_rate: float = 0.0,
        img_size: int | tuple[int, int] | None = None,
        global_pool: str = "avg",
        stem_stride: int = 16,
    ) -> None:
        super().__init__()
        if not (len(embed_dim) == len(depth) == len(partial_dim) == len(block_types)):
            raise InvalidValueError("embed_dim, depth, partial_dim and block_types need one entry per stage")
        self._build_conv_bn_backbone(in_chans, embed_dim, lambda i, dim: nn.Sequential(*[
            SHViTBlock(dim, qk_dim, partial_dim[i], block_types[i] == "s") for _ in range(depth[i])
        ]))
        if stem_stride != 16:  # macro-design switch (SHViT Fig. 2): log2(stride) stride-2 convs, widths up to d0
            layers = {4: 2, 8: 3, 32: 5}.get(stem_stride)
            if layers is None:
                raise InvalidValueError(f"stem_stride must be 4, 8, 16 or 32, got {stem_stride}")
            d0 = embed_dim[0]
            self.patch_embed = StridedConvStem(in_chans, tuple(d0 // 2 ** (layers - 1 - i) for i in range(layers)))
            for i, info in enumerate(self.feature_info):
                info["reduction"] = stem_stride * 2 ** i
        self._init_heads(embed_dim[-1], num_classes, distillation, drop_rate, global_pool)

    def _make_head(self, in_features: int, num_classes: int) -> nn.Module:
        return NormLinear(in_features, num_classes, drop=self.drop_rate) if num_classes > 0 else nn.Identity()


_PAPER = "SHViT, arXiv 2401.16456 (CVPR 2024)"
_RELEASE = "https://github.com/ysj9909/SHViT/releases/download/v1.0"


@dataclass(frozen=True)
class SHViTArch:
    """What defines an SHViT variant: widths, depths and attention slice widths per stage."""

    embed_dim: tuple[int, int, int]
    depth: tuple[int, int, int]
    partial_dim: tuple[int, int, int]
    qk_dim: int = 16
    block_types: tuple[str, str, str] = ("i", "s", "s")


def _variant(name: str, arch: SHViTArch, img_size: int, top1: float, params: int, params_fused: int,
             macs_m: float, macs: int) -> ModelConfig:
    return ModelConfig(
        name=name, arch=arch, img_size=img_size, top1=top1, paper=_PAPER, params=params,
        params_fused=params_fused, macs_m=macs_m, macs=macs, first_conv="patch_embed.conv1.conv",
        classifier="head.linear", output_stride=64, license="mit", paper_ids="arXiv:2401.16456",
        origin_url="https://github.com/ysj9909/SHViT",
        weights=(official_and_timm(name, "in1k", f"{_RELEASE}/{name}.pth", "mit", top1, img_size),),
    )


shvit_s1 = register_variant(SHViT, _variant(
    "shvit_s1", SHViTArch((128, 224, 320), (2, 4, 5), (32, 48, 68)),
    img_size=224, top1=72.8, params=6_330_808, params_fused=6_308_660, macs_m=241, macs=241_320_768))
shvit_s2 = register_variant(SHViT, _variant(
    "shvit_s2", SHViTArch((128, 308, 448), (2, 4, 5), (32, 66, 96)),
    img_size=224, top1=75.2, params=11_483_072, params_fused=11_453_508, macs_m=366, macs=365_394_896))
shvit_s3 = register_variant(SHViT, _variant(
    "shvit_s3", SHViTArch((192, 352, 448), (3, 5, 5), (48, 75, 96)),
    img_size=224, top1=77.4, params=14_245_273, params_fused=14_210_010, macs_m=601, macs=600_570_164))
shvit_s4 = register_variant(SHViT, _variant(
    "shvit_s4", SHViTArch((224, 336, 448), (4, 7, 6), (48, 72, 96)),
    img_size=256, top1=79.4, params=16_588_484, params_fused=16_546_248, macs_m=986, macs=986_216_960))
