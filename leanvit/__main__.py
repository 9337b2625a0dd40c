"""``python -m leanvit ...`` (also what ``torchrun -m leanvit train ...`` runs)."""
import sys

from .cli import main

sys.exit(main())
