"""SepViT: Separable Vision Transformer (Li et al., arXiv 2203.15380 v4).

Depthwise separable self-attention (DSSA): attention inside each window over its pixels plus one
window token (DWA), then attention among windows whose queries/keys come from the window tokens and
whose values are the windows' whole feature maps (PWA). Grouped self-attention (GSA) is the same block
with 14x14 windows, alternating with 7x7 blocks in stages 2 and 3.

Layout: the stages keep tokens as (B, H, W, C) (channels last: every Linear/LayerNorm acts on the last
dimension without copies); ``forward_features`` and the intermediates are NCHW, as for every family.

Which blocks have pointwise attention (window-token LayerNorm, ``pw_qk``, tokens) does not depend on
the input size: exactly those that see more than one window at ``pointwise_ref_size`` (224, the size the
official classification code hard-codes), so every resolution has the same parameters and loads the
same checkpoints. At run time a block that sees a single window, and a block without pointwise
attention at any size, is plain multi-head attention over the whole map (no token).
Window-token modes (``window_token``):

- ``per_window``: one learnable, zero-initialised token per window position and block (the paper's LWT,
  the official classification model), for the window grid at ``img_size``; runs only at ``img_size``.
- ``shared``: one learnable token per block, used by every window. Any input size.
- ``zero``: fixed zero tokens (the official dense backbones). Any input size.

Sizes that are not window multiples are zero-padded bottom/right *before* the block's first LayerNorm
and cropped back after pointwise attention, exactly as the official dense code does (padded pixels
therefore enter the attention as LayerNorm(0) = norm1.bias; there is no attention mask).

``dense_form=True`` is the official dense backbone's network (liwei109/SepViT ``detection/sepvit.py`` and
``segmentation/sepvit.py``, ``SepViT.forward`` and ``SepViTBlock.forward``), which differs from the
classification one in two ways: every block has pointwise attention, and keeps its (zero) window token and
pointwise step also where its map fits one window (the step then attends over that one window: the map is
added to itself); and the per-level LayerNorms (``feature_norms``, the official ``norm_list``) sit on the main
path, so each stage reads the previous stage's normalised map.
"""
from __future__ import annotations

import copy
import logging
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from timm.layers import DropPath, Mlp, trunc_normal_

from ..errors import InvalidValueError
from ..layers import explicit_attention
from ._base import LeanViTModel
from ._dense import DenseSettings
from ._layouts import Layout
from ._registry import ModelConfig
from .factory import register_variant
from .fusion import MOBILE_TARGETS

__all__ = [
    "SepViT", "SepViTBlock", "SeparableAttention", "WINDOW_TOKEN_MODES", "default_window_sizes",
    "sepvit_official_to_leanvit", "sepvit_leanvit_to_official", "looks_like_official_sepvit", "adapt_window_tokens",
]

_log = logging.getLogger(__name__)

