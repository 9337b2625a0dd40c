"""Child process of ``benchmark(..., isolate=True)``: measure one run, print its record as JSON.

A fresh interpreter gives a clean RSS baseline (nothing left over from earlier models), so the peak
memory it reports belongs to this model alone.
"""
from __future__ import annotations

import json
import sys

from ..zoo import resolve_model
from .options import BenchOptions
from .runner import run_single


def main(argv: list[str]) -> int:
    """``python -m leanvit.bench._isolated MODEL '<the run's BenchOptions as JSON>'``."""
    print(json.dumps(run_single(resolve_model(argv[0]), BenchOptions(**json.loads(argv[1])))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
