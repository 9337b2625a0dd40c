"""EfficientViT-M (MSRA): memory-efficient ViT with cascaded group attention (Liu et al., CVPR 2023).

Not MIT Han Lab's EfficientViT. Only the cascaded group attention, its local windows and the
sandwich block live here; stem, subsample, FFN and heads are the shared ``leanvit.layers``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InvalidValueError
from ..layers import ConvFFN, ConvNorm, NormLinear, Residual, WindowedAttention, depthwise_residual
from ._base import LeanViTModel
from ._dense import DenseSettings
from ._layouts import (Layout, StateDict, conv_bn_leanvit_to_official, conv_bn_official_to_leanvit, identity_layout,
                       is_conv_bn_official)
from ._pretrained import official_and_timm
from ._registry import ModelConfig
from .factory import register_variant
from .efficientvit_m_deploy import cascaded_attention_form, local_window_form

__all__ = [
    "EfficientViTM", "EfficientViTMArch", "CascadedGroupAttention", "LocalWindowAttention", "resize_attention_biases",
    "efficientvit_m0", "efficientvit_m1", "efficientvit_m2", "efficientvit_m3", "efficientvit_m4", "efficientvit_m5",
]


def _bias_index(window: int) -> torch.Tensor:
    """(N, N) index into the (|dy|, |dx|) offset table of a window x window grid, N = window^2."""
    points = list(itertools.product(range(window), range(window)))
    idx = [abs(a[0] - b[0]) * window + abs(a[1] - b[1]) for a in points for b in points]
    return torch.tensor(idx, dtype=torch.long).view(len(points), len(points))


def resize_attention_biases(biases: torch.Tensor, window: int) -> torch.Tensor:
    """Bicubically resize an (heads, w*w) offset table to (heads, window*window)."""
    heads, n = biases.shape
    old = int(round(n ** 0.5))
    if old * old != n:
        raise InvalidValueError(f"attention bias table with {n} entries is not a square window")
    if old == window:
        return biases
    grid = biases.reshape(1, heads, old, old).float()
    out = F.interpolate(grid, size=(window, window), mode="bicubic", align_corners=False)
    return out.reshape(heads, window * window).to(biases.dtype)


class CascadedGroupAttention(nn.Module):
    """Head j attends on (channel split j + output of head j-1); per-head depthwise conv on q;
    LeViT-style (|dy|, |dx|) attention bias within the window.

    The gathered (heads, N, N) bias is cached in eval mode, keyed by device, dtype and the
    parameter's version counter, and dropped on ``train()``, ``.to()`` and ``load_state_dict``:
    no stale or wrong-device bias (the official code gets both wrong).
    """

    def __init__(self, dim: int, key_dim: int, num_heads: int, window: int, kernels: tuple[int, ...],
                 v_ratio: float = 1.0, cascade: bool = True, mixer: str = "cga") -> None:
        super().__init__()
        # Design-space switches (EfficientViT Fig. 7 / Tab. 6 studies; the defaults are the paper's model):
        # v_ratio scales each head's value width against its input split, cascade=False feeds every head its
        # own split only, mixer="mhsa" feeds every head all channels (plain multi-head attention, no cascade).
        if mixer not in ("cga", "mhsa"):
            raise InvalidValueError(f"mixer must be 'cga' or 'mhsa', got {mixer!r}")
        split = dim // num_heads
        val_dim = split if v_ratio == 1.0 else max(1, round(v_ratio * split))
        if cascade and mixer == "cga" and val_dim != split:
            raise InvalidValueError(f"v_ratio={v_ratio} gives {val_dim}-channel head outputs that cannot be added to the "
                                    f"next head's {split}-channel split: use cascade=False")
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = val_dim
        # Per-head widths: all equal here; leanvit.analysis.taylor.prune_channels narrows heads one by one (the
        # scale stays key_dim ** -0.5).
        self.key_dims = [key_dim] * num_heads
        self.val_dims = [val_dim] * num_heads
        self.cascade = cascade and mixer == "cga"
        self.full_channel = mixer == "mhsa"
        self.scale = key_dim ** -0.5
        self.window = window
        self.qkvs = nn.ModuleList(
            ConvNorm(dim if self.full_channel else split, key_dim * 2 + self.val_dim) for _ in range(num_heads)
        )
        self.dws = nn.ModuleList(
            ConvNorm(key_dim, key_dim, kernels[i], 1, kernels[i] // 2, groups=key_dim) for i in range(num_heads)
        )
        self.proj = nn.Sequential(nn.ReLU(), ConvNorm(self.val_dim * num_heads, dim, bn_weight_init=0.0))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("attention_bias_idxs", _bias_index(window), persistent=False)
        self._bias_cache: dict[tuple, torch.Tensor] = {}

    def set_window(self, window: int) -> None:
        """Change the window size, resizing the bias table (bicubic) and its index."""
        if window == self.window:
            return
        with torch.no_grad():
            resized = resize_attention_biases(self.attention_biases.data, window)
        self.attention_biases = nn.Parameter(resized, requires_grad=self.attention_biases.requires_grad)
        self.attention_bias_idxs = _bias_index(window).to(self.attention_biases.device)
        self.window = window
        self._bias_cache = {}

    def train(self, mode: bool = True) -> "CascadedGroupAttention":
        self._bias_cache = {}
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._bias_cache = {}
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self._bias_cache = {}
        super()._load_from_state_dict(*args, **kwargs)

    def attention_bias(self) -> torch.Tensor:
        """(heads, N, N) additive attention bias for one window."""
        if self.training or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return self.attention_biases[:, self.attention_bias_idxs]
        p = self.attention_biases
        if p.is_inference():  # inference tensors have no version counter: cannot tell if stale, so don't cache
            return p[:, self.attention_bias_idxs]
        key = (p.device, p.dtype, p._version)
        bias = self._bias_cache.get(key)
        if bias is None:
            self._bias_cache = {key: p[:, self.attention_bias_idxs].detach()}
            bias = self._bias_cache[key]
        return bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        bias = self.attention_bias()
        splits = x.chunk(self.num_heads, dim=1)
        outs = []
        feat = splits[0]
        for i, (qkv, dw) in enumerate(zip(self.qkvs, self.dws)):
            if self.full_channel:
                feat = x
            elif i > 0:
                feat = feat + splits[i] if self.cascade else splits[i]
            q, k, v = qkv(feat).split([self.key_dims[i], self.key_dims[i], self.val_dims[i]], dim=1)
            q = dw(q)
            attn = (q.flatten(2).transpose(1, 2) * self.scale) @ k.flatten(2) + bias[i]
            feat = (v.flatten(2) @ attn.softmax(dim=-1).transpose(1, 2)).view(B, self.val_dims[i], H, W)
            outs.append(feat)
        return self.proj(torch.cat(outs, dim=1))

    def deploy_form(self, target: str) -> nn.Module:
        """Hook of ``leanvit.fuse(target=...)``, called after BN folding: the module to run on ``target``
        (:func:`~leanvit.models.efficientvit_m_deploy.cascaded_attention_form`)."""
        return cascaded_attention_form(self, target)


class LocalWindowAttention(WindowedAttention):
    """Cascaded group attention inside non-overlapping windows, zero-padding bottom/right to a
    window multiple (also when the map is smaller than the window, as timm does): the window logic is
    :class:`~leanvit.layers.WindowedAttention`'s."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, window: int, kernels: tuple[int, ...],
                 **attn_options: object) -> None:
        super().__init__()
        self.attn = CascadedGroupAttention(dim, key_dim, num_heads, window, kernels, **attn_options)  # type: ignore[arg-type]

    def deploy_form(self, target: str) -> nn.Module:
        """Hook of ``leanvit.fuse(target=...)``: OpenVINO and the mobile delegates get sliced windows
        (:func:`~leanvit.models.efficientvit_m_deploy.local_window_form`)."""
        return local_window_form(self, target)


