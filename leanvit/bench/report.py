"""Benchmark records out: a terminal / markdown table, CSV or JSON files, and the speed-accuracy plot."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._io import atomic_write_bytes
from .._text import format_cell, markdown_table, text_table
from ..errors import InvalidValueError
from .options import ROUND_SPREAD_BOUND_PCT

__all__ = ["COLUMNS", "format_table", "to_markdown", "write_results", "plot_speed_accuracy",
           "plot_speed_accuracy_panels"]

# (record key, header, format) shown in tables; files carry every field.
COLUMNS = (
    ("model", "model", ""),
    ("backend", "backend", ""),
    ("precision", "prec", ""),
    ("batch_size", "batch", ""),
    ("threads", "thr", ""),
    ("img_size", "img", ""),
    ("throughput", "img/s", ".1f"),
    ("latency_ms", "ms (p50)", ".2f"),
    ("latency_p90_ms", "ms (p90)", ".2f"),
    ("spread_pct", "spread %", ".1f"),
    ("round_spread_pct", "rounds %", ".1f"),
    ("peak_memory_mb", "peak MB", ".1f"),
    ("rel_err", "err/spread", ".1e"),
    ("top1_agreement", "top-1 agr", ".2f"),
    ("params_m", "params M", ".2f"),
    ("macs_m", "MMACs", ".0f"),
    ("roofline_int8_pct", "% int8 roof", ".0f"),
    ("roofline_bf16_pct", "% bf16 roof", ".0f"),
    ("roofline_fp32_pct", "% fp32 roof", ".0f"),
    ("top1", "top-1", ".1f"),
    ("route", "route picked", ""),
)


def _backend_label(rec: dict[str, Any]) -> str:
    """The backend with the PyTorch layout / TorchScript options that change its speed, e.g. 'jit+CL+opt'."""
    return (str(rec.get("backend", "")) + ("+CL" if rec.get("channels_last") else "")
            + ("+opt" if rec.get("jit_optimize") else ""))


def _cell(rec: dict[str, Any], key: str, fmt: str) -> str:
    if key == "backend":
        return _backend_label(rec)
    # an unsteady run (interleaved rounds disagreeing beyond the bound) carries its mark in every table
    mark = "!" if key == "round_spread_pct" and rec.get("unsteady") else ""
    return format_cell(rec.get(key), fmt) + mark


def _rows(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    cols = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in records)]
    headers = [h for _, h, _ in cols]
    rows = [[_cell(r, k, f) for k, _, f in cols] for r in records]
    return headers, rows


def format_table(records: Sequence[dict[str, Any]]) -> str:
    """Aligned plain-text table (errors listed underneath)."""
    if not records:
        return "(no results)"
    headers, rows = _rows(records)
    out = [text_table(headers, rows, left_columns=3)]
    out += [f"! {r['model']} ({r['backend']}): {r['error']}" for r in records if r.get("error")]
    out += [f"note: {r['model']} ({r['backend']}): {r['note']}" for r in records if r.get("note")]
    out += [f"unsteady: {r['model']} ({r['backend']}): its {r['rounds']} rounds differ by "
            f"{r['round_spread_pct']:.1f} % "
            f"(bound {ROUND_SPREAD_BOUND_PCT:g} %): the load changed during the run; rerun before trusting its rank"
            for r in records if r.get("unsteady")]
    out += list(dict.fromkeys(r["matmul_peaks"] for r in records if r.get("matmul_peaks")))
    return "\n".join(out)


def to_markdown(records: Sequence[dict[str, Any]]) -> str:
    """GitHub markdown table of the records."""
    if not records:
        return "(no results)\n"
    return markdown_table(*_rows(records))


def write_results(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write records as ``.json`` (a list of records) or ``.csv`` (``versions`` flattened to ``a=1;b=2``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        atomic_write_bytes(path, (json.dumps(list(records), indent=2) + "\n").encode())
    elif suffix == ".csv":
        keys: list[str] = []
        for r in records:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            row = dict(r)
            if isinstance(row.get("versions"), dict):
                row["versions"] = ";".join(f"{k}={v}" for k, v in row["versions"].items())
            writer.writerow(row)
        atomic_write_bytes(path, buf.getvalue().encode())
    else:
        raise InvalidValueError(f"results file must end in .json or .csv, got {path.name!r}")
    return path


def plot_speed_accuracy(records: Sequence[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Figure-1-style scatter: measured throughput (x) vs ImageNet top-1 (y), one colour per family.

    Models without a known top-1 are left out (see ``leanvit.zoo.TIMM_TOP1``).
    """
    first = records[0] if records else {}
    return plot_speed_accuracy_panels({"": records}, path,
                                      title or f"Speed vs accuracy on {first.get('device', 'this machine')}")


