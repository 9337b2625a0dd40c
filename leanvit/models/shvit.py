"""SHViT: Single-Head Vision Transformer with memory-efficient macro design (Yun & Ro, CVPR 2024).

Only what is specific to SHViT lives here: the single-head attention on a partial channel slice
(SHSA) and the block layout. Stem, subsample, FFN and heads are the shared ``leanvit.layers``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..layers import ConvFFN, ConvNorm, ConvStem, NormLinear, Residual, depthwise_residual
from ._base import LeanViTModel
from ._registry import ModelConfig, register_model

__all__ = ["SHViT", "SingleHeadAttention", "StridedConvStem"]


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
        self.pre_norm = nn.GroupNorm(1, pdim)
        self.qkv = ConvNorm(pdim, qk_dim * 2 + pdim)
        self.proj = nn.Sequential(nn.ReLU(), ConvNorm(dim, dim, bn_weight_init=0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        x1, x2 = x.split([self.pdim, C - self.pdim], dim=1)
        # Token-major view (B, N, C): free for channels-last maps (the deploy layout), one copy for NCHW.
        qkv = self.qkv(self.pre_norm(x1)).permute(0, 2, 3, 1).reshape(B, 1, H * W, -1)
        q, k, v = qkv.split([self.qk_dim, self.qk_dim, self.pdim], dim=3)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = out.view(B, H, W, self.pdim).permute(0, 3, 1, 2)
        return self.proj(torch.cat([out, x2], dim=1))


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


class SHViT(LeanViTModel):
    """SHViT backbone + BN-Linear head. Runs at any input size (no position or bias tables)."""

    prefers_channels_last = True

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
        stem_stride: int = 16,
    ) -> None:
        super().__init__()
        if not (len(embed_dim) == len(depth) == len(partial_dim) == len(block_types)):
            raise ValueError("embed_dim, depth, partial_dim and block_types need one entry per stage")
        self._build_conv_bn_backbone(in_chans, embed_dim, lambda i, dim: nn.Sequential(*[
            SHViTBlock(dim, qk_dim, partial_dim[i], block_types[i] == "s") for _ in range(depth[i])
        ]))
        if stem_stride != 16:  # macro-design switch (SHViT Fig. 2): log2(stride) stride-2 convs, widths up to d0
            layers = {4: 2, 8: 3, 32: 5}.get(stem_stride)
            if layers is None:
                raise ValueError(f"stem_stride must be 4, 8, 16 or 32, got {stem_stride}")
            d0 = embed_dim[0]
            self.patch_embed = StridedConvStem(in_chans, tuple(d0 // 2 ** (layers - 1 - i) for i in range(layers)))
            for i, info in enumerate(self.feature_info):
                info["reduction"] = stem_stride * 2 ** i
        self._init_heads(embed_dim[-1], num_classes, distillation, drop_rate)

    def _make_head(self, in_features: int, num_classes: int) -> nn.Module:
        return NormLinear(in_features, num_classes, drop=self.drop_rate) if num_classes > 0 else nn.Identity()


_PAPER = "SHViT, arXiv 2401.16456 (CVPR 2024)"
_SHVIT = {
    # name: (embed_dim, depth, partial_dim, img_size, top1, params, macs_m)
    "shvit_s1": ((128, 224, 320), (2, 4, 5), (32, 48, 68), 224, 72.8, 6_330_808, 241),
    "shvit_s2": ((128, 308, 448), (2, 4, 5), (32, 66, 96), 224, 75.2, 11_483_072, 366),
    "shvit_s3": ((192, 352, 448), (3, 5, 5), (48, 75, 96), 224, 77.4, 14_245_273, 601),
    "shvit_s4": ((224, 336, 448), (4, 7, 6), (48, 72, 96), 256, 79.4, 16_588_484, 986),
}


def _register(name: str) -> None:
    embed_dim, depth, pdim, res, top1, params, macs = _SHVIT[name]
    cfg = ModelConfig(
        name=name, family="shvit", img_size=res, top1=top1, paper=_PAPER, params=params, macs_m=macs,
        timm_name=name, first_conv="patch_embed.conv1.conv", classifier="head.linear",
    )

    @register_model(cfg)
    def build(**kwargs: object) -> SHViT:
        return SHViT(embed_dim=embed_dim, depth=depth, partial_dim=pdim, **kwargs)  # type: ignore[arg-type]

    build.__name__ = name


for _name in _SHVIT:
    _register(_name)
