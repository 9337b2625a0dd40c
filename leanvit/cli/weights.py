"""``leanvit weights [NAME]``: the published weight sets, their sources, licence, paper top-1 and cache state."""
from __future__ import annotations

import argparse

from .._text import format_cell, text_table

__all__ = ["register"]


def _cmd_weights(args: argparse.Namespace) -> int:
    from ..models.weights import list_weights

    rows = list_weights(args.name or "*", cache_dir=args.cache_dir)
    if not rows:
        print(f"no model matches {args.name!r}; see `leanvit models`")
        return 2
    table = [[r.model, r.tag or "-", format_cell(r.img_size, "d"), r.license or "-", format_cell(r.top1, ".1f"),
              str(r.cached) if r.cached else ("-" if not r.tag else "no")] for r in rows]
    print(text_table(["model", "tag", "res", "licence", "paper top-1", "cached"], table, left_columns=2))
    for r in rows:
        if r.note:
            print(f"{r.model}: no published weights. {r.note}")
        elif args.name:
            print(f"{r.model}.{r.tag} sources (tried in order):")
            for source in r.sources:
                print(f"  {source}")
    print("Get one: leanvit.create_model(NAME, pretrained=True); offline: put the file in $LEANVIT_WEIGHTS_DIR.")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``leanvit weights`` to the ``leanvit`` parser."""
    p = sub.add_parser("weights", help="published weights per model: source, licence, paper top-1, cached")
    p.add_argument("name", nargs="?", help="a model name or glob (default: all); a name also lists its URLs")
    p.add_argument("--cache-dir", default=None, help="download cache to inspect (default: torch hub's)")
    p.set_defaults(func=_cmd_weights)
