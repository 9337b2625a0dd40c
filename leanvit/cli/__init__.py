"""The ``leanvit`` command: a thin argument parser over the library API.

Each area contributes its sub-commands through a ``register(subparsers)`` function in its own
``cli`` module, so this file stays small and knows nothing about the work itself.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that add sub-commands; each defines register(subparsers) and sets ``func`` on its parsers.
COMMAND_MODULES = (
    "leanvit.cli.models",  # models, flops, convert
    "leanvit.cli.bench",  # bench, demo
    "leanvit.cli.deploy",  # export
    "leanvit.cli.train",  # train, eval
    "leanvit.cli.analyze",  # analyze <tool>
)


def build_parser() -> argparse.ArgumentParser:
    """The full ``leanvit`` argument parser."""
    parser = argparse.ArgumentParser(prog="leanvit", description="Memory-efficient vision transformers.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:  # an area not installed/built yet: skip only that module
            if e.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from .. import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (KeyError, ValueError, FileNotFoundError, RuntimeError) as e:
        # Library errors are written for people: print them without a traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"leanvit {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
