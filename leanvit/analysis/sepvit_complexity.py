"""SepViT's complexity formulas (DSSA vs MSA / Swin / Twins) beside MACs counted on the real modules.

The paper's MAC formulas (M = window side, N = number of windows, C = channels) are evaluated per block of
every stage and compared with ``FlopCounterMode`` / 2 on leanvit's ``SepViTBlock`` mixer, two timm
``SwinTransformerBlock`` attentions (shift 0 and M/2) and timm Twins ``LocallyGroupedAttn`` +
``GlobalSubSampleAttn``. Neither side counts norms, softmax or element-wise ops. Models are built on the
meta device: only shapes matter, nothing is allocated.

Where they cannot agree, the row says why: a block that sees one window runs plain MHSA (no window token,
no pointwise attention), so the MSA formula applies; a map that is not a window multiple is zero-padded
(the formula's HW becomes the padded area for the in-window terms).
"""
from __future__ import annotations

import time
from typing import Any

import torch
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.twins import GlobalSubSampleAttn, LocallyGroupedAttn
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import InvalidValueError
from ..models.counting import flop_formulas
from ..bench.timing import interleaved_medians
from ..models import create_model, get_config, list_models
from ..models.sepvit import SepViT, stage_sizes

__all__ = [
    "msa_macs", "swin_wmsa_macs", "dwa_macs", "pwa_macs", "dssa_macs", "twins_gsa_macs",
    "sepvit_block_rows", "block_pair_rows", "TWINS_SR_RATIOS",
]

TWINS_SR_RATIOS = (8, 4, 2, 1)  # Twins-SVT's global sub-sampling per stage


def msa_macs(H: int, W: int, C: int) -> int:
    """Global multi-head self-attention: 4HWC^2 + 2(HW)^2 C."""
    n = H * W
    return 4 * n * C * C + 2 * n * n * C


def swin_wmsa_macs(H: int, W: int, C: int, M: int) -> int:
    """Swin window attention: 4HWC^2 + 2M^2 HWC."""
    return 4 * H * W * C * C + 2 * M * M * H * W * C


