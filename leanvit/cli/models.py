"""``leanvit models``, ``leanvit flops`` and ``leanvit convert``."""
from __future__ import annotations

import argparse

from .._text import format_cell, text_table

__all__ = ["register"]

_MODEL_COLUMNS = [
    ("model", "model", ""), ("family", "family", ""), ("img_size", "res", "d"), ("params_m", "params(M)", ".2f"),
    ("params_fused_m", "fused(M)", ".2f"), ("macs_m", "MACs(M)", ".1f"), ("top1", "paper top-1", ".1f"),
]
_FLOPS_COLUMNS = [
    ("model", "model", ""), ("img_size", "res", "d"), ("macs_m", "measured MACs(M)", ".1f"),
    ("paper_macs_m", "paper(M)", ".0f"), ("delta", "diff %", "+.2f"), ("params_fused_m", "fused params(M)", ".3f"),
]


def _print_rows(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    print(text_table([h for _, h, _ in columns], [[format_cell(r.get(k), f) for k, _, f in columns] for r in rows],
                     left_columns=2))


def _cmd_models(args: argparse.Namespace) -> int:
    from ..zoo import zoo_table

    _print_rows(zoo_table(args.models or None, measure=args.measure), _MODEL_COLUMNS)
    if not args.measure:
        print("counts recorded in the registry (verified by the tests); --measure recounts")
    return 0


def _cmd_flops(args: argparse.Namespace) -> int:
    from ..zoo import zoo_table

    rows = zoo_table(args.models or None, args.img_size, measure=True)
    for r in rows:
        paper = r["paper_macs_m"]
        r["delta"] = (r["macs_m"] - paper) / paper * 100 if paper and r["native"] else None
    _print_rows(rows, _FLOPS_COLUMNS)
    print("MACs: fused eval model, batch 1, torch.utils.flop_counter FLOPs / 2 (norms and softmax excluded).")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from ..models.checkpoint import load_checkpoint, save_checkpoint
    from ..models import create_model

    model = create_model(args.model, num_classes=args.num_classes, img_size=args.img_size)
    report = load_checkpoint(model, args.src)
    path = save_checkpoint(model, args.dst, layout=args.layout)
    print(f"{args.src} ({report['layout']} layout) -> {path} ({args.layout} layout, {args.model})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the model sub-commands to the ``leanvit`` parser."""
    p = sub.add_parser("models", help="table of variants: params, MACs, resolution, paper top-1")
    p.add_argument("models", nargs="*", help="subset of model names (default: all)")
    p.add_argument("--measure", action="store_true", help="build every model and count (default: recorded counts)")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("flops", help="measured MACs vs the papers")
    p.add_argument("models", nargs="*", help="model names (default: all)")
    p.add_argument("--img-size", type=int, default=None, help="input side (default: each model's native size)")
    p.set_defaults(func=_cmd_flops)

    p = sub.add_parser("convert", help="convert a checkpoint between leanvit / timm / official layouts")
    p.add_argument("src", help="source checkpoint (any supported layout, detected automatically)")
    p.add_argument("dst", help="output file (.safetensors for the leanvit layout)")
    p.add_argument("--model", required=True, help="model name, e.g. shvit_s1")
    p.add_argument("--layout", default="leanvit", choices=["leanvit", "timm", "official"])
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--img-size", type=int, default=None)
    p.set_defaults(func=_cmd_convert)
