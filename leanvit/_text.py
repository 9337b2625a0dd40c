"""Plain text: one formatter for every table leanvit prints or writes (fixed-width, markdown), one for error reasons,
one for the close names an unknown-name error suggests."""
from __future__ import annotations

import difflib
from typing import Any, Iterable, Sequence

__all__ = ["text_table", "markdown_table", "format_cell", "error_reason", "did_you_mean"]


def format_cell(value: Any, fmt: str) -> str:
    """``value`` through ``fmt`` (a format spec such as ``.2f``); ``-`` for None, ``str`` when it does not apply."""
    if value is None:
        return "-"
    try:
        return format(value, fmt)
    except (ValueError, TypeError):
        return str(value)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left_columns: int = 1) -> str:
    """Fixed-width table: the first ``left_columns`` columns left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) if i < left_columns else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
              for r in rows]
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """GitHub markdown table of already formatted cells, ending in a newline."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def error_reason(error: BaseException, limit: int = 300) -> str:
    """The first line of ``error``'s message (at most ``limit`` characters), or its type name when it has none.

    Decoders raise bare ``EOFError`` and the like; an error message built from them must still say something.
    """
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__


def did_you_mean(name: str, known: Iterable[str], n: int = 3, cutoff: float = 0.6) -> str:
    """`` Did you mean a, b?`` with the names of ``known`` closest to ``name`` (difflib), or ``""`` when none is
    close: the hint every unknown-name error (models, config keys, recipes) ends with."""
    close = difflib.get_close_matches(name, list(known), n=n, cutoff=cutoff)
    return f" Did you mean {', '.join(close)}?" if close else ""
