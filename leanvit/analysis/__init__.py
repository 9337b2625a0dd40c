"""The papers' analyses as tools (``leanvit analyze``): op-time breakdown, head redundancy, Taylor channel
importance, design-space speed studies and SepViT's complexity formulas. See docs/analysis.md.

The names below are imported on first use (PEP 562), so that ``leanvit.analysis.options`` (the command
line's flags) loads without torch."""
from __future__ import annotations

from .._lazy import lazy_exports

# public name -> module of this package that defines it
_EXPORTS = {
    **dict.fromkeys(["STUDIES", "DesignPoint", "build_point", "study_rows"], "design_space"),
    **dict.fromkeys(["DEFINITIONS", "accuracy", "head_ablation", "head_similarity"], "heads"),
    **dict.fromkeys(["machine_balance", "op_breakdown", "openvino_breakdown", "summarize"], "optime"),
    **dict.fromkeys(["run_block_complexity", "run_design_space", "run_head_ablation", "run_head_similarity",
                     "run_op_breakdown", "run_taylor"], "runs"),
    **dict.fromkeys(["block_pair_rows", "dssa_macs", "msa_macs", "sepvit_block_rows", "swin_wmsa_macs"],
                    "sepvit_complexity"),
    **dict.fromkeys(["find_heads", "tapped"], "taps"),
    **dict.fromkeys(["kept_channels", "prune_channels", "taylor_importance"], "taylor"),
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