WINDOW_TOKEN_MODES = ("per_window", "shared", "zero")
_MODE_ALIASES = {"per_window_learnable": "per_window", "shared_learnable": "shared"}
_BLOCK_EPS = 1e-6  # official: partial(nn.LayerNorm, eps=1e-6) for block and final norms


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def stage_sizes(img_size: int | tuple[int, int], num_stages: int = 4) -> list[tuple[int, int]]:
    """Feature-map (H, W) per stage: conv 7x7 s4 p3 gives ceil(H/4), each 3x3 s2 p1 conv ceil(H/2)."""
    h, w = _pair(img_size)
    sizes = [(-(-h // 4), -(-w // 4))]
    for _ in range(num_stages - 1):
        sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
    return sizes


def default_window_sizes(depths: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """The registered variants' windows: stage 1 all 7; stages 2-3 alternate 7 (DSSA) and 14 (GSA); stage 4 all 7."""
    return tuple(
        tuple(14 if (1 <= s <= 2 and j % 2 == 1) else 7 for j in range(d)) for s, d in enumerate(depths)
    )


class PatchEmbed(nn.Module):
    """Overlapping patch embedding / merging: conv then LayerNorm (default eps, as official), then dropout.

    Takes NCHW images (stem) or (B, H, W, C) token maps (between stages); returns (B, H, W, C).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, tokens_in: bool, drop: float = 0.0) -> None:
        super().__init__()
        self.tokens_in = tokens_in
        self.proj = nn.Conv2d(in_chs, out_chs, kernel, stride, kernel // 2)
        self.norm = nn.LayerNorm(out_chs)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens_in:
            x = x.permute(0, 3, 1, 2)  # a channels-last view: the conv runs on it without a copy
        return self.drop(self.norm(self.proj(x).permute(0, 2, 3, 1)))


class PosConv(nn.Module):
    """Conditional position encoding (PEG): x + depthwise 3x3 conv(x), on (B, H, W, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class SeparableAttention(nn.Module):
    """DWA (+ PWA when ``pointwise``) on windows that already carry their normalised window token.

    Input ``seq`` is (B, N, L, C): N windows of L tokens (token first when ``grid`` is given).
    Returns the projected (B, H, W, C) map (``grid`` given: padded windows folded back and cropped),
    or (B, N, L, C) for a single window without token (``grid`` None).

    ``qk_dims`` are the depthwise attention's Q/K widths per head (``qkv`` rows: all heads' q, all heads' k,
    then the values): ``head_dim`` each, narrower after ``leanvit.analysis.taylor.prune_channels``, which
    keeps the scale ``head_dim ** -0.5`` (as EfficientViT-M's ``key_dims`` and SHViT's ``qk_dim``).
    """

    def __init__(self, dim: int, num_heads: int, pointwise: bool, inner_residuals: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise InvalidValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qk_dims = [self.head_dim] * num_heads
        self.pointwise = pointwise
        self.inner_residuals = inner_residuals
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3)
        if pointwise:
            self.token_norm = nn.LayerNorm(dim)  # default eps, as the official win_tokens_norm
            self.token_act = nn.GELU()
            self.pw_qk = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, seq: torch.Tensor, grid: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
        B, N, L, C = seq.shape
        h, d = self.num_heads, self.head_dim
        drop = self.attn_drop if self.training else 0.0
        out = self._depthwise_attention(self.qkv(seq), drop)
        out = out.transpose(1, 2).reshape(B, N, L, C)
        if self.inner_residuals:
            out = out + seq  # official inner residual #1: adds the normalised input, token included
        if grid is None:
            return self.proj_drop(self.proj(out))
        nh, nw, ws, H, W = grid
        # Pointwise attention: window tokens -> LN -> GELU -> q, k; values = each window's whole map per head.
        qk = self.pw_qk(self.token_act(self.token_norm(out[:, :, :1])))  # a slice, not a select: (B, N, 1, C)
        pq, pk = (qk[..., i * C:(i + 1) * C].reshape(B, N, h, d).transpose(1, 2) for i in range(2))  # (B, h, N, d)
        feat = out[:, :, 1:].reshape(B, N, ws * ws, h, d).permute(0, 3, 1, 2, 4).reshape(B, h, N, ws * ws * d)
        mixed = self._attend(pq, pk, feat, drop)
        if self.inner_residuals:
            mixed = mixed + feat  # official inner residual #2
        x = self._fold_windows(mixed, nh, nw, ws)
        if nh * ws != H or nw * ws != W:
            x = x[:, :H, :W]
        return self.proj_drop(self.proj(x))

    def _depthwise_attention(self, qkv: torch.Tensor, drop: float) -> torch.Tensor:
        """(B, N, L, q + k + v) projections -> (B*N, heads, L, head_dim) attention outputs; windows are batch
        entries. q, k, v are cut by slicing (unbind and split export as split + squeeze copies that mobile
        delegates leave out)."""
        B, N, L, _ = qkv.shape
        h, d, C = self.num_heads, self.head_dim, self.num_heads * self.head_dim
        if qkv.shape[-1] == 3 * C:  # every head at its full width: one attention over all heads
            q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B * N, L, h, d).transpose(1, 2) for i in range(3))
            return self._attend(q, k, v, drop)
        # Heads of their own Q/K widths: one attention per head, each with the unpruned scale.
        width = sum(self.qk_dims)
        v = qkv[..., 2 * width:].reshape(B * N, L, h, d).transpose(1, 2)
        heads, start = [], 0
        for i, n in enumerate(self.qk_dims):
            q = qkv[..., start:start + n].reshape(B * N, 1, L, n)
            k = qkv[..., width + start:width + start + n].reshape(B * N, 1, L, n)
            heads.append(self._attend(q, k, v[:, i:i + 1], drop, scale=d ** -0.5))
            start += n
        return torch.cat(heads, dim=1)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, drop: float,
                scale: float | None = None) -> torch.Tensor:
        """Scaled dot-product attention over the last two dims of (..., L, d) tensors (``scale`` None: d ** -0.5)."""
        return F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=scale)

    def _fold_windows(self, mixed: torch.Tensor, nh: int, nw: int, ws: int) -> torch.Tensor:
        """(B, heads, windows, ws*ws*d) pointwise outputs -> the raster (B, nh*ws, nw*ws, C) map, in one copy."""
        B, h, d = mixed.shape[0], self.num_heads, self.head_dim
        return mixed.view(B, h, nh, nw, ws, ws, d).permute(0, 2, 4, 3, 5, 1, 6).reshape(B, nh * ws, nw * ws, h * d)

    def deploy_form(self, target: str) -> nn.Module:
        """Hook of ``leanvit.fuse(target=...)``: mobile delegates (ExecuTorch, Core ML) get
        :class:`_MobileSeparableAttention`."""
        return _MobileSeparableAttention(self) if target in MOBILE_TARGETS else self


class _MobileSeparableAttention(SeparableAttention):
    """Deploy form of :class:`SeparableAttention` for ExecuTorch / Core ML (``leanvit.layers.mobile``): ``bmm``
    attention (:func:`~leanvit.layers.explicit_attention`) on contiguous 3-D tensors, no ``_safe_softmax``
    masks, with the 1/sqrt(head_dim) scale folded into the q rows of ``qkv`` and ``pw_qk``, and the windows
    folded back with permutes of at most 6 dims (XNNPACK's limit). Same values up to fp32 rounding; inference
    only."""

    def __init__(self, attn: SeparableAttention) -> None:
        nn.Module.__init__(self)
        for name in ("num_heads", "head_dim", "qk_dims", "pointwise", "inner_residuals", "attn_drop"):
            setattr(self, name, copy.copy(getattr(attn, name)))
        for name, child in attn.named_children():
            self.add_module(name, copy.deepcopy(child))
        scale = self.head_dim ** -0.5
        with torch.no_grad():
            for lin, q_rows in ((self.qkv, sum(self.qk_dims)), (getattr(self, "pw_qk", None), self.proj.in_features)):
                if lin is not None:
                    lin.weight[:q_rows] *= scale
                    lin.bias[:q_rows] *= scale
        self.eval()

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, drop: float,
                scale: float | None = None) -> torch.Tensor:
        L, d = q.shape[-2:]  # the scale is folded into the q rows
        out = explicit_attention(q.reshape(-1, L, d), k.reshape(-1, k.shape[-2], d).transpose(1, 2),
                                 v.reshape(-1, v.shape[-2], v.shape[-1]))
        return out.view(*q.shape[:-1], v.shape[-1])

    def _fold_windows(self, mixed: torch.Tensor, nh: int, nw: int, ws: int) -> torch.Tensor:
        B, h, d = mixed.shape[0], self.num_heads, self.head_dim
        C = h * d
        x = mixed.view(B, h, nh * nw, ws * ws, d).permute(0, 2, 3, 1, 4).reshape(B, nh, nw, ws, ws, C)
        return x.permute(0, 1, 3, 2, 4, 5).reshape(B, nh * ws, nw * ws, C)

    def deploy_form(self, target: str) -> nn.Module:
        return self


