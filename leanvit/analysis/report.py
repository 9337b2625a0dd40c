"""Writing an analysis result: a markdown table, JSON (rows + environment + arguments), CSV, and a PNG.

Every tool returns rows (flat dicts) and writes them through :func:`write_table`, so all outputs share
one layout: ``OUT/NAME.md``, ``OUT/NAME.json``, ``OUT/NAME.csv`` and, from :func:`save_figure`,
``OUT/NAME.png``. Plots are drawn on a ``matplotlib.figure.Figure`` (no pyplot state, no backend change).
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .._io import atomic_write_bytes, atomic_write_text
from .._text import markdown_table
from ..bench.env import environment
from ..bench.report import write_results

__all__ = ["write_table", "save_figure", "run_record"]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.4e}"
    return str(value)


def run_record(tool: str, arguments: dict[str, Any], device: str = "cpu", **settings: Any) -> dict[str, Any]:
    """What a result was measured on and with: the tool, its arguments, the environment and the settings."""
    return dict(tool=tool, arguments=arguments, environment=environment(device),
                threads=torch.get_num_threads(), **settings)


def write_table(
    out_dir: str | Path, name: str, rows: Sequence[dict[str, Any]], meta: dict[str, Any],
    *, title: str = "", notes: Sequence[str] = (), columns: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``NAME.md`` (title, notes, table), ``NAME.json`` (``meta`` + rows) and ``NAME.csv``, atomically.

    The table has ``columns``, or every key of ``rows`` in first-seen order."""
    out = Path(out_dir)
    columns = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    table = markdown_table(columns, [[_cell(r.get(c)) for c in columns] for r in rows])
    md = (f"## {title}\n\n" if title else "") + "".join(f"{n}\n\n" for n in notes) + table
    paths = [atomic_write_text(out / f"{name}.md", md)]
    payload = dict(meta, rows=list(rows))
    paths.append(atomic_write_text(out / f"{name}.json", json.dumps(payload, indent=2, default=str) + "\n"))
    paths.append(write_results([{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in rows],
                               out / f"{name}.csv"))
    return paths


def save_figure(path: str | Path, draw: Callable[[Any], None], size: tuple[float, float] = (8, 4.5)) -> Path | None:
    """Draw with ``draw(figure)`` on a fresh ``matplotlib.figure.Figure`` and write a PNG atomically.

    Without matplotlib prints one line and returns None (the tables are still written)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed: no PNG written (pip install matplotlib)")
        return None
    fig = Figure(figsize=size, dpi=110)
    draw(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())
