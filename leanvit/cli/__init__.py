"""The ``leanvit`` command: a thin argument parser over the library API.

Each command group is a module here with a ``register(subparsers)`` function. Only the module of the
command being run is imported (and it imports the library only when its command runs), so
``leanvit --help`` and ``leanvit CMD --help`` return at once.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import LeanViTError

# command -> (module that registers it, one-line help for the top-level listing)
COMMANDS = {
    "models": ("leanvit.cli.models", "table of variants: params, MACs, resolution, paper top-1"),
    "flops": ("leanvit.cli.models", "measured MACs vs the papers"),
    "convert": ("leanvit.cli.models", "convert a checkpoint between leanvit / timm / official layouts"),
    "bench": ("leanvit.cli.bench", "measure throughput / latency / memory / training speed"),
    "demo": ("leanvit.cli.bench", "benchmark the leanvit zoo and baselines on this machine"),
    "export": ("leanvit.cli.deploy", "export a fused model to ONNX / OpenVINO / TorchScript / ExecuTorch / Core ML, verified"),
    "quantize": ("leanvit.cli.deploy", "int8 for OpenVINO / ONNX Runtime / ExecuTorch / PyTorch, with fp32 vs int8 top-1"),
    "train": ("leanvit.cli.train", "train a model (recipes, DDP, resume)"),
    "eval": ("leanvit.cli.train", "evaluate a checkpoint on a labelled folder"),
    "detect": ("leanvit.cli.detect", "COCO detection / instance segmentation: train, eval, predict, bench"),
    "segment": ("leanvit.cli.segment", "semantic segmentation (ADE20K): train, eval, predict, export"),
    "analyze": ("leanvit.cli.analyze", "the papers' analyses: op-time breakdown, head redundancy, Taylor, design space"),
    "weights": ("leanvit.cli.weights", "published weights per model: source, licence, paper top-1, cached"),
}


def _top_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog="leanvit", description="Memory-efficient vision transformers.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``leanvit`` parser: with ``command``, that command's group fully; else every group (imports all)."""
    parser, sub = _top_parser()
    modules = [COMMANDS[command][0]] if command in COMMANDS else dict.fromkeys(m for m, _ in COMMANDS.values())
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def _listing_parser() -> argparse.ArgumentParser:
    """Top-level help without importing any command module."""
    parser, sub = _top_parser()
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        parser = _listing_parser()
        args = parser.parse_args(argv)  # --help / --version / an unknown command's error
        if args.version:
            from .. import __version__

            print(__version__)
            return 0
        parser.print_help()
        return 2
    args = build_parser(command).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LeanViTError as e:
        # leanvit's own errors are written for people: one line, no traceback. Anything else (a shape error
        # inside torch, a bug) is raised with its traceback.
        print(f"leanvit {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