class EfficientViTBlock(nn.Module):
    """Sandwich: DW -> FFN -> cascaded group attention -> DW -> FFN, each residual."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, window: int, kernels: tuple[int, ...],
                 ffn_ratio: int = 2, **attn_options: object) -> None:
        super().__init__()
        self.dw0 = depthwise_residual(dim, bn_weight_init=0.0)
        self.ffn0 = Residual(ConvFFN(dim, dim * ffn_ratio))
        self.mixer = Residual(LocalWindowAttention(dim, key_dim, num_heads, window, kernels, **attn_options))
        self.dw1 = depthwise_residual(dim, bn_weight_init=0.0)
        self.ffn1 = Residual(ConvFFN(dim, dim * ffn_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn1(self.dw1(self.mixer(self.ffn0(self.dw0(x)))))


def stage_resolutions(img_size: int | tuple[int, int], num_stages: int = 3) -> list[int]:
    """Feature-map side per stage for an input (min side): 224 -> [14, 7, 4]."""
    side = min(img_size) if isinstance(img_size, (tuple, list)) else int(img_size)
    res = [max(1, side // 16)]
    for _ in range(num_stages - 1):
        res.append((res[-1] - 1) // 2 + 1)
    return res


def _leanvit_to_official(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """leanvit -> official layout, adding the persistent ``attention_bias_idxs`` the official code saves."""
    out = conv_bn_leanvit_to_official(sd)
    for k, v in list(out.items()):
        if k.endswith("attention_biases"):
            window = int(round(v.shape[1] ** 0.5))
            out[k[: -len("attention_biases")] + "attention_bias_idxs"] = _bias_index(window)
    return out


def adapt_attention_biases(sd: StateDict, model: nn.Module) -> StateDict:
    """Resize attention-bias tables trained at another resolution (bicubic, as the official dense code
    and timm do)."""
    expected = model.state_dict()
    for k, v in sd.items():
        if k.endswith("attention_biases") and k in expected and v.shape != expected[k].shape:
            if v.shape[0] == expected[k].shape[0]:
                sd[k] = resize_attention_biases(v, int(round(expected[k].shape[1] ** 0.5)))
    return sd


class EfficientViTM(LeanViTModel):
    """EfficientViT-M backbone + BN-Linear head.

    ``img_size`` only sets each stage's window (``min(window_size, feature side)``, e.g. 7/7/4 at 224)
    and thus the bias-table sizes; the model then runs at any input size by padding to windows.
    """

    family = "efficientvit_m"
    prefers_channels_last = True
    checkpoint_layouts = (
        Layout("official", is_conv_bn_official, conv_bn_official_to_leanvit, _leanvit_to_official),
        identity_layout("timm"),  # timm's EfficientViT-M layout is leanvit's own
    )
    checkpoint_adapters = (adapt_attention_biases,)
    # The official detectors and segmentors build the backbone for 448 px: the windows are clamped to the stage
    # sides at build time, and 448 gives 28/14/7 -> 7x7 windows in every stage (the ImageNet stage-3 bias table
    # is resized 16 -> 49 on load, as the official init_weights does).
    dense_settings = DenseSettings(model_kwargs=dict(img_size=448))

    def __init__(
        self,
        embed_dim: tuple[int, int, int] = (64, 128, 192),
        depth: tuple[int, int, int] = (1, 2, 3),
        num_heads: tuple[int, int, int] = (4, 4, 4),
        kernels: tuple[int, ...] = (5, 5, 5, 5),
        key_dim: int = 16,
        window_size: int = 7,
        img_size: int | tuple[int, int] = 224,
        num_classes: int = 1000,
        in_chans: int = 3,
        distillation: bool = False,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        ffn_ratio: int = 2,
        v_ratio: float = 1.0,
        cascade: bool = True,
        mixer: str = "cga",
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.img_size = img_size
        res = stage_resolutions(img_size)
        # ffn_ratio / v_ratio / cascade / mixer: design-space switches (see CascadedGroupAttention); defaults = paper.
        self._build_conv_bn_backbone(in_chans, embed_dim, lambda i, dim: nn.Sequential(*[
            EfficientViTBlock(dim, key_dim, num_heads[i], min(window_size, res[i]), kernels, ffn_ratio,
                              v_ratio=v_ratio, cascade=cascade, mixer=mixer) for _ in range(depth[i])
        ]))
        self._init_heads(embed_dim[-1], num_classes, distillation, drop_rate, global_pool)

    def _make_head(self, in_features: int, num_classes: int) -> nn.Module:
        return NormLinear(in_features, num_classes, drop=self.drop_rate) if num_classes > 0 else nn.Identity()

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Re-clamp windows for a new native resolution, bicubically resizing the bias tables."""
        for stage, res in zip(self.stages, stage_resolutions(img_size)):
            for block in stage.blocks:
                block.mixer.m.attn.set_window(min(self.window_size, res))
        self.img_size = img_size


