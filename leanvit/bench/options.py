"""The benchmark's options, declared once: :class:`BenchOptions` is what ``benchmark()`` takes and what
the ``leanvit bench`` / ``leanvit demo`` flags are generated from (no torch import here, so ``--help``
is instant).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..deploy.names import BACKENDS, PRECISIONS

__all__ = ["BenchOptions", "MODES", "PAPER_WARMUP_S", "PAPER_DURATION_S", "add_option_flags", "options_from_args"]

MODES = ("throughput", "latency", "memory", "train")
# The papers' timing (LeViT's protocol, docs/benchmarks.md): 10 s warm-up, 60 s timed.
PAPER_WARMUP_S, PAPER_DURATION_S = 10.0, 60.0


def _opt(default: Any, help: str, flag: str | None = None, **argparse_kwargs: Any) -> Any:
    return field(default=default, metadata=dict(help=help, flag=flag, argparse=argparse_kwargs))


@dataclass(frozen=True)
class BenchOptions:
    """How to measure a list of models; ``None`` means the protocol default (see ``benchmark``)."""

    mode: str = _opt("throughput", "what to measure", choices=MODES)
    backend: str | Sequence[str] = _opt(
        "jit", f"one or more (comma-separated) of {', '.join(BACKENDS)} (default: jit, the papers' trace)")
    precision: str | Sequence[str] | None = _opt(
        None, f"one or more of {', '.join(PRECISIONS)} (default: fp32 on CPU, fp16 AMP on GPU)")
    device: str = _opt("cpu", "cpu or cuda[:N]")
    batch_size: int | None = _opt(None, "default: 16 CPU / 256 GPU; 1 for latency", type=int)
    threads: int | None = _opt(1, "CPU threads for every runtime (default: 1, as the papers)", type=int)
    img_size: int | None = _opt(None, "input side (default: each model's native size)", type=int)
    warmup: float | None = _opt(None, "warm-up seconds per run (default 2)", type=float)
    duration: float | None = _opt(None, "timed seconds per run (default 10)", type=float)
    fuse: bool = _opt(True, "benchmark the unfused model", flag="--no-fuse")
    allow_fallback: bool = _opt(False, "run fp32 when the requested precision is unavailable instead of failing")
    bf16_mode: str = _opt("autocast", "CPU bf16 in PyTorch: autocast or cast weights+inputs to bf16",
                          choices=("autocast", "convert"))
    compile_mode: str | None = _opt(None, "torch.compile mode for --backend compile")
    count_macs: bool = _opt(False, "also count MACs (fused, batch 1)", flag="--macs")
    perturb_bn: bool = _opt(True, "keep the random init's identity BatchNorms", flag="--no-perturb-bn")
    clock: str = _opt("wall", "time calls by wall clock or process CPU time (steady on a busy machine; 1 thread)",
                      choices=("wall", "cpu"))
    channels_last: bool = _opt(False, "PyTorch backends in NHWC memory format")
    jit_optimize: bool = _opt(False, "--backend jit on CPU only: torch.jit.freeze + optimize_for_inference after "
                                     "the trace (exact; faster or slower depending on model and layout, so measure)")
    isolate: bool | None = _opt(None, "run each configuration in a fresh process (default: on for CPU memory mode)",
                                action=argparse.BooleanOptionalAction)
    progress: bool = _opt(True, "no progress bar", flag="--no-progress")

    def replace(self, **changes: Any) -> "BenchOptions":
        """A copy with ``changes`` applied (unknown names raise TypeError)."""
        return dataclasses.replace(self, **changes)


def add_option_flags(parser: argparse.ArgumentParser, exclude: Sequence[str] = (), **defaults: Any) -> None:
    """Add one flag per :class:`BenchOptions` field (``--batch-size`` for ``batch_size``; booleans that
    default to True get ``--no-...``); ``defaults`` override the dataclass defaults for this command."""
    for f in dataclasses.fields(BenchOptions):
        if f.name in exclude:
            continue
        meta = f.metadata
        default = defaults.get(f.name, f.default)
        kwargs = dict(meta["argparse"])
        if f.type in ("bool",) and "action" not in kwargs:
            kwargs["action"] = "store_false" if default else "store_true"
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        parser.add_argument(flag, dest=f.name, default=default, help=meta["help"], **kwargs)


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """The :class:`BenchOptions` an argparse namespace (from :func:`add_option_flags`) describes."""
    return BenchOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(BenchOptions)
                           if hasattr(args, f.name)})
