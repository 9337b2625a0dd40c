"""benchmarks/train_throughput.py's bookkeeping, with the measured subprocesses replaced by fixed results."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.scripts import benchmark_script
from leanvit.bench.env import ISA_CAP_VARIABLES


def test_models_without_a_timm_port_are_measured_alone(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                                        tmp_path: Path) -> None:
    """timm has no SepViT: its row is leanvit's alone (no ratios) instead of a failed run; a model timm has gets the
    best throughput of each implementation's rounds and the ratio of their peak live memories."""
    speeds = {("leanvit", "shvit_s1"): [40.0, 44.0, 36.0], ("timm", "shvit_s1"): [35.0, 33.0, 36.0],
              ("leanvit", "sepvit_lite"): [16.0, 17.0, 15.0]}
    calls = []

    with benchmark_script("train_throughput") as script:
        def fake_run(impl: str, model: str, args) -> dict:  # noqa: ANN001 - argparse namespace
            calls.append((impl, model))
            rate = speeds[(impl, model)][sum(c == (impl, model) for c in calls) - 1]
            live = {"leanvit": 800.0, "timm": 1000.0}[impl]
            return dict(images_per_s=rate, step_s=64 / rate, peak_rss_mb=live + 300, peak_live_mb=live)

        monkeypatch.setattr(script, "run_one", fake_run)
        for name in ISA_CAP_VARIABLES:  # a capped test run (make test-avx2) must not leak into the record
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
        script.main(["--models", "sepvit_lite", "shvit_s1", "--rounds", "3", "--out", str(tmp_path / "r.json")])
    assert ("timm", "sepvit_lite") not in calls and calls.count(("timm", "shvit_s1")) == 3
    record = json.loads((tmp_path / "r.json").read_text())
    results = record["results"]
    # the record names the CPU and the instruction-set cap the run emulated
    assert record["machine"]["cpu"] and record["machine"]["isa_caps"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert "timm" not in results["sepvit_lite"] and "speedup" not in results["sepvit_lite"]
    assert results["sepvit_lite"]["leanvit"]["images_per_s"] == 17.0
    assert results["shvit_s1"]["speedup"] == pytest.approx(44.0 / 36.0)  # best of each: 44 and 36
    # per-round ratios 40/35, 44/33, 36/36: their median is the first
    assert results["shvit_s1"]["speedup_median"] == pytest.approx(40.0 / 35.0)
    assert results["shvit_s1"]["memory_ratio"] == pytest.approx(0.8)
    out = capsys.readouterr().out
    assert "timm has no port of it" in out and "1.22x" in out and "1.14x" in out and "ONEDNN_MAX_CPU_ISA=AVX2" in out