_PAPER = "EfficientViT (MSRA), arXiv 2305.07027 (CVPR 2023)"
_RELEASE = "https://github.com/xinyuliu-jeffrey/EfficientViT_Model_Zoo/releases/download/v1.0"
_K7 = (7, 5, 3, 3)
_K5 = (5, 5, 5, 5)


@dataclass(frozen=True)
class EfficientViTMArch:
    """What defines an EfficientViT-M variant: widths, depths, heads per stage and the per-head q kernels."""

    embed_dim: tuple[int, int, int]
    depth: tuple[int, int, int]
    num_heads: tuple[int, int, int]
    kernels: tuple[int, ...]
    key_dim: int = 16
    window_size: int = 7


def _variant(name: str, arch: EfficientViTMArch, top1: float, params: int, params_fused: int,
             macs_m: float, macs: int) -> ModelConfig:
    return ModelConfig(
        name=name, arch=arch, img_size=224, top1=top1, paper=_PAPER, params=params,
        params_fused=params_fused, macs_m=macs_m, macs=macs, first_conv="patch_embed.conv1.conv",
        classifier="head.linear", output_stride=64, license="mit", paper_ids="arXiv:2305.07027",
        origin_url="https://github.com/microsoft/Cream/tree/main/EfficientViT",
        weights=(official_and_timm(name, "r224_in1k", f"{_RELEASE}/{name}.pth", "mit", top1),),
    )


