"""Shared test helpers: the vendored paper numbers, and logit checks relative to the logits' spread."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from leanvit.models.signal import logit_agreement

DATA_DIR = Path(__file__).resolve().parent / "data"
CONV_FAMILY_MODELS = [f"shvit_s{i}" for i in range(1, 5)] + [f"efficientvit_m{i}" for i in range(6)]


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # One thread: two-thread torch stalls badly when the other core is busy (measured 1.5 s vs 13 ms a call).
    torch.set_num_threads(1)


def paper_tables() -> dict:
    """Per-variant targets, vendored from the project spec (tests/data/paper_tables.json)."""
    return json.loads((DATA_DIR / "paper_tables.json").read_text())["variants"]


def assert_logits_close(reference: torch.Tensor, output: torch.Tensor, rel: float, top1: float = 1.0) -> dict:
    """``output``'s max error is at most ``rel`` x the spread of ``reference`` across the batch, and at least
    ``top1`` of the rows pick the same class. (batch, ...) tensors; everything after the batch is flattened."""
    stats = logit_agreement(reference.flatten(1), output.flatten(1))
    assert stats["spread"] > 1e-3, f"reference barely depends on its input: {stats}"
    assert stats["relative_error"] <= rel and stats["top1_agreement"] >= top1, stats
    return stats
