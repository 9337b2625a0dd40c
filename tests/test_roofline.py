"""Roofline ceilings: a measured matmul peak in a plausible range, and the bound's arithmetic."""
from __future__ import annotations

import pytest
import torch

from leanvit.bench.roofline import matmul_peak, roofline_ceiling


def test_roofline_ceiling_is_peak_over_the_reference_macs_rate() -> None:
    # 100 GMAC/s peak, a 0.5 GMAC model at 50 img/s (25 GMAC/s): any exact route is at most 4x faster.
    assert roofline_ceiling(100e9, 0.5e9, 50.0) == pytest.approx(4.0)


def test_matmul_peak_measures_this_cpu() -> None:
    peak = matmul_peak(torch.float32, seconds=0.05)
    # One core of any CPU this runs on: more than 1 GMAC/s, less than 10 TMAC/s.
    assert 1e9 < peak < 1e13