efficientvit_m0 = register_variant(EfficientViTM, _variant(
    "efficientvit_m0", EfficientViTMArch((64, 128, 192), (1, 2, 3), (4, 4, 4), _K5),
    top1=63.2, params=2_349_436, params_fused=2_334_916, macs_m=79, macs=79_193_600))
efficientvit_m1 = register_variant(EfficientViTM, _variant(
    "efficientvit_m1", EfficientViTMArch((128, 144, 192), (1, 2, 3), (2, 3, 3), _K7),
    top1=68.4, params=2_980_560, params_fused=2_964_256, macs_m=167, macs=167_051_840))
efficientvit_m2 = register_variant(EfficientViTM, _variant(
    "efficientvit_m2", EfficientViTMArch((128, 192, 224), (1, 2, 3), (4, 3, 2), _K7),
    top1=70.8, params=4_187_554, params_fused=4_168_338, macs_m=201, macs=201_035_712))
efficientvit_m3 = register_variant(EfficientViTM, _variant(
    "efficientvit_m3", EfficientViTMArch((128, 240, 320), (1, 2, 3), (4, 3, 4), _K5),
    top1=73.4, params=6_900_722, params_fused=6_875_890, macs_m=263, macs=262_662_208))
efficientvit_m4 = register_variant(EfficientViTM, _variant(
    "efficientvit_m4", EfficientViTMArch((128, 256, 384), (1, 2, 3), (4, 4, 4), _K7),
    top1=74.3, params=8_804_228, params_fused=8_776_340, macs_m=299, macs=299_308_544))
efficientvit_m5 = register_variant(EfficientViTM, _variant(
    "efficientvit_m5", EfficientViTMArch((192, 288, 384), (1, 3, 4), (3, 3, 4), _K7),
    top1=77.1, params=12_473_772, params_fused=12_436_260, macs_m=522, macs=521_583_104))
