"""Attention inside non-overlapping local windows of a (B, C, H, W) map."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["WindowedAttention"]


class WindowedAttention(nn.Module):
    """Runs ``self.attn`` (a module with a ``window`` side that maps (B', C, window, window) to the same shape)
    on every window of the input, zero-padding bottom/right to a window multiple (also when the map is smaller
    than the window, as timm does) and cropping back. A map of exactly one window is passed as it is.

    Subclasses set ``self.attn``; deploy forms override :meth:`_split_windows` / :meth:`_merge_windows`.
    """

    attn: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        ws = self.attn.window
        if H == ws and W == ws:
            return self.attn(x)
        pad_b, pad_r = (-H) % ws, (-W) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        nh, nw = (H + pad_b) // ws, (W + pad_r) // ws
        x = self._merge_windows(self.attn(self._split_windows(x, nh, nw)), nh, nw)
        if pad_b or pad_r:
            x = x[:, :, :H, :W].contiguous()
        return x

    def _split_windows(self, x: torch.Tensor, nh: int, nw: int) -> torch.Tensor:
        """(B, C, nh*ws, nw*ws) -> (B*nh*nw, C, ws, ws), image-major."""
        B, C, ws = x.shape[0], x.shape[1], self.attn.window
        return x.view(B, C, nh, ws, nw, ws).permute(0, 2, 4, 1, 3, 5).reshape(B * nh * nw, C, ws, ws)

    def _merge_windows(self, x: torch.Tensor, nh: int, nw: int) -> torch.Tensor:
        """Inverse of :meth:`_split_windows`."""
        C, ws = x.shape[1], self.attn.window
        B = x.shape[0] // (nh * nw)
        return x.view(B, nh, nw, C, ws, ws).permute(0, 3, 1, 4, 2, 5).reshape(B, C, nh * ws, nw * ws)
