"""``leanvit bench`` (measure models) and ``leanvit demo`` (the zoo plus baselines on this machine).

Flags come from :class:`leanvit.bench.options.BenchOptions`; this module imports no torch until a
command runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..bench.options import DEMO_OPTIONS, PAPER_DURATION_S, PAPER_WARMUP_S, add_option_flags, options_from_args
from ..errors import InvalidValueError

__all__ = ["register"]

DEMO_HELP = "leanvit models (default: every variant up to 1000 MMACs)"


def register(subparsers: Any) -> None:
    """Add the ``bench`` and ``demo`` sub-commands."""
    p = subparsers.add_parser(
        "bench", help="measure throughput / latency / memory / training speed",
        description="Benchmark leanvit or timm models (prefix timm: for timm's port of a leanvit name). "
                    "Defaults follow the papers: fused, traced, CPU batch 16 on 1 thread (GPU: batch 256, AMP).",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="leanvit or timm model names")
    add_option_flags(p)
    p.add_argument("--paper", action="store_true",
                   help=f"the papers' timing: {PAPER_WARMUP_S:g} s warm-up, {PAPER_DURATION_S:g} s timed")
    p.add_argument("--out", type=Path, default=None, help="write results to FILE.json or FILE.csv")
    p.add_argument("--plot", type=Path, default=None, help="write a speed-accuracy plot (FILE.png)")
    p.set_defaults(func=_bench)

    d = subparsers.add_parser(
        "demo", help="benchmark the leanvit zoo and baselines on this machine",
        description="Throughput of every leanvit model and a few timm baselines (fused, batch 16, 1 thread): the "
                    "papers' jit protocol and OpenVINO fp32, short windows in interleaved rounds on the process CPU "
                    "clock (steady on a busy machine), each model's spread between rounds, unsteady results marked, "
                    "each family's measured order checked against the papers'; writes results.md/.csv/.json and "
                    "speed.png (fastest exact route next to the papers' protocol) into --out.",
    )
    d.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory (default: out/demo)")
    d.add_argument("--models", nargs="*", default=None, help=DEMO_HELP)
    d.add_argument("--baselines", nargs="*", default=None, help="timm baselines (default: the papers' comparisons)")
    add_option_flags(d, exclude=("mode", "count_macs", "isolate", "checkpoint"), defaults=DEMO_OPTIONS)
    d.set_defaults(func=_demo)


def _bench(args: argparse.Namespace) -> int:
    from ..bench.report import format_table, plot_speed_accuracy, write_results
    from ..bench.runner import benchmark

    if args.out is not None and args.out.suffix.lower() not in (".json", ".csv"):
        raise InvalidValueError(f"--out must end in .json or .csv, got {args.out.name!r}")
    options = options_from_args(args)
    if args.paper:
        options = options.replace(warmup=PAPER_WARMUP_S if options.warmup is None else options.warmup,
                                  duration=PAPER_DURATION_S if options.duration is None else options.duration)
    records = benchmark(args.models, options)
    print(format_table(records))
    if records:
        print(f"device: {records[0]['device']}; versions: "
              + ", ".join(f"{k} {v}" for k, v in records[0]["versions"].items()))
    if args.out:
        print(f"results: {write_results(records, args.out)}")
    if args.plot:
        print(f"plot: {plot_speed_accuracy(records, args.plot)}")
    return 1 if any(r.get("error") for r in records) else 0


def _demo(args: argparse.Namespace) -> int:
    from ..bench.demo import DEMO_BASELINES, run_demo

    baselines = DEMO_BASELINES if args.baselines is None else args.baselines
    records = run_demo(args.out, args.models, baselines, options_from_args(args))
    return 1 if any(r.get("error") for r in records) else 0