def _windows(H: int, W: int, M: int) -> tuple[int, int]:
    """(number of windows, padded area) for M x M windows over an H x W map padded bottom/right."""
    nh, nw = -(-H // M), -(-W // M)
    return nh * nw, nh * nw * M * M


def dwa_macs(H: int, W: int, C: int, M: int, padded: bool = True) -> int:
    """Depthwise (in-window) attention: 3HWC^2 + 3NC^2 + 2N(M^2+1)^2 C (HW = padded area when ``padded``)."""
    n, area = _windows(H, W, M)
    hw = area if padded else H * W
    return 3 * hw * C * C + 3 * n * C * C + 2 * n * (M * M + 1) ** 2 * C


def pwa_macs(H: int, W: int, C: int, M: int, padded: bool = True) -> int:
    """Pointwise (window-to-window) attention with the output projection: HWC^2 + 2NC^2 + N^2 C + NHWC."""
    n, area = _windows(H, W, M)
    hw = area if padded else H * W
    return H * W * C * C + 2 * n * C * C + n * n * C + n * hw * C


def dssa_macs(H: int, W: int, C: int, M: int, padded: bool = True) -> int:
    """DSSA = DWA + PWA = 4HWC^2 + 5NC^2 + 2N(M^2+1)^2 C + N^2 C + NHWC."""
    return dwa_macs(H, W, C, M, padded) + pwa_macs(H, W, C, M, padded)


def twins_gsa_macs(H: int, W: int, C: int, k: int) -> int:
    """Twins global sub-sampled attention: 3HWC^2 + 2HWC^2/k^2 + 2(HW)^2 C/k^2 (k > 1; k = 1 is MSA).

    The three HWC^2 terms are q, the output projection and the k x k stride-k reduction conv."""
    if k == 1:
        return msa_macs(H, W, C)
    n, m = H * W, (H // k) * (W // k)
    return 3 * n * C * C + 2 * m * C * C + 2 * n * m * C


def _count(fn: Any, *args: Any) -> dict[str, int]:
    """MACs of ``fn(*args)`` per module FQN (root class name stripped) and in total (key '')."""
    counter = FlopCounterMode(display=False, custom_mapping=flop_formulas())
    with counter, torch.no_grad():
        fn(*args)
    out = {"": counter.get_total_flops() // 2}
    for key, per_op in counter.get_flop_counts().items():
        if key != "Global":
            out[key.partition(".")[2]] = sum(per_op.values()) // 2
    return out


def sepvit_block_rows(name: str, img_size: int | None = None) -> list[dict[str, Any]]:
    """One row per block of SepViT variant ``name``: the formula that applies, the counted MACs, the difference."""
    cfg = get_config(name)
    if cfg.family != "sepvit":
        raise InvalidValueError(f"{name} is not a SepViT variant (SepViT models: "
                                f"{', '.join(n for n in list_models() if get_config(n).family == 'sepvit')})")
    side = img_size or cfg.img_size
    with torch.device("meta"):
        model: SepViT = create_model(name, img_size=side, window_token="zero")
    rows = []
    for s, (stage, (H, W)) in enumerate(zip(model.stages, stage_sizes(side, len(model.stages)))):
        for j, block in enumerate(stage.blocks):
            C, M = block.norm1.normalized_shape[0], block.window_size
            n, area = _windows(H, W, M)
            x = torch.zeros(1, H, W, C, device="meta")
            counted = _count(block._mixer, x)[""]
            if not block.pointwise or n == 1:
                kind, formula, paper, why = "MSA", msa_macs(H, W, C), msa_macs(H, W, C), "one window: plain MHSA"
            else:
                kind, formula, paper = "DSSA", dssa_macs(H, W, C, M), dssa_macs(H, W, C, M, padded=False)
                why = f"padding {H}x{W} -> {area}px" if area != H * W else ""
            rows.append(dict(model=name, img_size=side, stage=s + 1, block=j, H=H, W=W, C=C, M=M, windows=n,
                             attention=kind, formula_macs=formula, counted_macs=counted, diff=counted - formula,
                             paper_formula_macs=paper, paper_diff=counted - paper, note=why))
    return rows


def _swin_pair(H: int, W: int, C: int, heads: int, M: int) -> nn.ModuleList:
    return nn.ModuleList(SwinTransformerBlock(C, (H, W), num_heads=heads, window_size=M, shift_size=shift)
                         for shift in (0, M // 2))


def _twins_pair(C: int, heads: int, M: int, k: int) -> nn.ModuleList:
    return nn.ModuleList([LocallyGroupedAttn(C, heads, ws=M), GlobalSubSampleAttn(C, heads, sr_ratio=k)])


def block_pair_rows(
    name: str = "sepvit_t", img_size: int | None = None, window: int = 7, time_s: float = 0.0, rounds: int = 3,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """Per stage of ``name``: one DSSA block against Swin's W-MSA + SW-MSA pair and Twins' LSA + GSA pair.

    Attention MACs (formula and counted), whole-block MACs (+MLP) and, with ``time_s > 0``, eager CPU
    latency of one SepViT block vs two Swin blocks at ``batch_size`` (interleaved rounds, process CPU clock).
    """
    cfg = get_config(name)
    side = img_size or cfg.img_size
    with torch.device("meta"):
        model: SepViT = create_model(name, img_size=side, window_token="zero")
    rows = []
    for s, (stage, (H, W)) in enumerate(zip(model.stages, stage_sizes(side, len(model.stages)))):
        block = stage.blocks[0]
        C, heads, k = block.norm1.normalized_shape[0], block.attn.num_heads, TWINS_SR_RATIOS[min(s, 3)]
        x = torch.zeros(1, H, W, C, device="meta")
        with torch.device("meta"):
            swin, twins = _swin_pair(H, W, C, heads, window), _twins_pair(C, heads, window, k)
        dssa = _count(block._mixer, x)[""]
        block_total = _count(block, x)[""]
        swin_counts = [_count(b, x) for b in swin]
        swin_attn = sum(c["attn"] for c in swin_counts)
        swin_total = sum(c[""] for c in swin_counts)
        tokens = x.view(1, H * W, C)
        twins_attn = sum(_count(m, tokens, (H, W))[""] for m in twins)
        n, _ = _windows(H, W, window)
        formula = dssa_macs(H, W, C, window) if block.pointwise and n > 1 else msa_macs(H, W, C)
        row = dict(
            model=name, stage=s + 1, H=H, C=C, windows=n, twins_k=k,
            dssa_formula=formula, dssa_counted=dssa, dssa_paper_formula=dssa_macs(H, W, C, window, padded=False),
            note="one window: the block runs plain MHSA, the DSSA formula does not apply" if n == 1 else "",
            swin_pair_formula=2 * swin_wmsa_macs(H, W, C, min(window, H)), swin_pair_counted=swin_attn,
            twins_pair_formula=swin_wmsa_macs(H, W, C, window) + twins_gsa_macs(H, W, C, k),
            twins_pair_counted=twins_attn,
            dssa_over_swin_pair=dssa / swin_attn, dssa_over_twins_pair=dssa / twins_attn,
            block_over_two_swin_blocks=block_total / swin_total,
        )
        if time_s > 0:
            row.update(_time_block_vs_swin(name, side, s, H, W, C, heads, window, time_s, rounds, batch_size))
        rows.append(row)
    return rows


def _time_block_vs_swin(name: str, side: int, s: int, H: int, W: int, C: int, heads: int, window: int,
                        time_s: float, rounds: int, batch_size: int) -> dict[str, Any]:
    model = create_model(name, img_size=side, window_token="zero").eval()
    block = model.stages[s].blocks[0]
    swin = nn.Sequential(*_swin_pair(H, W, C, heads, window)).eval()
    x = torch.randn(batch_size, H, W, C)
    with torch.no_grad():
        med = interleaved_medians({"sepvit": lambda: block(x), "swin2": lambda: swin(x)}, rounds=rounds,
                                  duration_s=time_s, warmup_s=min(time_s, 1.0), clock=time.process_time)
    sep, sw = sorted(med["sepvit"])[len(med["sepvit"]) // 2], sorted(med["swin2"])[len(med["swin2"]) // 2]
    return dict(sepvit_block_ms=sep * 1e3, two_swin_blocks_ms=sw * 1e3, time_ratio=sep / sw)
