"""``leanvit bench`` (measure models) and ``leanvit demo`` (the zoo plus baselines on this machine)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..deploy.runtime import BACKENDS, PRECISIONS
from ..bench.runner import MODES, benchmark

__all__ = ["register", "DEMO_BASELINES"]

# Baselines of the papers' comparisons that build in timm without extra packages (ecosystem.md section 9).
DEMO_BASELINES = (
    "mobilenetv3_large_100", "mobilenetv4_conv_small", "repvit_m0_9", "levit_128s",
    "starnet_s1", "efficientvit_b0", "mobileone_s0", "efficientformerv2_s0",
)
PAPER_WARMUP_S, PAPER_DURATION_S = 10.0, 60.0
DEMO_MAX_MACS_M = 1000


def _add_run_options(p: argparse.ArgumentParser, default_warmup: float | None, default_duration: float | None) -> None:
    p.add_argument("--backend", default="jit",
                   help=f"one or more (comma-separated) of {', '.join(BACKENDS)} (default: jit, the papers' trace)")
    p.add_argument("--precision", default=None,
                   help=f"one or more of {', '.join(PRECISIONS)} (default: fp32 on CPU, fp16 AMP on GPU)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 16 CPU / 256 GPU; 1 for latency")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for every runtime (default: 1, as the papers)")
    p.add_argument("--img-size", type=int, default=None, help="input side (default: each model's native size)")
    p.add_argument("--warmup", type=float, default=default_warmup, help="warm-up seconds per run")
    p.add_argument("--duration", type=float, default=default_duration, help="timed seconds per run")
    p.add_argument("--no-fuse", dest="fuse", action="store_false", help="benchmark the unfused model")
    p.add_argument("--allow-fallback", action="store_true",
                   help="run fp32 when the requested precision is unavailable instead of failing")
    p.add_argument("--bf16-mode", choices=("autocast", "convert"), default="autocast",
                   help="CPU bf16 in PyTorch: autocast (default) or cast weights+inputs to bf16")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode for --backend compile")
    p.add_argument("--channels-last", action="store_true", help="PyTorch backends in NHWC memory format")
    p.add_argument("--jit-optimize", action="store_true",
                   help="--backend jit on CPU only: torch.jit.freeze + optimize_for_inference after the trace "
                        "(exact; faster or slower depending on model and layout, so measure)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="time calls by wall clock (default) or process CPU time (steady on a busy machine; 1 thread)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def register(subparsers: Any) -> None:
    """Add the ``bench`` and ``demo`` sub-commands."""
    p = subparsers.add_parser(
        "bench", help="measure throughput / latency / memory / training speed",
        description="Benchmark leanvit or timm models (prefix timm: for timm's port of a leanvit name). "
                    "Defaults follow the papers: fused, traced, CPU batch 16 on 1 thread (GPU: batch 256, AMP).",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="leanvit or timm model names")
    p.add_argument("--mode", choices=MODES, default="throughput")
    _add_run_options(p, None, None)
    p.add_argument("--paper", action="store_true",
                   help=f"the papers' timing: {PAPER_WARMUP_S:g} s warm-up, {PAPER_DURATION_S:g} s timed")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="run each configuration in a fresh process (default: on for CPU memory mode)")
    p.add_argument("--macs", action="store_true", help="also count MACs (fused, batch 1)")
    p.add_argument("--out", type=Path, default=None, help="write results to FILE.json or FILE.csv")
    p.add_argument("--plot", type=Path, default=None, help="write a speed-accuracy plot (FILE.png)")
    p.set_defaults(func=_bench)

    d = subparsers.add_parser(
        "demo", help="benchmark the leanvit zoo and baselines on this machine",
        description="Throughput of every leanvit model and a few timm baselines (fused, traced, batch 16, "
                    "1 thread, short windows); writes results.md/.csv/.json and speed.png into --out.",
    )
    d.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory (default: out/demo)")
    d.add_argument("--models", nargs="*", default=None,
                   help=f"leanvit models (default: every variant up to {DEMO_MAX_MACS_M} MMACs)")
    d.add_argument("--baselines", nargs="*", default=list(DEMO_BASELINES), help="timm baselines")
    _add_run_options(d, 0.5, 1.5)
    d.set_defaults(func=_demo)


def _run(models: list[str], args: argparse.Namespace, **extra: Any) -> list[dict[str, Any]]:
    return benchmark(
        models, backend=args.backend, precision=args.precision, device=args.device, batch_size=args.batch_size,
        threads=args.threads, img_size=args.img_size, warmup=args.warmup, duration=args.duration, fuse=args.fuse,
        allow_fallback=args.allow_fallback, bf16_mode=args.bf16_mode, compile_mode=args.compile_mode,
        clock=args.clock, channels_last=args.channels_last, jit_optimize=args.jit_optimize, progress=args.progress,
        **extra,
    )


def _bench(args: argparse.Namespace) -> int:
    from ..bench.report import format_table, plot_speed_accuracy, write_results

    if args.out is not None and args.out.suffix.lower() not in (".json", ".csv"):
        raise ValueError(f"--out must end in .json or .csv, got {args.out.name!r}")
    if args.paper:
        args.warmup = PAPER_WARMUP_S if args.warmup is None else args.warmup
        args.duration = PAPER_DURATION_S if args.duration is None else args.duration
    records = _run(args.models, args, mode=args.mode, isolate=args.isolate, count_macs=args.macs)
    print(format_table(records))
    if records:
        print(f"device: {records[0]['device']}; versions: "
              + ", ".join(f"{k} {v}" for k, v in records[0]["versions"].items()))
    if args.out:
        print(f"results: {write_results(records, args.out)}")
    if args.plot:
        print(f"plot: {plot_speed_accuracy(records, args.plot)}")
    return 1 if any(r.get("error") for r in records) else 0


def _demo_models() -> list[str]:
    """The lean part of the zoo: variants up to ~1 GMACs (the large SepViTs take seconds per batch)."""
    from .. import get_config, list_models

    return [n for n in list_models() if (get_config(n).macs_m or 0) <= DEMO_MAX_MACS_M]


def _demo(args: argparse.Namespace) -> int:
    from .._io import atomic_write_bytes
    from ..bench.report import format_table, plot_speed_accuracy, to_markdown, write_results

    models = list(args.models) if args.models is not None else _demo_models()
    models += [f"timm:{b}" for b in args.baselines]
    records = _run(models, args, mode="throughput", count_macs=True)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    first = records[0]
    header = (
        f"# leanvit demo: throughput on this machine\n\n"
        f"- device: {first['device']}\n- settings: fused, backend {args.backend}"
        f"{' (frozen, optimize_for_inference)' if args.jit_optimize else ''}, precision {first['precision']}, "
        f"batch {first['batch_size']}, {args.threads} thread(s), warm-up {args.warmup} s, timed {args.duration} s "
        f"(short windows: compare within this run only)\n"
        f"- versions: {', '.join(f'{k} {v}' for k, v in first['versions'].items())}\n"
        f"- top-1: leanvit = paper values; timm baselines = timm's ImageNet results (random weights are timed)\n\n"
    )
    atomic_write_bytes(out / "results.md", (header + to_markdown(records)).encode())
    write_results(records, out / "results.csv")
    write_results(records, out / "results.json")
    plot_speed_accuracy(records, out / "speed.png", title=f"leanvit demo on {first['device']}")
    print(format_table(records))
    print(f"wrote {out / 'results.md'}, results.csv, results.json, speed.png", file=sys.stderr)
    return 1 if any(r.get("error") for r in records) else 0
