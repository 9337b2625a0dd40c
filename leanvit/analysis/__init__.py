"""The papers' analyses as tools (``leanvit analyze``): op-time breakdown, head redundancy, Taylor channel
importance, design-space speed studies and SepViT's complexity formulas. See docs/analysis.md."""
from .design_space import STUDIES, DesignPoint, build_point, study_rows
from .heads import DEFINITIONS, accuracy, head_ablation, head_similarity
from .optime import machine_balance, op_breakdown, openvino_breakdown, summarize
from .runs import (
    run_block_complexity, run_design_space, run_head_ablation, run_head_similarity, run_op_breakdown, run_taylor,
)
from .sepvit_complexity import block_pair_rows, dssa_macs, msa_macs, sepvit_block_rows, swin_wmsa_macs
from .taps import find_heads, tapped
from .taylor import kept_channels, prune_channels, taylor_importance

__all__ = [
    "STUDIES", "DesignPoint", "build_point", "study_rows", "DEFINITIONS", "accuracy", "head_ablation",
    "head_similarity", "machine_balance", "op_breakdown", "openvino_breakdown", "summarize", "run_block_complexity",
    "run_design_space", "run_head_ablation", "run_head_similarity", "run_op_breakdown", "run_taylor",
    "block_pair_rows", "dssa_macs", "msa_macs", "sepvit_block_rows", "swin_wmsa_macs", "find_heads", "tapped",
    "kept_channels", "prune_channels", "taylor_importance",
]
