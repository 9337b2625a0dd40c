"""The benchmark's options, declared once: :class:`BenchOptions` is what ``benchmark()`` takes and what
the ``leanvit bench`` / ``leanvit demo`` flags are generated from (no torch import here, so ``--help``
is instant).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from .._flags import add_dataclass_flags, dataclass_from_args, option
from ..deploy.names import BACKENDS, PRECISIONS

__all__ = ["BenchOptions", "MODES", "PAPER_WARMUP_S", "PAPER_DURATION_S", "add_option_flags", "options_from_args"]

MODES = ("throughput", "latency", "memory", "train")
# The papers' timing (LeViT's protocol, docs/benchmarks.md): 10 s warm-up, 60 s timed.
PAPER_WARMUP_S, PAPER_DURATION_S = 10.0, 60.0


@dataclass(frozen=True)
class BenchOptions:
    """How to measure a list of models; ``None`` means the protocol default (see ``benchmark``)."""

    mode: str = option("throughput", "what to measure", choices=MODES)
    backend: str | Sequence[str] = option(
        "jit", f"one or more (comma-separated) of {', '.join(BACKENDS)} (default: jit, the papers' trace)")
    precision: str | Sequence[str] | None = option(
        None, f"one or more of {', '.join(PRECISIONS)} (default: fp32 on CPU, fp16 AMP on GPU)")
    device: str = option("cpu", "cpu or cuda[:N]")
    batch_size: int | None = option(None, "default: 16 CPU / 256 GPU; 1 for latency", type=int)
    threads: int | None = option(1, "CPU threads for every runtime (default: 1, as the papers)", type=int)
    img_size: int | None = option(None, "input side (default: each model's native size)", type=int)
    warmup: float | None = option(None, "warm-up seconds per run (default 2)", type=float)
    duration: float | None = option(None, "timed seconds per run (default 10)", type=float)
    fuse: bool = option(True, "benchmark the unfused model", flag="--no-fuse")
    allow_fallback: bool = option(False, "run fp32 when the requested precision is unavailable instead of failing")
    bf16_mode: str = option("autocast", "CPU bf16 in PyTorch: autocast or cast weights+inputs to bf16",
                            choices=("autocast", "convert"))
    compile_mode: str | None = option(None, "torch.compile mode for --backend compile")
    count_macs: bool = option(False, "also count MACs (fused, batch 1)", flag="--macs")
    roofline: bool = option(False, "also report each run's share of this CPU's single-thread matmul peak, fp32 and "
                                   "(where native) bf16 (MACs x img/s / peak; CPU, 1 thread; measures the peaks first, "
                                   "~10 s)")
    perturb_bn: bool = option(True, "keep the random init's identity BatchNorms", flag="--no-perturb-bn")
    clock: str = option("wall", "time calls by wall clock or process CPU time (steady on a busy machine; 1 thread)",
                        choices=("wall", "cpu"))
    channels_last: bool = option(False, "PyTorch backends in NHWC memory format")
    jit_optimize: bool = option(False, "--backend jit on CPU only: torch.jit.freeze + optimize_for_inference after "
                                       "the trace (exact; faster or slower depending on model and layout, so measure)")
    isolate: bool | None = option(None, "run each configuration in a fresh process (default: on for CPU memory mode)",
                                  action=argparse.BooleanOptionalAction)
    progress: bool = option(True, "no progress bar", flag="--no-progress")

    def replace(self, **changes: Any) -> "BenchOptions":
        """A copy with ``changes`` applied (unknown names raise TypeError)."""
        return dataclasses.replace(self, **changes)


def add_option_flags(parser: argparse.ArgumentParser, exclude: Sequence[str] = (), **defaults: Any) -> None:
    """Add one flag per :class:`BenchOptions` field (``--batch-size`` for ``batch_size``; booleans that
    default to True get ``--no-...``); ``defaults`` override the dataclass defaults for this command."""
    add_dataclass_flags(parser, BenchOptions, exclude, **defaults)


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """The :class:`BenchOptions` an argparse namespace (from :func:`add_option_flags`) describes."""
    return dataclass_from_args(BenchOptions, args)
