"""Roofline ceilings: measured matmul peaks in a plausible range, the bound's arithmetic, and which precisions are
roofs on this CPU: fp32 always, int8 / bf16 only where the CPU runs them natively (both sides of each probe)."""
from __future__ import annotations

import time

import pytest
import torch

import leanvit.bench.roofline as roofline
import leanvit.deploy.capabilities as caps
from leanvit.bench.roofline import RooflinePeaks, cpu_peaks, int8_matmul_peak, matmul_peak, roofline_ceiling


def test_roofline_ceiling_is_peak_over_the_reference_macs_rate() -> None:
    # 100 GMAC/s peak, a 0.5 GMAC model at 50 img/s (25 GMAC/s): any exact route is at most 4x faster.
    assert roofline_ceiling(100e9, 0.5e9, 50.0) == pytest.approx(4.0)


def test_record_fields_give_roofs_only_for_native_precisions() -> None:
    peaks = RooflinePeaks({"fp32": 50e9, "int8": 200e9}, {"bf16": 0.01})
    # a 250 MMAC model at 100 img/s is 25 GMAC/s: half the fp32 roof, an eighth of the int8 one
    rec = peaks.fields(250.0, 100.0)
    assert rec["roofline_fp32_pct"] == pytest.approx(50.0) and rec["roofline_int8_pct"] == pytest.approx(12.5)
    assert rec["matmul_peak_fp32_gmacs"] == pytest.approx(50.0) and rec["matmul_peak_int8_gmacs"] == pytest.approx(200)
    assert "roofline_bf16_pct" not in rec and "matmul_peak_bf16_gmacs" not in rec  # emulated: never a roof
    assert rec["non_native_vs_fp32"] == {"bf16": 0.01}
    # the emulated precision is shown with its measured cost, never on its own
    assert "int8 200.0 GMAC/s (4.0x fp32)" in rec["matmul_peaks"]
    assert "bf16 not native here (measured 0.01x fp32" in rec["matmul_peaks"]
    assert "roofline_fp32_pct" not in peaks.fields(None, 100.0)  # no MAC count: no fraction


@pytest.fixture
def small_peaks(monkeypatch):
    """Peaks measured on small matmuls: the probes' logic, not the hardware's best."""
    monkeypatch.setattr(roofline, "_SIZES", (256,))
    monkeypatch.setattr(roofline, "_EMULATED_SIZE", 128)


@pytest.mark.slow
@pytest.mark.parametrize("native", [
    # forced on an emulated AVX2 CPU, OpenVINO's bf16 would take CPUID's word and crash on the capped kernels
    pytest.param(True, id="probes-present", marks=pytest.mark.openvino_host_isa),
    pytest.param(False, id="probes-absent")])
def test_cpu_peaks_follow_the_probes(monkeypatch, small_peaks, native: bool) -> None:
    """With int8 dot products and native bf16 (forced where the CPU lacks them), both are roofs; without them
    (forced on a CPU that has them: the AVX2 side), fp32 is the only roof and the others come as measured ratios."""
    monkeypatch.setattr(caps, "cpu_has_int8_dot", lambda: native)
    monkeypatch.setattr(caps, "cpu_has_bf16", lambda: native)
    peaks = cpu_peaks(seconds=0.05)
    if native:
        assert set(peaks.native) == {"fp32", "int8", "bf16"} and peaks.non_native_ratio == {}
    else:
        assert set(peaks.native) == {"fp32"} and set(peaks.non_native_ratio) == {"int8", "bf16"}
        assert all(ratio > 0 for ratio in peaks.non_native_ratio.values())
        assert "not native here" in peaks.describe()
    assert all(peak > 1e8 for peak in peaks.native.values())


@pytest.mark.slow
def test_cpu_peaks_on_this_cpu(small_peaks) -> None:
    """The real probes (LEANVIT_TEST_CPU=avx2: the AVX2 answers): a roof exactly for the native precisions."""
    peaks = cpu_peaks(seconds=0.05)
    assert ("int8" in peaks.native) == caps.cpu_has_int8_dot() and ("bf16" in peaks.native) == caps.cpu_has_bf16()
    assert set(peaks.native) | set(peaks.non_native_ratio) == {"fp32", "int8", "bf16"}


@pytest.mark.slow
def test_int8_peak_runs_int8_arithmetic() -> None:
    """MatMulInteger on a CPU with int8 dot products beats the fp32 GEMM (4.3x on the Zen 4 class EPYC); an int8
    peak at the fp32 rate would mean the graph fell back to float. Without them, it still runs, slower."""
    sizes = (512,)
    fp32, int8 = matmul_peak(torch.float32, 0.1, sizes), int8_matmul_peak(0.1, sizes)
    assert int8 > 0
    if caps.cpu_has_int8_dot():
        assert int8 > 1.5 * fp32, (int8, fp32)


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
