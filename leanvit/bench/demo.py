"""``leanvit demo``: the lean part of the zoo and the papers' baselines, timed on this machine, written as
results.md / .csv / .json and a speed-accuracy plot.

Built to tell the truth on a busy machine: every model runs the papers' protocol (fused, ``torch.jit.trace``,
fp32, batch 16, 1 thread) and OpenVINO fp32 (leanvit's deploy form), all of them timed on the process CPU clock in
interleaved rounds (load that comes and goes hits every model alike), each with the spread of its rounds; a model
whose rounds disagree by more than :data:`~leanvit.bench.options.ROUND_SPREAD_BOUND_PCT` is marked. The report
checks, per family, that the measured order is the papers' (a smaller variant is faster), and the plot shows the
fastest exact route next to the papers' jit protocol.

Where its time goes (process CPU time, 38 runs, 2-core Zen 4 class EPYC, 2026-12-07: 181 s in all): the timed
rounds with their warm-ups ~87 s, building ~85 s (OpenVINO conversion and compile ~1.5 s per model, the jit trace
~0.9 s, model creation, fusion and the logit checks the rest). OpenVINO conversion was 4.9 s per model (317 s in
all) while it re-checked its trace and ran usage telemetry threads (:func:`~leanvit.deploy.writers.to_openvino`).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from .._io import atomic_write_text
from .._text import markdown_table
from ..deploy.verify import FP32_ATOL
from ..models import get_config, list_models
from .options import DEMO_OPTIONS, ROUND_SPREAD_BOUND_PCT, BenchOptions
from .report import format_table, plot_speed_accuracy_panels, to_markdown, write_results
from .runner import benchmark, fastest_per_model

__all__ = ["DEMO_BASELINES", "DEMO_MAX_MACS_M", "DEMO_OPTIONS", "PAPERS_ROUTE", "demo_models", "family_rankings",
           "fastest_exact", "ranking_speed", "run_demo"]

# Baselines of the papers' comparisons that build in timm without extra packages.
DEMO_BASELINES = (
    "mobilenetv3_large_100", "mobilenetv4_conv_small", "repvit_m0_9", "levit_128s",
    "starnet_s1", "efficientvit_b0", "mobileone_s0", "efficientformerv2_s0",
)
DEMO_MAX_MACS_M = 1000
PAPERS_ROUTE = "jit"  # the papers' CPU protocol: fused model, torch.jit.trace


def demo_models() -> list[str]:
    """The lean part of the zoo: variants up to ~1 GMACs (the large SepViTs take seconds per batch)."""
    return [n for n in list_models() if (get_config(n).macs_m or 0) <= DEMO_MAX_MACS_M]


def fastest_exact(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, its fastest fp32 run whose logits match PyTorch's (max abs diff <= the export's fp32 bound)."""
    def exact(r: dict[str, Any]) -> bool:
        return (bool(r.get("throughput")) and not r.get("error") and r.get("precision") == "fp32"
                and (r.get("max_abs_diff") or 0.0) <= FP32_ATOL)

    return [fastest for _, fastest in fastest_per_model(records, exact, ranking_speed) if fastest is not None]


def ranking_speed(record: dict[str, Any]) -> float:
    """What the demo ranks by: the fastest interleaved round's images/s (load only ever adds time, so the least
    disturbed round is the model's own speed: on the loaded 2-core EPYC, 2026-12-07, two runs ranked both families
    in the papers' order by it while the rounds' medians swapped efficientvit_m1 / m2 and m3 / m4 in one of them);
    a record timed in one window: its throughput."""
    return record.get("best_round_throughput") or record["throughput"]


