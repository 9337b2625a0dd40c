"""``leanvit demo``: the lean part of the zoo and the papers' baselines, timed on this machine, written as
results.md / .csv / .json and a speed-accuracy plot."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from .._io import atomic_write_text
from ..models import get_config, list_models
from .options import BenchOptions
from .report import format_table, plot_speed_accuracy, to_markdown, write_results
from .runner import benchmark

__all__ = ["DEMO_BASELINES", "DEMO_MAX_MACS_M", "DEMO_OPTIONS", "demo_models", "run_demo"]

# Baselines of the papers' comparisons that build in timm without extra packages (ecosystem.md section 9).
DEMO_BASELINES = (
    "mobilenetv3_large_100", "mobilenetv4_conv_small", "repvit_m0_9", "levit_128s",
    "starnet_s1", "efficientvit_b0", "mobileone_s0", "efficientformerv2_s0",
)
DEMO_MAX_MACS_M = 1000
# Short windows: a demo compares models within one run, it is not a protocol measurement.
DEMO_OPTIONS = BenchOptions(warmup=0.5, duration=1.5, count_macs=True)


def demo_models() -> list[str]:
    """The lean part of the zoo: variants up to ~1 GMACs (the large SepViTs take seconds per batch)."""
    return [n for n in list_models() if (get_config(n).macs_m or 0) <= DEMO_MAX_MACS_M]


def run_demo(out: str | Path, models: Sequence[str] | None = None, baselines: Sequence[str] = DEMO_BASELINES,
             options: BenchOptions = DEMO_OPTIONS) -> list[dict[str, Any]]:
    """Time ``models`` (default :func:`demo_models`) and the timm ``baselines``; write the report into ``out``."""
    names = list(models) if models is not None else demo_models()
    names += [f"timm:{b}" for b in baselines]
    records = benchmark(names, options.replace(mode="throughput", count_macs=True))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    first = records[0]
    header = (
        f"# leanvit demo: throughput on this machine\n\n"
        f"- device: {first['device']}\n- settings: fused, backend {options.backend}"
        f"{' (frozen, optimize_for_inference)' if options.jit_optimize else ''}, precision {first['precision']}, "
        f"batch {first['batch_size']}, {options.threads} thread(s), warm-up {first['warmup_s']} s, "
        f"timed {first['duration_s']} s (short windows: compare within this run only)\n"
        f"- versions: {', '.join(f'{k} {v}' for k, v in first['versions'].items())}\n"
        f"- top-1: leanvit = paper values; timm baselines = timm's ImageNet results (random weights are timed)\n\n"
    )
    atomic_write_text(out / "results.md", header + to_markdown(records))
    write_results(records, out / "results.csv")
    write_results(records, out / "results.json")
    plot_speed_accuracy(records, out / "speed.png", title=f"leanvit demo on {first['device']}")
    print(format_table(records))
    print(f"wrote {out / 'results.md'}, results.csv, results.json, speed.png", file=sys.stderr)
    return records