class SepViTBlock(nn.Module):
    """Pre-norm transformer block with separable attention and an MLP (ratio 4), on (B, H, W, C)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        pointwise: bool,
        token_grid: tuple[int, int] | None = None,
        window_token: str = "per_window",
        inner_residuals: bool = True,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        one_window_pointwise: bool = False,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.window_token_mode = window_token
        self.pointwise = pointwise
        # official dense code: a map that fits one window still gets the token and the pointwise step
        self.one_window_pointwise = one_window_pointwise
        # per_window: the (rows, cols) window grid at img_size; None when the block sees one window there.
        self.token_grid = token_grid if pointwise and window_token == "per_window" else None
        self.norm1 = nn.LayerNorm(dim, eps=_BLOCK_EPS)
        self.attn = SeparableAttention(dim, num_heads, pointwise, inner_residuals, attn_drop, drop)
        n = self.token_grid[0] * self.token_grid[1] if self.token_grid else int(pointwise and window_token == "shared")
        if n:
            self.window_token = nn.Parameter(torch.zeros(1, n, 1, dim))  # official shape (1, windows, 1, C)
        else:
            self.register_parameter("window_token", None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=_BLOCK_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def _normed_tokens(self) -> torch.Tensor:
        """The window tokens after norm1 (the official code concatenates them before norm1): (1, N, 1, C), one
        per window, or (1, 1, 1, C) shared by every window."""
        if self.window_token is None:
            # LayerNorm of a zero vector is exactly its bias: no need to normalise zeros.
            return self.norm1.bias.view(1, 1, 1, -1)
        return self.norm1(self.window_token)

    def _with_tokens(self, win: torch.Tensor) -> torch.Tensor:
        """(B, N, L, C) normalised windows -> (B, N, 1 + L, C), each window's normalised token first."""
        B, N, _, C = win.shape
        return torch.cat([self._normed_tokens().expand(B, N, 1, C), win], dim=2)

    def _mixer(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        ws = self.window_size
        # (H + ws - 1) // ws, not -(-H // ws): traced for ONNX, integer division of a negative size truncates
        # toward zero, which made the window count one short and the padding negative at every padded size
        nh, nw = (H + ws - 1) // ws, (W + ws - 1) // ws
        if not self.pointwise or (nh * nw == 1 and not self.one_window_pointwise):
            # One window (or a block without pointwise attention): plain MHSA over the map, no token.
            return self.attn(self.norm1(x).view(B, 1, H * W, C)).view(B, H, W, C)
        if self.window_token_mode == "per_window" and (nh, nw) != self.token_grid:
            grid = f"a {self.token_grid[0]}x{self.token_grid[1]} grid" if self.token_grid else "absent (one window)"
            raise InvalidValueError(
                f"this block's per-window tokens are {grid} but the {H}x{W} map gives {nh}x{nw} windows of "
                f"{ws}; run the model at its img_size or use window_token='shared' or 'zero'"
            )
        pad_b, pad_r = nh * ws - H, nw * ws - W
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))  # zeros before norm1, as the official dense code
        win = self.norm1(x).view(B, nh, ws, nw, ws, C).transpose(2, 3).reshape(B, nh * nw, ws * ws, C)
        return self.attn(self._with_tokens(win), (nh, nw, ws, H, W))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self._mixer(x))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def deploy_form(self, target: str) -> nn.Module:
        """Hook of ``leanvit.fuse(target=...)``: mobile delegates (ExecuTorch, Core ML) get
        :class:`_MobileSepViTBlock` where the block has window tokens."""
        return _MobileSepViTBlock.of(self) if target in MOBILE_TARGETS and self.pointwise else self