def family_rankings(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each leanvit family with several timed variants: the papers' order (fewest MACs first: the papers' tables
    list each family's variants fastest first) and the measured one (fastest first, by :func:`ranking_speed`), and
    whether they agree. ``records``: one per model (one route)."""
    rows = []
    leanvit = [r for r in records if r.get("source") == "leanvit" and r.get("throughput")]
    for family in dict.fromkeys(r["family"] for r in leanvit):
        members = [r for r in leanvit if r["family"] == family]
        if len(members) < 2:
            continue
        papers = [r["model"] for r in sorted(members, key=lambda r: get_config(r["model"]).macs)]
        measured = [r["model"] for r in sorted(members, key=lambda r: -ranking_speed(r))]
        rows.append(dict(family=family, papers=papers, measured=measured, agrees=papers == measured,
                         unsteady=[r["model"] for r in members if r.get("unsteady")]))
    return rows


def _rankings_markdown(title: str, rows: Sequence[dict[str, Any]]) -> str:
    return f"### {title}\n\n" + markdown_table(
        ["family", "papers' order (fastest first)", "measured order (fastest round)", "agrees", "unsteady"],
        [[r["family"], " > ".join(r["papers"]), " > ".join(r["measured"]), "yes" if r["agrees"] else "**no**",
          ", ".join(r["unsteady"]) or "-"] for r in rows])


def run_demo(out: str | Path, models: Sequence[str] | None = None, baselines: Sequence[str] = DEMO_BASELINES,
             options: BenchOptions = DEMO_OPTIONS) -> list[dict[str, Any]]:
    """Time ``models`` (default :func:`demo_models`) and the timm ``baselines``; write the report into ``out``."""
    names = list(models) if models is not None else demo_models()
    names += [f"timm:{b}" for b in baselines]
    records = benchmark(names, options.replace(mode="throughput", count_macs=True))
    papers = [r for r in records if r["backend"] == PAPERS_ROUTE]
    fastest = fastest_exact(records)
    rankings = {f"papers' protocol ({PAPERS_ROUTE} fp32)": family_rankings(papers),
                "fastest exact route": family_rankings(fastest)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    first = records[0]
    backends = options.backend if isinstance(options.backend, str) else ",".join(options.backend or ())
    timing = (f"{options.rounds} interleaved rounds x {first['duration_s']} s on the {options.clock} clock, each "
              f"model's rounds' spread in 'rounds %', '!' beyond {ROUND_SPREAD_BOUND_PCT:g} %" if options.rounds
              else f"one window of {first['duration_s']} s each on the {options.clock} clock")
    header = (
        f"# leanvit demo: throughput on this machine\n\n"
        f"- device: {first['device']}\n- settings: fused, backends {backends}"
        f"{' (frozen, optimize_for_inference)' if options.jit_optimize else ''}, precision {first['precision']}, "
        f"batch {first['batch_size']}, {options.threads} thread(s), warm-up {first['warmup_s']} s, "
        f"{timing} (short windows: compare within this run only)\n"
        f"- fastest exact route: per model the fastest of these fp32 routes whose logits match PyTorch's "
        f"(max abs diff <= {FP32_ATOL:g})\n"
        f"- versions: {', '.join(f'{k} {v}' for k, v in first['versions'].items())}\n"
        f"- top-1: leanvit = paper values; timm baselines = timm's ImageNet results (random weights are timed)\n\n"
    )
    body = "\n".join(_rankings_markdown(title, rows) for title, rows in rankings.items())
    atomic_write_text(out / "results.md", header + "## Rankings within each family\n\n" + body
                      + "\n## Every run\n\n" + to_markdown(records))
    write_results(records, out / "results.csv")
    write_results(records, out / "results.json")
    plot_speed_accuracy_panels({f"papers' protocol: {PAPERS_ROUTE} fp32": papers, "fastest exact route": fastest},
                               out / "speed.png", title=f"leanvit demo on {first['device']}", label_routes=True)
    print(format_table(records))
    for title, rows in rankings.items():
        for r in rows:
            print(f"{title}: {r['family']}: {' > '.join(r['measured'])} "
                  f"({'the papers order' if r['agrees'] else 'NOT the papers order ' + ' > '.join(r['papers'])})")
    print(f"wrote {out / 'results.md'}, results.csv, results.json, speed.png", file=sys.stderr)
    return records
