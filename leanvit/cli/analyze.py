"""``leanvit analyze <tool> ...``: the papers' analyses (see docs/analysis.md). Thin: parse, call, print.

Each tool's flags are generated from its options dataclass in :mod:`leanvit.analysis.options` (no torch there,
so ``--help`` is instant)."""
from __future__ import annotations

import argparse

from .._flags import add_dataclass_flags, dataclass_from_args
from ..analysis.options import TOOL_OPTIONS, HeadSimilarityOptions, run_arguments

__all__ = ["register"]

# tool -> its one-line help in ``leanvit analyze --help``
_TOOL_HELP = {
    "op-breakdown": "per-op / category / stage time with bytes and intensity",
    "head-similarity": "per-layer head similarity (SHViT's or EfficientViT's definition)",
    "head-ablation": "top-1 change with one head removed / only one head kept",
    "taylor": "Taylor importance of Q/K/V/FFN channels and kept ratios under a budget",
    "design-space": "speed studies from config switches (SHViT Fig. 2 / Tab. 6, EViT Fig. 7)",
    "block-complexity": "SepViT MAC formulas vs counted, and one block vs two",
}


def _run(args: argparse.Namespace) -> int:
    """Build the tool's options from the flags, call its ``run_*`` function and print the files it wrote."""
    from .. import analysis

    options = dataclass_from_args(TOOL_OPTIONS[args.tool], args)
    if isinstance(options, HeadSimilarityOptions):
        options = options.resolved()
    positional, keywords = run_arguments(options)
    if "parts" in keywords:
        keywords["parts"] = keywords["parts"].split(",")
    run = getattr(analysis, "run_" + args.tool.replace("-", "_"))
    for path in run(*positional, **keywords):
        print(path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``leanvit analyze`` and its tools."""
    top = sub.add_parser("analyze", help="the papers' analyses: op breakdown, heads, Taylor, design space, SepViT")
    tools = top.add_subparsers(dest="tool", metavar="TOOL", required=True)
    for tool, options in TOOL_OPTIONS.items():
        p = tools.add_parser(tool, help=_TOOL_HELP[tool])
        add_dataclass_flags(p, options)
        p.set_defaults(func=_run)