def plot_speed_accuracy_panels(panels: Mapping[str, Sequence[dict[str, Any]]], path: str | Path, title: str,
                               label_routes: bool = False) -> Path:
    """One speed-accuracy scatter per ``panels`` entry (its title -> its records), side by side with a shared top-1
    axis. A record timed in interleaved rounds gets a horizontal bar from its slowest to its fastest round.
    ``label_routes``: one line per family even where its models ran different routes, each point naming its own."""
    # A bare Figure (no pyplot): no global backend switch, no figure registry, safe in notebooks.
    from matplotlib.figure import Figure

    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise InvalidValueError(f"plot file must end in .png, .svg or .pdf, got {path.name!r}")
    fig = Figure(figsize=(8 * len(panels), 5.5), dpi=120)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (panel_title, records) in zip(axes, panels.items()):
        _draw_speed_accuracy(ax, records, panel_title, label_routes)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower())
    atomic_write_bytes(path, buf.getvalue())
    return path


def _draw_speed_accuracy(ax: Any, records: Sequence[dict[str, Any]], panel_title: str, label_routes: bool) -> None:
    from matplotlib import colormaps

    points = [r for r in records if r.get("throughput") and r.get("top1") is not None and not r.get("error")]
    families: dict[str, list[dict[str, Any]]] = {}
    settings = {(r["backend"], r["precision"]) for r in points}
    for r in points:  # one line per family, and per backend/precision when several were run
        key = r.get("family") or r["model"]
        if len(settings) > 1 and not label_routes:
            key = f"{key} [{r['backend']}, {r['precision']}]"
        families.setdefault(key, []).append(r)
    colours = colormaps["tab10" if len(families) <= 10 else "tab20"]

    def speed(r: dict[str, Any]) -> float:  # timed in rounds: the fastest (least disturbed) round
        return r.get("best_round_throughput") or r["throughput"]

    for i, (family, rows) in enumerate(sorted(families.items())):
        rows = sorted(rows, key=speed)
        xs, ys = [speed(r) for r in rows], [r["top1"] for r in rows]
        leanvit = any(r.get("source") == "leanvit" for r in rows)
        colour = colours(i % colours.N)
        ax.plot(xs, ys, marker="*" if leanvit else "o", markersize=11 if leanvit else 6, linewidth=2 if leanvit else 1,
                color=colour, label=family)
        for r in rows:
            if r.get("round_medians_ms"):  # the rounds' range: where the point could have landed
                low, high = (r["batch_size"] * 1e3 / max(r["round_medians_ms"]),
                             r["batch_size"] * 1e3 / min(r["round_medians_ms"]))
                ax.plot([low, high], [r["top1"]] * 2, color=colour, linewidth=4, alpha=0.35)
            label = r["model"].split(":")[-1] + (f" ({_backend_label(r)})" if label_routes else "")
            ax.annotate(label + ("!" if r.get("unsteady") else ""), (speed(r), r["top1"]),
                        textcoords="offset points", xytext=(4, 3), fontsize=6)
    first = records[0] if records else {}
    setting = f"{first.get('backend', '')}, {first.get('precision', '')}, " if len(settings) == 1 else ""
    rounds = " (fastest round; bar: every round)" if any(r.get("round_medians_ms") for r in points) else ""
    ax.set_xlabel(f"throughput (images/s){rounds} - {setting}batch {first.get('batch_size', '')}, "
                  f"{first.get('threads', '')} thread(s)")
    ax.set_ylabel("ImageNet-1k top-1 (%) - paper / timm")
    if panel_title:
        ax.set_title(panel_title, fontsize=9)
    ax.grid(alpha=0.3)
    if families:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no model with a known top-1", ha="center", transform=ax.transAxes)