class _MobileSepViTBlock(SepViTBlock):
    """Deploy form of a :class:`SepViTBlock` with pointwise attention for ExecuTorch / Core ML: the window
    tokens reach every batch entry and window without ``expand``, which exports as ``expand_copy``, an op
    XNNPACK has no lowering for (ExecuTorch 1.5.1: sepvit_lite at 224 px kept 6 outside the delegate, each a
    no-op batch-1 expand of a per-window token). Tokens that already have the windows' shape (per-window
    tokens at batch 1, how mobile models are exported) are concatenated as they are; others (batch > 1,
    ``shared`` and ``zero`` tokens) are broadcast by adding them to ``0 * win[:, :, :1]`` (a broadcast ``add``,
    which XNNPACK lowers). Same values: ``t + 0 * x`` is ``t`` for finite ``x``, and a window holding a NaN
    (norm1 of an infinity is NaN) makes the block's whole output NaN in either form (its token attends to it,
    and every window attends to the tokens). Inference only."""

    @classmethod
    def of(cls, block: SepViTBlock) -> "_MobileSepViTBlock":
        """The same block (a copy) with this class's token handling; it holds no state of its own."""
        mobile = copy.deepcopy(block)
        mobile.__class__ = cls
        return mobile

    def _with_tokens(self, win: torch.Tensor) -> torch.Tensor:
        tokens = self._normed_tokens()
        if tokens.shape[:2] != win.shape[:2]:
            tokens = tokens + win[:, :, :1] * 0.0
        return torch.cat([tokens, win], dim=2)

    def deploy_form(self, target: str) -> nn.Module:
        return self


