"""Roofline ceilings: a measured matmul peak in a plausible range, and the bound's arithmetic."""
from __future__ import annotations

import time

import pytest
import torch

from leanvit.bench.roofline import matmul_peak, roofline_ceiling


def test_roofline_ceiling_is_peak_over_the_reference_macs_rate() -> None:
    # 100 GMAC/s peak, a 0.5 GMAC model at 50 img/s (25 GMAC/s): any exact route is at most 4x faster.
    assert roofline_ceiling(100e9, 0.5e9, 50.0) == pytest.approx(4.0)


@pytest.mark.slow
@pytest.mark.slow
def test_matmul_peak_measures_this_cpu() -> None:
    peak = matmul_peak(torch.float32, seconds=0.05)
    # At least what one plain 1024^3 torch.mm reaches, timed here on its own (the peak is the best of several
    # sizes and two libraries; 0.7: noise of a shared machine) ...
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)
    start = time.process_time()
    for _ in range(5):
        torch.mm(a, b)
    direct = 5 * 1024**3 / (time.process_time() - start)
    assert peak >= 0.7 * direct, (peak, direct)
    # ... and at most what one x86 core can issue: 2 FMA units x 16 fp32 lanes (AVX-512) at 6 GHz. A timer unit
    # error (ms for s: 1000x) or a peak from the wrong dtype's timings lands outside the two bounds.
    assert peak <= 2 * 16 * 6e9, peak
