"""An independent oracle of SepViT's official *dense* backbone (detection / segmentation), for tests.

Written from a line-by-line reading of liwei109/SepViT ``detection/sepvit.py`` (``segmentation/sepvit.py``
computes the same), not from leanvit's classes: module names follow the official ones, so ``state_dict()``
has the official key layout that mmdet / mmseg checkpoints carry under ``backbone.``. What the official code
does, and so this oracle:

- tokens are (B, N, C) sequences; every block pads its map bottom / right to whole windows, cuts it into
  windows and puts a fixed **zero** window token in front of each window *before* ``norm1``, whatever the
  number of windows (also one: the pointwise step then attends over a single window);
- separable attention: depthwise attention inside each window (token included) plus the normalised input,
  then the window tokens through LayerNorm (default eps) and GELU give the pointwise queries / keys, the
  windows' maps (per head) are the values, plus the maps again; windows folded back, padding cropped, proj;
- PEG (x + depthwise 3x3 conv) after the first block of each stage;
- after each stage the per-level LayerNorm (``norm_list``, eps 1e-6) is applied **on the main path**: the
  next stage's patch embedding reads the normalised map, and it is also the stage's output;
- ``norm`` and ``head`` exist (checkpoints carry them) but feed nothing.

Dropout and drop-path are left out: this is the eval-mode forward.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["OfficialDenseSepViT", "OFFICIAL_DENSE_VARIANTS"]

# embed dims, heads, depths and window sizes per block of the registered backbones (SepViT_Tiny/_Small/_Base)
OFFICIAL_DENSE_VARIANTS = {
    "sepvit_t": ((96, 192, 384, 768), (3, 6, 12, 24), (1, 2, 6, 2), ((7,), (7, 14), (7, 14) * 3, (7, 7))),
    "sepvit_s": ((96, 192, 384, 768), (3, 6, 12, 24), (1, 2, 14, 2), ((7,), (7, 14), (7, 14) * 7, (7, 7))),
    "sepvit_b": ((128, 256, 512, 1024), (4, 8, 16, 32), (1, 2, 14, 2), ((7,), (7, 14), (7, 14) * 7, (7, 7))),
}


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _SeparableAttention(nn.Module):
    def __init__(self, dim: int, heads: int, ws: int) -> None:
        super().__init__()
        self.heads, self.ws, self.scale = heads, ws, (dim // heads) ** -0.5
        self.DSA_qkv = nn.Linear(dim, dim * 3)  # the variants pass qkv_bias=True
        self.win_tokens_norm = nn.LayerNorm(dim)
        self.win_tokens_act = nn.GELU()
        self.PSA_qk = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, n_win, L, C = x.shape  # L = ws*ws + 1 (token first)
        h, d, ws = self.heads, C // self.heads, self.ws
        hg, wg = math.ceil(H / ws), math.ceil(W / ws)
        qkv = self.DSA_qkv(x).reshape(B, n_win, L, 3, h, d).permute(3, 0, 1, 4, 2, 5)
        attn = ((qkv[0] @ qkv[1].transpose(-2, -1)) * self.scale).softmax(dim=-1)
        out = (attn @ qkv[2]).transpose(2, 3).reshape(B, n_win, L, C) + x
        tokens, maps = out[:, :, 0, :], out[:, :, 1:, :]
        tokens = self.win_tokens_act(self.win_tokens_norm(tokens))
        qk = self.PSA_qk(tokens).reshape(B, n_win, 2, h, d).permute(2, 0, 3, 1, 4)  # 2, B, h, n_win, d
        values = maps.reshape(B, n_win, ws * ws, h, d).permute(0, 3, 1, 2, 4).reshape(B, h, n_win, ws * ws * d)
        mix = ((qk[0] @ qk[1].transpose(-2, -1)) * self.scale).softmax(dim=-1) @ values
        mix = mix.transpose(1, 2).reshape(B, n_win, h, ws * ws, d).transpose(2, 3).reshape(B, n_win, ws * ws, C)
        mix = mix + maps
        mix = mix.reshape(B, hg, wg, ws, ws, C).transpose(2, 3).reshape(B, hg * ws, wg * ws, C)
        return self.proj(mix[:, :H, :W, :].reshape(B, H * W, C))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, ws: int) -> None:
        super().__init__()
        self.ws = ws
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _SeparableAttention(dim, heads, ws)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        ws = self.ws
        grid = F.pad(x.view(B, H, W, C), (0, 0, 0, (ws - W % ws) % ws, 0, (ws - H % ws) % ws))
        hg, wg = math.ceil(H / ws), math.ceil(W / ws)
        windows = grid.reshape(B, hg, ws, wg, ws, C).transpose(2, 3).reshape(B, hg * wg, ws * ws, C)
        windows = torch.cat([windows.new_zeros(B, hg * wg, 1, C), windows], dim=2)
        x = x + self.attn(self.norm1(windows), H, W)
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, in_chs: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, dim, kernel, stride, kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        H, W = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), H, W


class _PosCNN(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1, groups=dim))

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        feat = x.transpose(1, 2).reshape(B, C, H, W)
        return (self.proj(feat) + feat).flatten(2).transpose(1, 2)


class OfficialDenseSepViT(nn.Module):
    """The official dense SepViT backbone of ``variant`` ("sepvit_t" | "sepvit_s" | "sepvit_b"), eval forward:
    ``forward(images)`` returns the four NCHW stage outputs."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        dims, heads, depths, windows = OFFICIAL_DENSE_VARIANTS[variant]
        self.norm_list = nn.ModuleList(nn.LayerNorm(d, eps=1e-6) for d in dims)
        self.patch_embeds = nn.ModuleList(
            _PatchEmbed(3, dims[0], 7, 4) if i == 0 else _PatchEmbed(dims[i - 1], dims[i], 3, 2) for i in range(4))
        self.pos_block = nn.ModuleList(_PosCNN(d) for d in dims)
        self.blocks = nn.ModuleList(
            nn.ModuleList(_Block(dims[k], heads[k], windows[k][i]) for i in range(depths[k])) for k in range(4))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], 1000)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        B, outputs = x.shape[0], []
        for i in range(4):
            x, H, W = self.patch_embeds[i](x)
            for j, block in enumerate(self.blocks[i]):
                x = block(x, H, W)
                if j == 0:
                    x = self.pos_block[i](x, H, W)
            x = self.norm_list[i](x)
            x = x.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()
            outputs.append(x)
        return outputs
