"""Shared test helpers: deterministic randomisation of BN statistics and attention biases."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

SPEC_DIR = Path(__file__).resolve().parents[2] / "shared" / "spec"
CONV_FAMILY_MODELS = [f"shvit_s{i}" for i in range(1, 5)] + [f"efficientvit_m{i}" for i in range(6)]


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # One thread: two-thread torch stalls badly when the other core is busy (measured 1.5 s vs 13 ms a call).
    torch.set_num_threads(1)


def paper_tables() -> dict:
    """Targets from the shared spec (skips when the spec folder is not beside the checkout)."""
    path = SPEC_DIR / "paper_tables.json"
    if not path.exists():
        pytest.skip(f"{path} not available")
    return json.loads(path.read_text())["variants"]


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Give every BN non-trivial statistics/affine and every attention-bias table random values, so that
    fusion and conversion errors cannot hide behind identity initialisations."""
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
            mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * 0.5 + 1)
            mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
    for name, p in model.named_parameters():
        if "attention_biases" in name:
            p.copy_(torch.randn(p.shape, generator=g))
    return model
