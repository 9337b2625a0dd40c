"""Child process of ``benchmark(..., isolate=True)``: run one BenchConfig, print its record as JSON.

A fresh interpreter gives a clean RSS baseline (nothing left over from earlier models), so the peak
memory it reports belongs to this model alone.
"""
from __future__ import annotations

import json
import sys

from .runner import BenchConfig, run_config


def main(argv: list[str]) -> int:
    """``python -m leanvit.bench._isolated '<BenchConfig as JSON>'``."""
    cfg = BenchConfig(**json.loads(argv[0]))
    print(json.dumps(run_config(cfg)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