class SepViTStage(nn.Module):
    """downsample (patch merging) -> block 1 -> PEG -> blocks 2..L, with optional grad checkpointing."""

    def __init__(self, downsample: nn.Module, blocks: nn.Sequential, pos_block: nn.Module) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = blocks
        self.pos_block = pos_block
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        ckpt = self.grad_checkpointing and self.training and not torch.jit.is_scripting()
        for i, block in enumerate(self.blocks):
            if ckpt:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if i == 0:
                x = self.pos_block(x)
        return x


class SepViT(LeanViTModel):
    """SepViT backbone + LayerNorm / mean-pool / Linear head (optional DeiT distillation head).

    ``img_size`` only matters for ``window_token='per_window'``: it sets the token grids and is then the
    only accepted input size. Blocks that see more than one window at ``pointwise_ref_size`` have
    pointwise attention (official: 224; e.g. 448 gives every block of the registered variants one, as in
    the official dense backbones). ``inner_residuals`` toggles the official code's two residuals inside
    the attention (not in the paper's equations; on by default, as for the published numbers).
    ``feature_norms`` adds learnable
    per-level LayerNorms (the official dense ``norm_list``): they normalise the intermediates, and with
    ``dense_form`` also the main path (see the module docstring); without them intermediates use a
    parameter-free LayerNorm. ``dense_form`` (the official dense network) implies ``feature_norms`` and
    pointwise attention in every block.
    """

    family = "sepvit"
    # The official dense backbones (liwei109/SepViT detection/sepvit.py, segmentation/sepvit.py): zero window
    # tokens, the dense network, and their hard-coded drop-path rates (T 0.2, S 0.3, B 0.5; sepvit_lite has no
    # dense code: 0.1 is leanvit's choice). What the dense form adds to a classifier (per-level norms; pointwise
    # attention in blocks that see one window at 224 but several at 448) starts fresh from an ImageNet
    # checkpoint; the classifier's final norm and head feed no dense output.
    dense_settings = DenseSettings(
        model_kwargs=dict(window_token="zero", dense_form=True, drop_path_rate=0.1),
        variant_kwargs={"sepvit_t": dict(drop_path_rate=0.2), "sepvit_s": dict(drop_path_rate=0.3),
                        "sepvit_b": dict(drop_path_rate=0.5)},
        fresh_parameters=r"^feature_norms\.|\.attn\.(pw_qk|token_norm)\.",
        unused_modules=("norm", "head"),
    )

    def __init__(
        self,
        embed_dims: tuple[int, ...] = (96, 192, 384, 768),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        depths: tuple[int, ...] = (1, 2, 6, 2),
        window_sizes: tuple[tuple[int, ...], ...] | None = None,
        mlp_ratio: float = 4.0,
        img_size: int | tuple[int, int] = 224,
        window_token: str = "per_window",
        inner_residuals: bool = True,
        pointwise_ref_size: int | tuple[int, int] = 224,
        feature_norms: bool = False,
        dense_form: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        distillation: bool = False,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        window_token = _MODE_ALIASES.get(window_token, window_token)
        if window_token not in WINDOW_TOKEN_MODES:
            raise InvalidValueError(f"window_token must be one of {', '.join(WINDOW_TOKEN_MODES)}; got {window_token!r}")
        if not (len(embed_dims) == len(num_heads) == len(depths)):
            raise InvalidValueError("embed_dims, num_heads and depths must have one entry per stage")
        window_sizes = window_sizes or default_window_sizes(tuple(depths))
        if [len(w) for w in window_sizes] != list(depths):
            raise InvalidValueError(f"window_sizes needs one window per block: depths {depths}, got {window_sizes}")
        self.in_chans = in_chans
        self.img_size = _pair(img_size)
        self.window_token = window_token
        self.fixed_input_size = window_token == "per_window"
        self.dense_form = dense_form
        feature_norms = feature_norms or dense_form
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0], 7, 4, tokens_in=False, drop=drop_rate)
        n_blocks = sum(depths)
        # Linear stochastic-depth rule (as torch.linspace, in Python so that meta-device builds work).
        dpr = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        stages, self.feature_info = [], []
        for s, (dim, heads, depth, sizes) in enumerate(zip(embed_dims, num_heads, depths, window_sizes)):
            H, W = stage_sizes(self.img_size, len(depths))[s]
            rH, rW = stage_sizes(pointwise_ref_size, len(depths))[s]
            blocks = []
            for j, ws in enumerate(sizes):
                grid = (-(-H // ws), -(-W // ws))
                blocks.append(SepViTBlock(
                    dim, heads, ws, pointwise=dense_form or -(-rH // ws) * -(-rW // ws) > 1,
                    token_grid=grid if grid[0] * grid[1] > 1 else None, window_token=window_token,
                    inner_residuals=inner_residuals, mlp_ratio=mlp_ratio, drop=drop_rate,
                    attn_drop=attn_drop_rate, drop_path=dpr[sum(depths[:s]) + j], one_window_pointwise=dense_form,
                ))
            down = nn.Identity() if s == 0 else PatchEmbed(
                embed_dims[s - 1], dim, 3, 2, tokens_in=True, drop=drop_rate)
            stages.append(SepViTStage(down, nn.Sequential(*blocks), PosConv(dim)))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** s, module=f"stages.{s}"))
        self.stages = nn.Sequential(*stages)
        self.feature_norms = nn.ModuleList(
            nn.LayerNorm(d, eps=_BLOCK_EPS) for d in embed_dims) if feature_norms else None
        self.norm = nn.LayerNorm(embed_dims[-1], eps=_BLOCK_EPS)
        self._init_heads(embed_dims[-1], num_classes, distillation, drop_rate, global_pool)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Official init: trunc-normal Linear, unit LayerNorm, He-style conv with fan_out / groups.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _make_head(self, in_features: int, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        head = nn.Linear(in_features, num_classes)
        trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
        return head

    def _is_no_decay(self, name: str) -> bool:
        return "window_token" in name or ".pos_block." in name

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm parameter groups; the PEG goes with the stage's first block."""
        groups = super().group_matcher(coarse)
        if not coarse:
            groups["blocks"].insert(2, (r"^stages\.(\d+)\.pos_block", (0,)))
        return groups

    def _check_input(self, x: torch.Tensor) -> None:
        if self.window_token == "per_window" and tuple(x.shape[-2:]) != self.img_size:
            h, w = self.img_size
            raise InvalidValueError(
                f"SepViT with window_token='per_window' only runs at its img_size {h}x{w} (one learnable token "
                f"per window position); got a {x.shape[-2]}x{x.shape[-1]} input. Resize the input, create the "
                f"model with img_size=({x.shape[-2]}, {x.shape[-1]}) (a checkpoint's tokens are then interpolated), "
                "or use window_token='shared' or 'zero', which run at any size"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> final LayerNorm'd feature map, NCHW (a channels-last view, no copy)."""
        self._check_input(x)
        x = self.patch_embed(x)
        for i, stage in enumerate(self.stages):
            x = self._after_stage(stage(x), i)
        return self.norm(x).permute(0, 3, 1, 2)

    def _after_stage(self, x: torch.Tensor, index: int) -> torch.Tensor:
        # official dense SepViT.forward: x = norm_list[i](x) on the main path, before the next patch embedding
        return self.feature_norms[index](x) if self.dense_form else x

    def _stage_out(self, x: torch.Tensor, index: int) -> torch.Tensor:
        # dense_form: already normalised on the main path (_after_stage)
        if not self.dense_form:
            norm = self.feature_norms[index] if self.feature_norms is not None else None
            x = norm(x) if norm is not None else F.layer_norm(x, x.shape[-1:], eps=_BLOCK_EPS)
        return x.permute(0, 3, 1, 2).contiguous()

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm-style stage outputs (NCHW, strides 4/8/16/32), each through its own LayerNorm as in the
        official dense backbone (always; ``norm`` is accepted for timm compatibility)."""
        self._check_input(x)
        out = super().forward_intermediates(x, indices, norm, stop_early, output_fmt, intermediates_only)
        if intermediates_only:
            return out
        x, intermediates = out
        if x.shape[-1] == self.num_features and len(self.stages) == len(self.feature_info):
            x = self.norm(x)
        return x.permute(0, 3, 1, 2), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop unneeded stages (and head); the final norm goes with the last stage."""
        take = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        if prune_norm or len(self.stages) < len(self.feature_info):
            self.norm = nn.Identity()
        return take


# ------------------------------------------------------------------------------------------ checkpoints
_OFFICIAL_BLOCK_RENAMES = (("attn.DSA_qkv.", "attn.qkv."), ("attn.PSA_qk.", "attn.pw_qk."),
                           ("attn.win_tokens_norm.", "attn.token_norm."))


def looks_like_official_sepvit(sd: Mapping[str, torch.Tensor]) -> bool:
    """True for a state dict in the official liwei109/SepViT key layout
    (``patch_embeds.*`` and ``blocks.{stage}.{j}.attn.DSA_qkv``)."""
    return any(k.startswith("patch_embeds.") for k in sd) and any(
        re.match(r"^blocks\.\d+\.\d+\.attn\.DSA_qkv\.weight$", k) for k in sd)


def _official_key_to_leanvit(k: str) -> str:
    m = re.match(r"^patch_embeds\.(\d+)\.(.*)$", k)
    if m:
        return f"patch_embed.{m[2]}" if m[1] == "0" else f"stages.{m[1]}.downsample.{m[2]}"
    m = re.match(r"^pos_block\.(\d+)\.proj\.0\.(.*)$", k)
    if m:
        return f"stages.{m[1]}.pos_block.proj.{m[2]}"
    m = re.match(r"^norm_list\.(\d+)\.(.*)$", k)  # the official dense backbone's extra_norm
    if m:
        return f"feature_norms.{m[1]}.{m[2]}"
    m = re.match(r"^blocks\.(\d+)\.(\d+)\.(.*)$", k)
    if m:
        rest = m[3]
        if rest == "win_tokens":
            rest = "window_token"
        for old, new in _OFFICIAL_BLOCK_RENAMES:
            if rest.startswith(old):
                rest = new + rest[len(old):]
        return f"stages.{m[1]}.blocks.{m[2]}.{rest}"
    return k  # norm.*, head.*, head_dist.* are the same; unknown keys pass through for strict loading to report


def _leanvit_key_to_official(k: str) -> str:
    m = re.match(r"^patch_embed\.(.*)$", k)
    if m:
        return f"patch_embeds.0.{m[1]}"
    m = re.match(r"^stages\.(\d+)\.downsample\.(.*)$", k)
    if m:
        return f"patch_embeds.{m[1]}.{m[2]}"
    m = re.match(r"^stages\.(\d+)\.pos_block\.proj\.(.*)$", k)
    if m:
        return f"pos_block.{m[1]}.proj.0.{m[2]}"
    m = re.match(r"^feature_norms\.(\d+)\.(.*)$", k)
    if m:
        return f"norm_list.{m[1]}.{m[2]}"
    m = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.*)$", k)
    if m:
        rest = m[3]
        if rest == "window_token":
            rest = "win_tokens"
        for old, new in _OFFICIAL_BLOCK_RENAMES:
            if rest.startswith(new):
                rest = old + rest[len(new):]
        return f"blocks.{m[1]}.{m[2]}.{rest}"
    return k


def sepvit_official_to_leanvit(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official SepViT state dict -> leanvit keys (tensors unchanged; the layouts match 1:1)."""
    return {_official_key_to_leanvit(k): v for k, v in sd.items()}


def sepvit_leanvit_to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """leanvit SepViT state dict -> official keys (inverse of :func:`sepvit_official_to_leanvit`)."""
    return {_leanvit_key_to_official(k): v for k, v in sd.items()}


def _grid_of(n: int, like: tuple[int, int]) -> tuple[int, int]:
    """A checkpoint token count -> its (rows, cols): square when possible (official 224 models), else the
    factor pair closest to the target grid's aspect ratio."""
    root = int(round(math.sqrt(n)))
    if root * root == n:
        return root, root
    pairs = [(a, n // a) for a in range(1, n + 1) if n % a == 0]
    return min(pairs, key=lambda p: abs(math.log(p[0] / p[1]) - math.log(like[0] / like[1])))


def adapt_window_tokens(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Fit a checkpoint's window tokens to ``model``'s window-token mode and grids (leanvit keys).

    - ``per_window`` model: a different token grid is resized bicubically (warns); a shared token is copied
      to every window and absent tokens (a ``zero`` checkpoint) become zeros, both exact (same function).
      Blocks that see a single window at the model's img_size have no tokens: theirs are dropped.
    - ``shared`` model: a per-window grid is averaged into one token (warns); absent tokens become zeros (exact).
    - ``zero`` model: tokens are dropped (warns when they were not all zero: the outputs change).
    """
    if not isinstance(model, SepViT):
        return sd
    changed: list[str] = []
    for s, stage in enumerate(model.stages):
        for j, block in enumerate(stage.blocks):
            if not block.pointwise:
                continue
            key = f"stages.{s}.blocks.{j}.window_token"
            tok = sd.get(key)
            if block.window_token is None:
                if tok is not None:
                    del sd[key]
                    if bool(tok.abs().max() > 0):
                        why = "window_token='zero'" if model.window_token == "zero" else "one window at img_size"
                        changed.append(f"{key}: learned tokens dropped ({why})")
                continue
            want = block.window_token.shape
            if tok is None:
                sd[key] = torch.zeros(want, dtype=block.window_token.dtype)
                _log.info("%s: absent in the checkpoint (zero tokens); initialised to zeros (same function)", key)
            elif tok.dim() != 4 or tok.shape[0] != 1 or tok.shape[2] != 1 or tok.shape[3] != want[3]:
                continue  # not a token tensor of this width: leave it for the shape check to report
            elif tok.shape[1] == want[1]:
                continue
            elif model.window_token == "shared":
                sd[key] = tok.mean(dim=1, keepdim=True)
                changed.append(f"{key}: {tok.shape[1]} per-window tokens averaged into one shared token")
            elif tok.shape[1] == 1:
                sd[key] = tok.expand(want).clone()
                _log.info("%s: shared token copied to all %d windows (same function)", key, want[1])
            else:
                old = _grid_of(tok.shape[1], block.token_grid)
                grid = tok[0, :, 0].T.reshape(1, -1, *old).float()
                new = F.interpolate(grid, size=block.token_grid, mode="bicubic", align_corners=False)
                sd[key] = new.reshape(want[3], -1).T.reshape(want).to(tok.dtype)
                changed.append(f"{key}: token grid {old[0]}x{old[1]} -> {block.token_grid[0]}x{block.token_grid[1]}")
    if changed:
        warnings.warn(
            f"SepViT window tokens adapted to window_token={model.window_token!r} at img_size "
            f"{model.img_size[0]}x{model.img_size[1]} ({len(changed)} blocks): " + "; ".join(changed[:4])
            + (" ..." if len(changed) > 4 else ""),
            stacklevel=2,
        )
    return sd


SepViT.checkpoint_layouts = (
    Layout("official", looks_like_official_sepvit, sepvit_official_to_leanvit, sepvit_leanvit_to_official),
)
SepViT.checkpoint_adapters = (adapt_window_tokens,)


# ------------------------------------------------------------------------------------------ registry
_PAPER = "SepViT, arXiv 2203.15380 (v4, 2023)"


@dataclass(frozen=True)
class SepViTArch:
    """What defines a SepViT variant: widths, heads and depths per stage (windows follow the depths)."""

    embed_dims: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]


def _variant(name: str, arch: SepViTArch, top1: float, params: int, macs_m: float, macs: int) -> ModelConfig:
    return ModelConfig(
        name=name, arch=arch, img_size=224, top1=top1, paper=_PAPER, params=params,
        params_fused=params, macs_m=macs_m, macs=macs, fixed_input_size=True, first_conv="patch_embed.proj", classifier="head",
        output_stride=32, paper_ids="arXiv:2203.15380", origin_url="https://github.com/liwei109/SepViT",
        weights_note="SepViT's authors published no trained weights (code only); train one with `leanvit train`.",
    )


sepvit_lite = register_variant(SepViT, _variant(
    "sepvit_lite", SepViTArch((32, 64, 128, 256), (1, 2, 4, 8), (1, 2, 6, 2)),
    top1=72.3, params=3_661_128, macs_m=570, macs=568_414_464))
sepvit_t = register_variant(SepViT, _variant(
    "sepvit_t", SepViTArch((96, 192, 384, 768), (3, 6, 12, 24), (1, 2, 6, 2)),
    top1=82.7, params=31_182_856, macs_m=4520, macs=4_518_998_784))
sepvit_s = register_variant(SepViT, _variant(
    "sepvit_s", SepViTArch((96, 192, 384, 768), (3, 6, 12, 24), (1, 2, 14, 2)),
    top1=83.6, params=46_570_504, macs_m=7460, macs=7_455_290_112))
sepvit_b = register_variant(SepViT, _variant(
    "sepvit_b", SepViTArch((128, 256, 512, 1024), (4, 8, 16, 32), (1, 2, 14, 2)),
    top1=84.2, params=82_377_064, macs_m=13050, macs=13_054_592_000))
