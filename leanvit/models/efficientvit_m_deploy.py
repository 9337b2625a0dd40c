"""Deploy forms of EfficientViT-M's attention: what ``leanvit.fuse(target=...)`` runs instead of the eager
:class:`~leanvit.models.efficientvit_m.CascadedGroupAttention` and
:class:`~leanvit.models.efficientvit_m.LocalWindowAttention` on OpenVINO and the mobile delegates.

The eager modules' ``deploy_form`` hooks call :func:`cascaded_attention_form` and :func:`local_window_form`;
this module reads the eager modules' attributes and weights and never imports them (the family file imports
this one). Every form computes the eager function up to fp32 rounding, from a module whose BatchNorms are
already folded, and is inference-only with the window fixed at fuse time.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import OperationError
from ..layers import WindowedAttention, explicit_attention, linear_from_conv1x1, select_out_channels
from .fusion import MOBILE_TARGETS

__all__ = [
    "SPLIT_QKV_TARGETS", "SLICED_WINDOW_TARGETS", "cascaded_attention_form", "local_window_form",
    "SplitQKVCascadedAttention", "MobileCascadedAttention", "SlicedWindowAttention", "MobileWindowAttention",
]

# fuse(target=...) values for which the cascaded attention gets the split-qkv form (the mobile targets get its
# mobile variant), and the local windows the sliced-window form.
SPLIT_QKV_TARGETS = ("openvino",)
SLICED_WINDOW_TARGETS = ("openvino", *MOBILE_TARGETS)


def cascaded_attention_form(attn: nn.Module, target: str) -> nn.Module:
    """The module to run on ``target`` for a fused ``CascadedGroupAttention`` ``attn`` (``attn`` itself to keep it).

    OpenVINO gets :class:`SplitQKVCascadedAttention` (benchmarks/NOTES.md entries 6 and 12): its CPU plugin
    runs the q/k/v ``split`` of each head's qkv output (16-channel pieces of a 32-channel-blocked bf16 layout)
    with a reference kernel, 18 % of efficientvit_m0's bf16 time; without them OV bf16 is 17 % (m0) / 11 % (m5)
    faster. The mobile delegates get :class:`MobileCascadedAttention`. PyTorch keeps ``attn`` (one conv per
    head is faster there: jit fp32 channels-last 6 % / 3 % slower with three), and so does ONNX Runtime
    (+1-3 %, no more than the spread between two sessions of one graph). Unfused modules, the design-space
    variants without the cascade and pruned heads of unequal widths are kept as they are.
    """
    if target not in (*SPLIT_QKV_TARGETS, *MOBILE_TARGETS):
        return attn
    if not all(isinstance(c, nn.Conv2d) for c in (*attn.qkvs, *attn.dws)):
        return attn
    if not attn.cascade:  # the deploy forms implement the paper's cascade only
        return attn
    if attn.key_dims != [attn.key_dim] * attn.num_heads or attn.val_dims != [attn.val_dim] * attn.num_heads:
        return attn  # pruned heads of unequal widths: the split forms assume equal ones
    return MobileCascadedAttention(attn) if target in MOBILE_TARGETS else SplitQKVCascadedAttention(attn)


def local_window_form(windows: WindowedAttention, target: str) -> nn.Module:
    """The module to run on ``target`` for a ``LocalWindowAttention`` ``windows`` (itself to keep it): OpenVINO
    gets :class:`SlicedWindowAttention`, the mobile delegates :class:`MobileWindowAttention`."""
    if target not in SLICED_WINDOW_TARGETS:
        return windows
    return MobileWindowAttention(windows.attn) if target in MOBILE_TARGETS else SlicedWindowAttention(windows.attn)


def _scaled_rows(conv: nn.Conv2d, stop: int, scale: float) -> nn.Conv2d:
    """Output channels ``0:stop`` of ``conv`` with weight and bias times ``scale``."""
    out = select_out_channels(conv, torch.arange(stop))
    with torch.no_grad():
        out.weight.mul_(scale)
        if out.bias is not None:
            out.bias.mul_(scale)
    return out


def _linear_rows(conv: nn.Conv2d, start: int, stop: int) -> nn.Linear:
    """A Linear computing output channels ``start:stop`` of a dense 1x1 ``conv`` on (..., C) tokens."""
    return linear_from_conv1x1(select_out_channels(conv, torch.arange(start, stop)))


class SplitQKVCascadedAttention(nn.Module):
    """Inference-only ("deploy") form of a *fused* ``CascadedGroupAttention``, for OpenVINO.

    Same function, different graph:

    * each head's qkv conv + channel ``split`` becomes one token-major projection (a Linear with the fused
      conv's rows) whose q / k / v are slices of the last axis: no channel split of a (B, C, H, W) map is
      left, which OpenVINO's CPU plugin runs with a slow reference kernel on its blocked layouts
      (efficientvit_m0 bf16: +23 %, NOTES.md entry 6(b)). One projection rather than three (q, k and v
      Linears, the form of NOTES.md entry 15): efficientvit_m4 int8 (NNCF) batch 1 +4-12 %, batch 16 +1-2 %,
      bf16 batch 1 +14 %, batch 16 -1 % (within the spread; NOTES.md entry 17);
    * ``scale`` is folded into the q depthwise conv (weight and bias times ``scale``), one multiply less;
    * the (heads, N, N) attention bias is gathered once into a buffer: no index gather at run time;
    * the cascade runs token-major, (B, N, C), with the projections as Linear layers: that is the
      layout of OpenVINO's NHWC activations, so the q / k / v reorders to planar and the transposes
      around each head's attention disappear (OpenVINO bf16 m0 +3.5 %, m5 +1.2 %, NOTES.md entry 15);
      only q goes back to a (B, C, H, W) map, for its depthwise conv.

    Equal to the source module up to fp32 rounding (folding ``scale`` = 2^-2 for key_dim 16 is itself
    exact). The window is fixed: set the input size before fusing.
    """

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        kd, vd = attn.key_dim, attn.val_dim
        self.num_heads, self.key_dim, self.val_dim, self.window = attn.num_heads, kd, vd, attn.window
        self._init_projections(attn)
        self.dws = nn.ModuleList(_scaled_rows(dw, kd, attn.scale) for dw in attn.dws)
        self.proj = copy.deepcopy(attn.proj)
        with torch.no_grad():
            bias = attn.attention_biases[:, attn.attention_bias_idxs].detach().clone()
        self.register_buffer("attention_bias", bias)

    def _init_projections(self, attn: nn.Module) -> None:
        """Each head's q, k and v rows of ``attn.qkvs`` as one token-major Linear."""
        self.qkv_linears = nn.ModuleList(_linear_rows(c, 0, 2 * self.key_dim + self.val_dim) for c in attn.qkvs)

    def set_window(self, window: int) -> None:
        """The bias table was gathered for one window: refuse to change it."""
        if window != self.window:
            raise OperationError("the deploy form of CascadedGroupAttention has a fixed window: "
                                 "call set_input_size() before leanvit.fuse()")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        splits = self._tokens(x).chunk(self.num_heads, dim=2)
        outs = []
        feat = splits[0]
        kd = self.key_dim
        for i, (qkv_lin, dw) in enumerate(zip(self.qkv_linears, self.dws)):
            if i > 0:
                feat = feat + splits[i]
            qkv = qkv_lin(feat)
            # Slices, not split(): the IR keeps no per-head Split (tests/test_export.py counts them).
            q, k, v = qkv[..., :kd], qkv[..., kd:2 * kd], qkv[..., 2 * kd:]
            q = self._tokens(dw(self._map(q, H, W)))  # q already carries the scale
            attn = (q @ k.transpose(1, 2) + self.attention_bias[i]).softmax(dim=-1)
            # No reshape straight after attn @ v: under a dynamic batch, OpenVINO 2026.4's SDPAReshapeFusion
            # turns that into an invalid SDPA and the export fails (NOTES.md entry 15).
            feat = attn @ v
            outs.append(feat)
        return self.proj(self._map(torch.cat(outs, dim=2), H, W))

    @staticmethod
    def _tokens(x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H*W, C)."""
        return x.permute(0, 2, 3, 1).flatten(1, 2)

    @staticmethod
    def _map(tokens: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """(B, H*W, C) -> (B, C, H, W)."""
        return tokens.reshape(tokens.shape[0], H, W, tokens.shape[2]).permute(0, 3, 1, 2)


class MobileCascadedAttention(SplitQKVCascadedAttention):
    """The split-qkv form for ExecuTorch / Core ML (``leanvit.layers.mobile``): heads are static channel
    slices (no ``chunk``), each head's bias is its own buffer (no ``select`` / gather at run time) and the
    attention is :func:`~leanvit.layers.explicit_attention` (``bmm``, no broadcast ``expand``). Measured with
    ExecuTorch 1.5.1 / XNNPACK: every op of efficientvit_m0 is then delegated. q, k and v keep a Linear each
    (the form the delegates were measured with; the one-projection OpenVINO form is untimed there)."""

    def _init_projections(self, attn: nn.Module) -> None:
        kd, vd = self.key_dim, self.val_dim
        self.q_linears = nn.ModuleList(_linear_rows(c, 0, kd) for c in attn.qkvs)
        self.k_linears = nn.ModuleList(_linear_rows(c, kd, 2 * kd) for c in attn.qkvs)
        self.v_linears = nn.ModuleList(_linear_rows(c, 2 * kd, 2 * kd + vd) for c in attn.qkvs)

    def __init__(self, attn: nn.Module) -> None:
        super().__init__(attn)
        bias = self.attention_bias
        del self.attention_bias
        for i in range(self.num_heads):
            self.register_buffer(f"head_bias{i}", bias[i].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        tokens = self._tokens(x)
        width = tokens.shape[2] // self.num_heads
        outs = []
        feat = tokens[:, :, :width]
        for i, (q_lin, k_lin, v_lin, dw) in enumerate(zip(self.q_linears, self.k_linears, self.v_linears, self.dws)):
            if i > 0:
                feat = feat + tokens[:, :, i * width:(i + 1) * width]
            q = self._tokens(dw(self._map(q_lin(feat), H, W)))  # q already carries the scale
            feat = explicit_attention(q, k_lin(feat).transpose(1, 2), v_lin(feat), getattr(self, f"head_bias{i}"))
            outs.append(feat)
        return self.proj(self._map(torch.cat(outs, dim=2), H, W))


class SlicedWindowAttention(WindowedAttention):
    """Deploy form of ``LocalWindowAttention`` for OpenVINO: up to ``MAX_SLICED_WINDOWS`` windows are cut out
    by slicing and stacked on the batch axis (and put back by concatenation) instead of the 6-D permute,
    which OpenVINO's CPU plugin runs as a slow generic Transpose. Same values, windows in another batch
    order (each is attended on alone). OpenVINO bf16, batch 16: efficientvit_m0 +2 %, m5 +1.3 %
    (benchmarks/NOTES.md entry 15). More windows (large inputs) keep the permute: untimed."""

    MAX_SLICED_WINDOWS = 4

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn

    def _split_windows(self, x: torch.Tensor, nh: int, nw: int) -> torch.Tensor:
        if nh * nw > self.MAX_SLICED_WINDOWS:
            return super()._split_windows(x, nh, nw)
        ws = self.attn.window
        return torch.cat([x[:, :, i * ws:(i + 1) * ws, j * ws:(j + 1) * ws] for i in range(nh) for j in range(nw)])

    def _merge_windows(self, x: torch.Tensor, nh: int, nw: int) -> torch.Tensor:
        if nh * nw > self.MAX_SLICED_WINDOWS:
            return super()._merge_windows(x, nh, nw)
        windows = self._batch_pieces(x, nh * nw)  # window-major: window k of every image is the k-th piece
        return torch.cat([torch.cat(windows[i * nw:(i + 1) * nw], dim=3) for i in range(nh)], dim=2)

    @staticmethod
    def _batch_pieces(x: torch.Tensor, count: int) -> tuple[torch.Tensor, ...]:
        """``x`` cut into ``count`` equal pieces along the batch axis."""
        return x.chunk(count)


class MobileWindowAttention(SlicedWindowAttention):
    """The sliced-window form for ExecuTorch / Core ML: the windows are put back from static batch slices, not
    ``chunk``, which exports as ``split_with_sizes_copy`` and stays outside XNNPACK (efficientvit_m0 / m4 at
    224 px: one op of 567 left out, ExecuTorch 1.5.1)."""

    @staticmethod
    def _batch_pieces(x: torch.Tensor, count: int) -> tuple[torch.Tensor, ...]:
        size = x.shape[0] // count
        return tuple(x[k * size:(k + 1) * size] for k in range(count))
