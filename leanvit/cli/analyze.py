"""``leanvit analyze <tool> ...``: the papers' analyses (see docs/analysis.md). Thin: parse, call, print."""
from __future__ import annotations

import argparse

__all__ = ["register"]


def _print(paths: list) -> int:
    for p in paths:
        print(p)
    return 0


def _cmd_op_breakdown(a: argparse.Namespace) -> int:
    from ..analysis import run_op_breakdown

    return _print(run_op_breakdown(a.models, a.out, backend=a.backend, img_size=a.img_size, batch_size=a.batch,
                                   iters=a.iters, warmup=a.warmup, threads=a.threads, checkpoint=a.checkpoint))


def _cmd_head_similarity(a: argparse.Namespace) -> int:
    from ..analysis import run_head_similarity

    definition = None if (a.target or a.reduce) and a.definition is None else (a.definition or "shvit")
    return _print(run_head_similarity(
        a.models, a.out, data=a.data, definition=definition, target=a.target, reduce=a.reduce,
        granularity=a.granularity, drop_cls=a.drop_cls, images=a.images, batch_size=a.batch, seed=a.seed,
        img_size=a.img_size, checkpoint=a.checkpoint, num_classes=a.num_classes))


def _cmd_head_ablation(a: argparse.Namespace) -> int:
    from ..analysis import run_head_ablation

    return _print(run_head_ablation(a.model, a.out, data=a.data, images=a.images, batch_size=a.batch, seed=a.seed,
                                    img_size=a.img_size, checkpoint=a.checkpoint, num_classes=a.num_classes,
                                    cascade_mask=not a.no_cascade_mask))


def _cmd_taylor(a: argparse.Namespace) -> int:
    from ..analysis import run_taylor

    return _print(run_taylor(a.model, a.out, data=a.data, keep=a.keep, images=a.images, batch_size=a.batch,
                             seed=a.seed, qk=a.qk, normalize=a.normalize, img_size=a.img_size,
                             checkpoint=a.checkpoint, num_classes=a.num_classes, prune=a.prune,
                             parts=a.parts.split(","), finetune_epochs=a.finetune_epochs, lr=a.lr))


def _cmd_design_space(a: argparse.Namespace) -> int:
    from ..analysis import run_design_space

    return _print(run_design_space(a.studies, a.out, batch_size=a.batch, threads=a.threads, duration_s=a.duration,
                                   rounds=a.rounds, measure_speed=not a.no_speed, img_size=a.img_size))


def _cmd_block_complexity(a: argparse.Namespace) -> int:
    from ..analysis import run_block_complexity

    return _print(run_block_complexity(a.models, a.out, img_size=a.img_size, time_s=a.time, rounds=a.rounds,
                                       batch_size=a.batch, threads=a.threads))


def _model_args(p: argparse.ArgumentParser, labelled: bool) -> None:
    p.add_argument("--out", default="analysis_out", help="output folder (default: analysis_out)")
    p.add_argument("--img-size", type=int, default=None, help="input side (default: the model's native size)")
    p.add_argument("--checkpoint", default=None, help="weights to load (leanvit / timm / official layouts)")
    if labelled:
        p.add_argument("--data", required=True, help="ImageFolder root (train/ and val/), 'digits' or 'fake'")
        p.add_argument("--num-classes", type=int, default=None, help="classifier width (default 1000)")
        p.add_argument("--images", type=int, default=128, help="images drawn from the split (default 128)")
        p.add_argument("--batch", type=int, default=32)
        p.add_argument("--seed", type=int, default=0, help="seed of the image sample (recorded)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``leanvit analyze`` and its tools."""
    top = sub.add_parser("analyze", help="the papers' analyses: op breakdown, heads, Taylor, design space, SepViT")
    tools = top.add_subparsers(dest="tool", metavar="TOOL", required=True)

    p = tools.add_parser("op-breakdown", help="per-op / category / stage time with bytes and intensity")
    p.add_argument("models", nargs="+", help="leanvit names or timm:NAME")
    _model_args(p, labelled=False)
    p.add_argument("--backend", default="eager", choices=["eager", "jit", "openvino"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=_cmd_op_breakdown)

    p = tools.add_parser("head-similarity", help="per-layer head similarity (SHViT's or EfficientViT's definition)")
    p.add_argument("models", nargs="+")
    _model_args(p, labelled=True)
    p.add_argument("--definition", choices=["shvit", "efficientvit"], default=None,
                   help="shvit = attention maps, mean over pairs; efficientvit = head outputs, max over pairs")
    p.add_argument("--target", choices=["attention_map", "head_output"], default=None)
    p.add_argument("--reduce", choices=["mean_pairs", "max_max", "mean_of_max"], default=None)
    p.add_argument("--granularity", choices=["image", "batch"], default="image")
    p.add_argument("--drop-cls", action="store_true", help="drop CLS rows/columns of the maps (timm ViT/DeiT)")
    p.set_defaults(func=_cmd_head_similarity)

    p = tools.add_parser("head-ablation", help="top-1 change with one head removed / only one head kept")
    p.add_argument("model")
    _model_args(p, labelled=True)
    p.add_argument("--no-cascade-mask", action="store_true", help="EfficientViT-M: mask at the projection only")
    p.set_defaults(func=_cmd_head_ablation)

    p = tools.add_parser("taylor", help="Taylor importance of Q/K/V/FFN channels and kept ratios under a budget")
    p.add_argument("model")
    _model_args(p, labelled=True)
    p.add_argument("--keep", type=float, required=True, help="fraction of gated channels kept, e.g. 0.5")
    p.add_argument("--qk", choices=["joint", "separate"], default="joint")
    p.add_argument("--normalize", choices=["mean", "none"], default="mean")
    p.add_argument("--prune", action="store_true",
                   help="remove the dropped channels (exact slicing; see prune_channels for what can be removed)")
    p.add_argument("--parts", default="q,k,v,ffn", help="channels --prune removes, comma-separated (default q,k,v,ffn)")
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="after --prune, fine-tune this many passes over the Taylor images (default 0)")
    p.add_argument("--lr", type=float, default=1e-4, help="fine-tune learning rate (AdamW, cosine; default 1e-4)")
    p.set_defaults(func=_cmd_taylor)

    p = tools.add_parser("design-space", help="speed studies from config switches (SHViT Fig. 2 / Tab. 6, EViT Fig. 7)")
    p.add_argument("studies", nargs="+", choices=["shvit-macro", "shvit-tab6", "evit-fig7", "evit-tab6"])
    p.add_argument("--out", default="analysis_out")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--duration", type=float, default=2.0, help="seconds timed per model per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-speed", action="store_true", help="params and MACs only")
    p.add_argument("--img-size", type=int, default=None, help="override every point's input side (smoke runs)")
    p.set_defaults(func=_cmd_design_space)

    p = tools.add_parser("block-complexity", help="SepViT MAC formulas vs counted, and one block vs two")
    p.add_argument("models", nargs="*", default=["sepvit_lite", "sepvit_t", "sepvit_s", "sepvit_b"])
    p.add_argument("--out", default="analysis_out")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--time", type=float, default=0.0, help="seconds per round to time a block vs two Swin blocks")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=_cmd_block_complexity)
