"""``leanvit models``, ``leanvit flops`` and ``leanvit convert``."""
from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "zoo_table"]


def zoo_table(names: list[str] | None = None, img_size: int | None = None) -> list[dict[str, Any]]:
    """One row per variant: params (unfused/fused), measured MACs, resolution, paper MACs and top-1."""
    from .. import count_macs, count_params, create_model, fuse, get_config, list_models

    rows = []
    for name in names or list_models():
        cfg = get_config(name)
        model = create_model(name).eval()
        size = img_size or cfg.img_size
        rows.append(dict(
            model=name, family=cfg.family, img_size=size, native=size == cfg.img_size, params_m=count_params(model) / 1e6,
            params_fused_m=count_params(fuse(model)) / 1e6, macs_m=count_macs(model, size) / 1e6,
            paper_macs_m=cfg.macs_m, top1=cfg.top1,
        ))
    return rows


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """Fixed-width text table; ``columns`` = (key, header, format spec)."""
    def cell(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    body = [[cell(r.get(k), f) for k, _, f in columns] for r in rows]
    heads = [h for _, h, _ in columns]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(b, widths))) for b in body]
    return "\n".join(lines)


def _cmd_models(args: argparse.Namespace) -> int:
    rows = zoo_table(args.models or None)
    print(format_table(rows, [
        ("model", "model", "s"), ("family", "family", "s"), ("img_size", "res", "d"), ("params_m", "params(M)", ".2f"),
        ("params_fused_m", "fused(M)", ".2f"), ("macs_m", "MACs(M)", ".1f"), ("top1", "paper top-1", ".1f"),
    ]))
    return 0


def _cmd_flops(args: argparse.Namespace) -> int:
    rows = zoo_table(args.models or None, args.img_size)
    for r in rows:
        paper = r["paper_macs_m"]
        r["delta"] = (r["macs_m"] - paper) / paper * 100 if paper and r["native"] else None
    print(format_table(rows, [
        ("model", "model", "s"), ("img_size", "res", "d"), ("macs_m", "measured MACs(M)", ".1f"),
        ("paper_macs_m", "paper(M)", ".0f"), ("delta", "diff %", "+.2f"), ("params_fused_m", "fused params(M)", ".3f"),
    ]))
    print("MACs: fused eval model, batch 1, torch.utils.flop_counter FLOPs / 2 (norms and softmax excluded).")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .. import create_model, load_checkpoint, save_checkpoint

    model = create_model(args.model, num_classes=args.num_classes, img_size=args.img_size)
    report = load_checkpoint(model, args.src)
    path = save_checkpoint(model, args.dst, layout=args.layout)
    print(f"{args.src} ({report['layout']} layout) -> {path} ({args.layout} layout, {args.model})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the model sub-commands to the ``leanvit`` parser."""
    p = sub.add_parser("models", help="table of variants: params, MACs, resolution, paper top-1")
    p.add_argument("models", nargs="*", help="subset of model names (default: all)")
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
