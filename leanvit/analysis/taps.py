"""Attention taps: per-head outputs, attention maps and head masks on leanvit's and timm's attention modules.

Everything is done with forward (pre-)hooks, so no model changes its forward, state dict or speed:

- **head outputs**: the input of the output projection ``proj``, split head-major into (S, heads, features);
  for EfficientViT-M's cascaded group attention this is the pre-ReLU concatenation of the heads (the
  official ``feats_out``);
- **attention maps**: recomputed as softmax(q k^T scale + bias) from the q / k the module computes (its
  ``qkv`` output, EfficientViT-M's per-head q after the depthwise conv), so they exist even where the module
  runs fused attention and never materialises them; timm Swin's explicit ``softmax`` module is read directly
  (relative-position bias and shift mask included);
- **head mask**: a float vector of length ``heads`` multiplied into each head's slice of the ``proj`` input.
  For cascaded group attention it is also applied to head j's values (``cascade_mask``), so a removed head
  passes nothing on to head j+1 through the cascade. For SepViT the ``proj`` input comes after both inner
  residuals: masking a head there also removes its residual share.

S is the module's batch axis: images, or images x windows for windowed attention (window-major per image).
Deploy forms (``leanvit.fuse(target="openvino")``) are not tapped; analyse the standard (BN-fused) form.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from timm.layers.attention import Attention
from timm.models.levit import Attention as LeViTAttention
from timm.models.swin_transformer import WindowAttention
from torch import nn

from ..errors import InvalidValueError
from ..models.efficientvit_m import CascadedGroupAttention
from ..models.sepvit import SeparableAttention

__all__ = ["HeadTap", "find_heads", "tapped"]


class HeadTap:
    """Hooks on one attention module. ``outputs`` / ``maps`` hold the last forward's captures."""

    kind = "generic"
    token_last = True  # head channels on the last axis (False: NCHW, channels on axis 1)
    prefix_tokens = 0  # CLS-like tokens at the start of the sequence (timm ViT/DeiT)

    def __init__(self, name: str, module: nn.Module, num_heads: int, head_dim: int) -> None:
        self.name, self.module, self.num_heads, self.head_dim = name, module, num_heads, head_dim
        self.mask: torch.Tensor | None = None
        self.cascade_mask = True
        self.capture_outputs = False
        self.capture_maps = False
        self.outputs: torch.Tensor | None = None
        self.maps: torch.Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # --- what every adapter shares --------------------------------------------------------------
    @property
    def proj(self) -> nn.Module:
        return self.module.proj

    def attach(self) -> None:
        """Install the hooks (idempotent)."""
        if not self._handles:
            self._handles.append(self.proj.register_forward_pre_hook(self._proj_pre_hook))
            self._attach_map_hooks()

    def detach(self) -> None:
        """Remove every hook and forget the captures."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.outputs = self.maps = None

    def _head_scale(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        per_channel = mask.to(x.dtype).repeat_interleave(self.head_dim)
        return x * (per_channel if self.token_last else per_channel.view(-1, 1, 1))

    def _proj_pre_hook(self, module: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        if self.capture_outputs:
            self.outputs = self.split_heads(x.detach())
        if self.mask is not None:
            return (self._head_scale(x, self.mask), *args[1:])
        return None

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """A ``proj`` input -> (S, heads, features), head-major channels."""
        S, h = x.shape[0], self.num_heads
        if self.token_last:
            return x.reshape(S, -1, h, self.head_dim).transpose(1, 2).reshape(S, h, -1)
        return x.reshape(S, h, -1)

    def _attach_map_hooks(self) -> None:
        self._handles.append(self.module.qkv.register_forward_hook(self._qkv_hook))

    def _qkv_hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if self.capture_maps:
            q, k = self.query_key(out.detach())
            self.maps = self.softmax_map(q, k)

    def query_key(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        """(S, heads, Nq, d) queries (scale applied) and (S, heads, Nk, d) keys from the qkv output."""
        raise NotImplementedError

    def softmax_map(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (q.float() @ k.float().transpose(-2, -1)).softmax(dim=-1)


class TimmAttentionTap(HeadTap):
    """timm ``Attention`` (ViT, DeiT): fused or not, maps recomputed from ``qkv`` through q_norm / k_norm."""

    kind = "timm_vit"

    def query_key(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.module
        B, N, _ = qkv.shape
        q, k, _ = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return m.q_norm(q) * m.scale, m.k_norm(k)


class SwinTap(HeadTap):
    """timm Swin ``WindowAttention``: the output of its ``softmax`` module (explicit path forced while tapped)."""

    kind = "timm_swin"

    def attach(self) -> None:
        if not self._handles:
            self._fused = self.module.fused_attn
            self.module.fused_attn = False
        super().attach()

    def detach(self) -> None:
        if self._handles:
            self.module.fused_attn = self._fused
        super().detach()

    def _attach_map_hooks(self) -> None:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if self.capture_maps:
                self.maps = out.detach().float()

        self._handles.append(self.module.softmax.register_forward_hook(hook))


class LeViTTap(HeadTap):
    """timm LeViT ``Attention`` (linear mode): maps from the ``qkv`` output plus the attention biases."""

    kind = "timm_levit"

    def query_key(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.module
        B, N, _ = qkv.shape
        q, k, _ = qkv.view(B, N, self.num_heads, -1).split([m.key_dim, m.key_dim, m.val_dim], dim=3)
        return q.transpose(1, 2) * m.scale, k.transpose(1, 2)

    def softmax_map(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        bias = self.module.get_attention_biases(q.device).float()
        return (q.float() @ k.float().transpose(-2, -1) + bias).softmax(dim=-1)


class SeparableAttentionTap(HeadTap):
    """leanvit SepViT: the depthwise (in-window) attention map, (B*windows, heads, L, L), window token first;
    a single-window block's map is plain MHSA over the whole map. Pointwise attention is not captured."""

    kind = "leanvit_sepvit"

    def query_key(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, L, _ = qkv.shape
        q, k, _ = qkv.view(B * N, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return q * self.head_dim ** -0.5, k


class CascadedGroupAttentionTap(HeadTap):
    """leanvit EfficientViT-M: per-head q (after its depthwise conv) and k, plus the (|dy|, |dx|) bias."""

    kind = "leanvit_cga"
    token_last = False

    def _attach_map_hooks(self) -> None:
        m: CascadedGroupAttention = self.module
        self._keys: list[torch.Tensor] = []
        self._rows: list[torch.Tensor] = []
        for i, (qkv, dw) in enumerate(zip(m.qkvs, m.dws)):
            self._handles.append(qkv.register_forward_hook(self._make_qkv_hook(i)))
            self._handles.append(dw.register_forward_hook(self._make_dw_hook(i)))

    def _make_qkv_hook(self, i: int):  # type: ignore[no-untyped-def]
        kd = self.module.key_dim

        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            if i == 0:
                self._keys, self._rows = [], []
            if self.capture_maps:
                self._keys.append(out[:, kd:2 * kd].detach())
            if self.mask is not None and self.cascade_mask:
                scale = torch.ones(out.shape[1], dtype=out.dtype, device=out.device)
                scale[2 * kd:] = self.mask[i]
                return out * scale.view(-1, 1, 1)
            return None

        return hook

    def _make_dw_hook(self, i: int):  # type: ignore[no-untyped-def]
        m: CascadedGroupAttention = self.module

        def hook(module: nn.Module, args: tuple, q: torch.Tensor) -> None:
            if not self.capture_maps:
                return
            logits = (q.detach().flatten(2).transpose(1, 2).float() * m.scale) @ self._keys[i].flatten(2).float()
            self._rows.append((logits + m.attention_bias()[i].detach().float()).softmax(dim=-1))
            if i == m.num_heads - 1:
                self.maps = torch.stack(self._rows, dim=1)

        return hook


# timm's attention modules and their taps (timm is a core dependency).
_TIMM_TAPS: tuple[tuple[type, type[HeadTap]], ...] = (
    (Attention, TimmAttentionTap), (WindowAttention, SwinTap), (LeViTAttention, LeViTTap))


def _make_tap(name: str, module: nn.Module, prefix_tokens: int) -> HeadTap | None:
    if isinstance(module, CascadedGroupAttention):
        return CascadedGroupAttentionTap(name, module, module.num_heads, module.val_dim)
    if isinstance(module, SeparableAttention):
        return SeparableAttentionTap(name, module, module.num_heads, module.head_dim)
    for cls, tap_cls in _TIMM_TAPS:
        if isinstance(module, cls):
            if tap_cls is LeViTTap and module.use_conv:
                raise InvalidValueError(f"{name}: LeViT attention in conv mode is not supported; use the linear-mode model")
            head_dim = module.val_dim if tap_cls is LeViTTap else module.proj.in_features // module.num_heads
            tap = tap_cls(name, module, module.num_heads, head_dim)
            tap.prefix_tokens = prefix_tokens if tap_cls is TimmAttentionTap else 0
            return tap
    return None


def find_heads(model: nn.Module) -> dict[str, HeadTap]:
    """One tap per multi-head attention module of ``model``, keyed by module name, in forward order.

    Supported: leanvit EfficientViT-M (cascaded group attention) and SepViT; timm ViT / DeiT, Swin and LeViT.
    SHViT has one head per layer, so it has nothing to compare.
    """
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    taps = {}
    for name, module in model.named_modules():
        tap = _make_tap(name, module, prefix)
        if tap is not None and tap.num_heads > 1:
            taps[name] = tap
    if not taps:
        raise InvalidValueError(
            f"{type(model).__name__} has no supported multi-head attention module (supported: leanvit "
            "EfficientViT-M and SepViT; timm ViT/DeiT, Swin, LeViT). SHViT uses a single head per layer"
        )
    return taps


@contextlib.contextmanager
def tapped(model: nn.Module, outputs: bool = False, maps: bool = False) -> Iterator[dict[str, HeadTap]]:
    """Attach every tap of ``model`` for the block (capturing head outputs and/or maps); detach after."""
    taps = find_heads(model)
    for tap in taps.values():
        tap.capture_outputs, tap.capture_maps = outputs, maps
        tap.attach()
    try:
        yield taps
    finally:
        for tap in taps.values():
            tap.mask = None
            tap.detach()
