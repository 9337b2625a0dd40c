"""The benchmark's options, declared once: :class:`BenchOptions` is what ``benchmark()`` takes, what each single
run is described by (the same object with every default resolved, one backend and one precision), and what the
``leanvit bench`` / ``leanvit demo`` flags are generated from (no torch import here, so ``--help`` is instant).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from .._flags import add_dataclass_flags, dataclass_from_args, option
from ..deploy.routes import BACKENDS, PRECISIONS

__all__ = ["BenchOptions", "MODES", "PAPER_WARMUP_S", "PAPER_DURATION_S", "DEFAULT_WARMUP_S", "DEFAULT_DURATION_S",
           "ROUND_SPREAD_BOUND_PCT", "DEMO_OPTIONS", "add_option_flags", "options_from_args"]

MODES = ("throughput", "latency", "memory", "train")
# The papers' timing (LeViT's protocol, docs/benchmarks.md): 10 s warm-up, 60 s timed.
PAPER_WARMUP_S, PAPER_DURATION_S = 10.0, 60.0
# leanvit's shorter default windows (``warmup`` / ``duration`` left at None).
DEFAULT_WARMUP_S, DEFAULT_DURATION_S = 2.0, 10.0
# With --rounds, a run whose per-round medians differ by more than this (max - min over their median, in percent),
# once the load every run of the race saw in each round is divided out (bench.timing.round_loads), is marked
# unsteady: load hit it and not its neighbours, so its rank against them is not trustworthy. 10 %: the closest papers' neighbours the demo ranks (efficientvit_m1 / m2, 167 / 201 MMACs) are
# ~20 % apart in MACs.
ROUND_SPREAD_BOUND_PCT = 10.0


@dataclass(frozen=True)
class BenchOptions:
    """How to measure a list of models; ``None`` means the protocol default (see ``benchmark``).

    ``benchmark`` resolves the defaults and gives each single run (one model, backend and precision) its own
    ``BenchOptions``: then ``backend`` and ``precision`` are single names and ``batch_size``, ``img_size``,
    ``warmup``, ``duration`` are set.
    """

    mode: str = option("throughput", "what to measure", choices=MODES)
    backend: str | Sequence[str] | None = option(
        None, f"one or more (comma-separated) of {', '.join(BACKENDS)}, or auto: race the exact fp32 routes in "
              "interleaved rounds and keep each model's fastest (default: jit, the papers' trace; CPU fp32 latency "
              "mode: auto)")
    precision: str | Sequence[str] | None = option(
        None, f"one or more of {', '.join(PRECISIONS)} (default: fp32 on CPU, fp16 AMP on GPU; on CPU bf16 and int8 "
              "only where the CPU runs them natively: --roofline measures what they cost where it does not)")
    device: str = option("cpu", "cpu or cuda[:N]")
    batch_size: int | None = option(None, "default: 16 CPU / 256 GPU; 1 for latency", type=int)
    threads: int | None = option(1, "CPU threads for every runtime (default: 1, as the papers)", type=int)
    img_size: int | None = option(None, "input side (default: each model's native size; a checkpoint's: the size it "
                                  "was trained at)", type=int)
    checkpoint: str | None = option(None, "trained weights to time instead of random ones (one model; leanvit / timm / "
                                    "official layouts)")
    warmup: float | None = option(None, f"warm-up seconds per run (default {DEFAULT_WARMUP_S:g})", type=float)
    duration: float | None = option(None, f"timed seconds per run (default {DEFAULT_DURATION_S:g}; with --rounds: "
                                          "per round)", type=float)
    fuse: bool = option(True, "benchmark the unfused model", flag="--no-fuse")
    allow_fallback: bool = option(False, "run fp32 when the requested precision is unavailable instead of failing")
    bf16_mode: str = option("autocast", "CPU bf16 in PyTorch: autocast or cast weights+inputs to bf16",
                            choices=("autocast", "convert"))
    compile_mode: str | None = option(None, "torch.compile mode for --backend compile")
    count_macs: bool = option(False, "also count MACs (fused, batch 1)", flag="--macs")
    roofline: bool = option(False, "also report each run's share of this CPU's single-thread matmul peak: fp32, "
                                   "int8 where the CPU has int8 dot products, bf16 where it is native (MACs x img/s / "
                                   "peak; CPU, 1 thread; measures the peaks first, ~20 s)")
    perturb_bn: bool = option(True, "keep the random init's identity BatchNorms", flag="--no-perturb-bn")
    clock: str = option("wall", "time calls by wall clock or process CPU time (steady on a busy machine; 1 thread)",
                        choices=("wall", "cpu"))
    channels_last: bool = option(False, "PyTorch backends in NHWC memory format")
    jit_optimize: bool = option(False, "--backend jit on CPU only: torch.jit.freeze + optimize_for_inference after "
                                       "the trace (exact; faster or slower depending on model and layout, so measure)")
    rounds: int | None = option(
        None, "time all runs in this many interleaved rounds (A B C .. A B C ..: load that comes and goes hits every "
              f"run alike); each reports its rounds' spread and is marked unsteady beyond {ROUND_SPREAD_BOUND_PCT:g} %%"
              " (throughput / latency modes)", type=int)
    isolate: bool | None = option(None, "run each configuration in a fresh process (default: on for CPU memory mode)",
                                  action=argparse.BooleanOptionalAction)
    progress: bool = option(True, "no progress bar", flag="--no-progress")
    seed: int = option(0, "seed of the random weights and images", type=int)

    def replace(self, **changes: Any) -> "BenchOptions":
        """A copy with ``changes`` applied (unknown names raise TypeError)."""
        return dataclasses.replace(self, **changes)


# ``leanvit demo``: the papers' protocol (jit) and OpenVINO fp32 (leanvit's deploy form), short windows in interleaved
# rounds on the CPU clock: a demo compares models within one run on whatever machine it is given (busy or not); it is
# not a protocol measurement (``leanvit bench --paper`` is).
DEMO_OPTIONS = BenchOptions(backend="jit,openvino", precision="fp32", threads=1, clock="cpu", rounds=3, warmup=0.3,
                            duration=0.3, count_macs=True)


def add_option_flags(parser: argparse.ArgumentParser, exclude: Sequence[str] = (),
                     defaults: BenchOptions | None = None) -> None:
    """Add one flag per :class:`BenchOptions` field (``--batch-size`` for ``batch_size``; booleans that
    default to True get ``--no-...``); ``defaults`` (e.g. :data:`DEMO_OPTIONS`) replace the class defaults for this
    command."""
    values = dataclasses.asdict(defaults) if defaults is not None else {}
    add_dataclass_flags(parser, BenchOptions, exclude, **values)


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """The :class:`BenchOptions` an argparse namespace (from :func:`add_option_flags`) describes."""
    return dataclass_from_args(BenchOptions, args)
