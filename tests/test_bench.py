"""leanvit bench / demo: every backend on one leanvit and one timm model, modes, files, plots, bad input.

Small and fast: 64-pixel inputs, batch 2, timed windows of a fraction of a second.
"""
from __future__ import annotations

import csv
import json
import sys

import onnxruntime  # noqa: F401 - the dev extra installs every backend: none of these tests may skip
import openvino  # noqa: F401
import pytest
import torch

import dataclasses

import leanvit.bench.roofline as roofline
import leanvit.bench.runner as runner
from leanvit.bench.options import DEMO_OPTIONS, ROUND_SPREAD_BOUND_PCT, BenchOptions, options_from_args
from leanvit.bench.report import format_table, plot_speed_accuracy, write_results
from leanvit.bench.runner import AUTO_ROUTES, benchmark
from leanvit.bench.timing import TimingStats, round_loads, round_spread_pct
from leanvit.cli import build_parser, main
import leanvit.deploy.capabilities as caps
from leanvit.deploy.capabilities import MissingBackendError, UnsupportedPrecisionError

from conftest import fast_first

LEANVIT, TIMM = "efficientvit_m0", "mobilenetv3_small_050"
FAST = dict(img_size=64, batch_size=2, warmup=0.0, duration=0.05, progress=False)
REQUIRED = ("model", "backend", "precision", "batch_size", "threads", "img_size", "jit_optimize", "throughput",
            "latency_ms", "peak_memory_mb", "device", "versions")


def _check_ok(rec: dict, backend: str, precision: str = "fp32") -> None:
    assert rec["error"] is None, rec["error"]
    assert rec["backend"] == backend and rec["precision"] == precision
    assert rec["batch_size"] == 2 and rec["img_size"] == 64 and rec["threads"] == 1
    assert rec["throughput"] > 0 and rec["latency_ms"] > 0
    # images/s is batch / median call time
    assert rec["throughput"] == pytest.approx(2 / (rec["latency_ms"] / 1e3), rel=1e-6)
    assert rec["iterations"] >= 5
    assert rec["fused"]
    if rec["source"] == "leanvit":
        assert rec["unfused_norms"] == 0  # every BatchNorm folded


@pytest.mark.parametrize("backend", fast_first(["eager", "jit", "onnxruntime", "openvino"], ["eager", "onnxruntime"]))
def test_backend_runs_leanvit_and_timm(backend: str) -> None:
    records = benchmark([LEANVIT, TIMM], backend=backend, **FAST)
    assert [r["model"] for r in records] == [LEANVIT, TIMM]
    assert [r["source"] for r in records] == ["leanvit", "timm"]
    for rec in records:
        _check_ok(rec, backend)


@pytest.mark.slow
def test_compile_backend_once(monkeypatch) -> None:
    """torch.compile costs ~40 s per model on a small CPU: one tiny model, once. The set-up call must
    compile in the timed calls' context, so nothing recompiles while timing."""
    import torch._dynamo.config

    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    rec, = benchmark([LEANVIT], backend="compile", **FAST)
    _check_ok(rec, "compile")
    assert rec["setup_s"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("bf16_mode", ["autocast", "convert"])
def test_bf16_on_cpu_follows_the_probe(monkeypatch, bf16_mode: str) -> None:
    """Without native bf16 (AVX512-BF16 / AMX) the bench refuses, or falls back to fp32 when allowed; with it,
    bf16 runs. The second side is also run here with the probe forced: torch emulates bf16 on any CPU."""
    if not caps.cpu_has_bf16():
        with pytest.raises(UnsupportedPrecisionError, match="no native bf16 .*AVX512-BF16 or AMX"):
            benchmark([LEANVIT], backend="eager", precision="bf16", bf16_mode=bf16_mode, **FAST)
        rec, = benchmark([LEANVIT], backend="eager", precision="bf16", allow_fallback=True, **FAST)
        assert rec["precision"] == "fp32" and "fell back to fp32" in rec["note"] and rec["rel_err"] < 1e-4
        monkeypatch.setattr(caps, "cpu_has_bf16", lambda: True)  # the path a bf16 CPU takes
    rec, = benchmark([LEANVIT], backend="eager", precision="bf16", bf16_mode=bf16_mode, **FAST)
    _check_ok(rec, "eager", "bf16")
    assert rec["rel_err"] > 1e-3  # bf16 really ran (fp32 reordering noise is ~1e-5 of the spread)


@pytest.mark.openvino_host_isa
@pytest.mark.slow
def test_openvino_bf16_follows_openvino_and_reports_effective_precision(monkeypatch) -> None:
    """OpenVINO's own capability list decides; asked for bf16 anyway, the record names what really ran."""
    native = "BF16" in caps._openvino_capabilities()
    if not native:
        with pytest.raises(UnsupportedPrecisionError, match="OpenVINO reports no BF16 support"):
            benchmark([TIMM], backend="openvino", precision="bf16", **FAST)
        monkeypatch.setattr(caps, "_openvino_capabilities", lambda: {"FP32", "BF16"})
    rec, = benchmark([TIMM], backend="openvino", precision="bf16", **FAST)
    _check_ok(rec, "openvino", "bf16" if native else "fp32")  # OpenVINO keeps f32 where bf16 is not native


@pytest.mark.slow
def test_channels_last_with_cpu_clock() -> None:
    rec, = benchmark([LEANVIT], backend="jit", channels_last=True, clock="cpu", **FAST)
    _check_ok(rec, "jit")
    assert rec["channels_last"] is True and rec["clock"] == "cpu"
    assert rec["jit_optimize"] is False  # plain trace unless --jit-optimize (tests/test_jit_optimize.py)
    assert rec["rel_err"] < 1e-5  # NHWC changes the kernels, not the result


@pytest.mark.slow
def test_latency_mode_percentiles() -> None:
    rec, = benchmark([TIMM], mode="latency", backend="eager", img_size=64, warmup=0.0, duration=0.1, progress=False)
    assert rec["error"] is None and rec["batch_size"] == 1
    assert rec["latency_ms"] <= rec["latency_p90_ms"] <= rec["latency_p99_ms"]


@pytest.mark.slow
def test_memory_mode_runs_in_fresh_process() -> None:
    rec, = benchmark([LEANVIT], mode="memory", backend="eager", img_size=64, batch_size=2, progress=False)
    assert rec["error"] is None, rec["error"]
    assert "fresh process" in rec["memory_method"]
    # The fp32 weights alone are params * 4 bytes and must be resident.
    assert rec["peak_memory_mb"] >= rec["params_m"] * 4 * 1e6 / 2**20


@pytest.mark.slow
def test_train_mode(monkeypatch) -> None:
    # Every timed call is a whole training step: count the optimizer steps and the parameters they moved.
    steps: list[int] = []
    real_step = torch.optim.AdamW.step

    def counted(self, *args, **kwargs):
        steps.append(sum(p.grad is not None and bool(p.grad.abs().sum() > 0) for g in self.param_groups
                         for p in g["params"]))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counted)
    rec, = benchmark([LEANVIT], mode="train", backend="eager", **FAST)
    assert rec["error"] is None, rec["error"]
    assert rec["fused"] is False  # BatchNorms train: nothing folded
    assert rec["throughput"] == pytest.approx(2 / (rec["latency_ms"] / 1e3), rel=1e-6)
    # one set-up step, then the timed ones; in each, (nearly) every parameter has a gradient
    assert len(steps) >= 1 + rec["iterations"] and min(steps) > 100, steps
    assert rec["peak_memory_mb"] > 0


@pytest.mark.slow
def test_results_files_have_documented_fields(tmp_path) -> None:
    records = benchmark([LEANVIT, TIMM], backend="eager", count_macs=True, **FAST)
    js = write_results(records, tmp_path / "r.json")
    data = json.loads(js.read_text())
    assert isinstance(data, list) and len(data) == 2
    for rec in data:
        assert all(k in rec for k in REQUIRED)
        assert rec["versions"]["torch"] == torch.__version__.split("+")[0]
        assert rec["device"].startswith("cpu")
    assert data[0]["macs_m"] > 0
    with write_results(records, tmp_path / "r.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(k in rows[0] for k in REQUIRED)
    assert "torch=" in rows[0]["versions"] and float(rows[0]["throughput"]) == pytest.approx(records[0]["throughput"])
    with pytest.raises(ValueError, match=".json or .csv"):
        write_results(records, tmp_path / "r.txt")


def test_plot_is_valid_png(tmp_path) -> None:
    import matplotlib.image

    records = [
        dict(model="shvit_s1", family="SHViT", source="leanvit", top1=72.8, throughput=300.0, backend="jit",
             precision="fp32", batch_size=16, threads=1, device="cpu: test"),
        dict(model="shvit_s2", family="SHViT", source="leanvit", top1=75.2, throughput=200.0, backend="jit",
             precision="fp32", batch_size=16, threads=1, device="cpu: test"),
        dict(model="mobilenetv3_small_050", family="x", source="timm", top1=None, throughput=900.0, backend="jit",
             precision="fp32", batch_size=16, threads=1, device="cpu: test"),
    ]
    path = plot_speed_accuracy(records, tmp_path / "speed.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


@pytest.mark.slow
def test_cli_bench_writes_json_and_plot(tmp_path, capsys) -> None:
    out, plot = tmp_path / "res.json", tmp_path / "speed.png"
    rc = main(["bench", LEANVIT, TIMM, "--backend", "eager", "--img-size", "64", "--batch-size", "2", "--warmup", "0",
               "--duration", "0.05", "--no-progress", "--out", str(out), "--plot", str(plot)])
    assert rc == 0
    table = capsys.readouterr().out
    assert LEANVIT in table and TIMM in table and "img/s" in table
    assert len(json.loads(out.read_text())) == 2
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_cli_demo(tmp_path, capsys) -> None:
    rc = main(["demo", "--out", str(tmp_path), "--models", LEANVIT, "efficientvit_m1", "--baselines", TIMM,
               "--img-size", "64", "--batch-size", "2", "--warmup", "0", "--duration", "0.05", "--no-progress"])
    assert rc == 0
    assert {"results.md", "results.csv", "results.json", "speed.png"} <= {p.name for p in tmp_path.iterdir()}
    report = (tmp_path / "results.md").read_text()
    assert LEANVIT in report and "## Rankings within each family" in report and "rounds %" in report
    records = json.loads((tmp_path / "results.json").read_text())
    # the papers' protocol and OpenVINO for each model, all timed in the same interleaved rounds on the CPU clock
    assert sorted((r["model"], r["backend"]) for r in records) == sorted(
        (m, b) for m in (LEANVIT, "efficientvit_m1", TIMM) for b in ("jit", "openvino"))
    for rec in records:
        assert rec["error"] is None and rec["clock"] == "cpu" and rec["rounds"] == DEMO_OPTIONS.rounds
        assert len(rec["round_medians_ms"]) == DEMO_OPTIONS.rounds
        assert rec["unsteady"] == (rec["round_spread_pct"] > ROUND_SPREAD_BOUND_PCT)
    assert "EfficientViT-M (leanvit): " in capsys.readouterr().out  # each family's measured order, printed


# --- the options object: flags, per-run options, interleaved rounds, the auto route -----------------------------------
def _parse(*argv: str):
    return build_parser(argv[0]).parse_args(list(argv))


def test_bench_flags_are_the_options_fields(capsys) -> None:
    """Every BenchOptions field is a `leanvit bench` flag, and the flags read back into the same object."""
    assert all(hasattr(_parse("bench", LEANVIT), f.name) for f in dataclasses.fields(BenchOptions))
    args = _parse("bench", LEANVIT, "--batch-size", "4", "--rounds", "3", "--no-fuse", "--clock", "cpu",
                  "--seed", "7", "--backend", "auto")
    assert options_from_args(args) == BenchOptions(batch_size=4, rounds=3, fuse=False, clock="cpu", seed=7,
                                                   backend="auto")
    assert options_from_args(_parse("bench", LEANVIT)) == BenchOptions()  # the defaults are the class's
    # `leanvit demo` takes the same flags, with the demo's defaults
    demo = options_from_args(_parse("demo"))
    # (mode, count_macs and isolate are no demo flags: run_demo measures throughput with MACs, in one process)
    assert demo == DEMO_OPTIONS.replace(mode=BenchOptions.mode, isolate=None, count_macs=False)
    # ... and its help says which defaults are its own (the field's text names the class default)
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "warm-up seconds per run (default 2) [this command's default: 0.3]" in help_text
    assert "as the papers) --img-size" in help_text  # --threads: the same default as leanvit bench, nothing added


def _stats(median_ms: float) -> TimingStats:
    return TimingStats.from_times([median_ms / 1e3 * f for f in (0.98, 1.0, 1.03)])


@pytest.mark.parametrize("medians_ms,unsteady", [((10.0, 10.0, 11.5), True), ((10.0, 10.5, 10.0), False)])
def test_rounds_that_disagree_are_marked(monkeypatch, medians_ms: tuple, unsteady: bool) -> None:
    rounds = [_stats(m) for m in medians_ms]
    fields = runner._timing_fields(TimingStats.pooled(rounds), 2, rounds)
    assert fields["latency_ms"] == pytest.approx(10.0) and fields["throughput"] == pytest.approx(200.0)
    assert fields["round_medians_ms"] == pytest.approx(list(medians_ms))
    spread = 100 * (max(medians_ms) - min(medians_ms)) / 10.0
    assert fields["round_spread_pct"] == pytest.approx(spread) == round_spread_pct([m / 1e3 for m in medians_ms])
    assert fields["unsteady"] is unsteady  # 15 % and 5 % against the 10 % bound
    assert fields["best_round_throughput"] == pytest.approx(2 / (min(medians_ms) / 1e3))  # the fastest round
    rec = dict(model=LEANVIT, backend="jit", rounds=3, **fields)
    table = format_table([rec])
    assert ("unsteady: efficientvit_m0 (jit): its 3 rounds differ by" in table) is unsteady
    assert (f"{spread:.1f}!" in table) is unsteady
    monkeypatch.setattr(runner, "ROUND_SPREAD_BOUND_PCT", 20.0)  # the bound is the documented constant
    assert runner._timing_fields(TimingStats.pooled(rounds), 2, rounds)["unsteady"] is False


def test_auto_keeps_each_models_fastest_route() -> None:
    rec = dict(model=LEANVIT, precision="fp32", channels_last=False, jit_optimize=False, error=None)
    records = [dict(rec, backend="jit", latency_ms=3.0), dict(rec, backend="openvino", latency_ms=1.5),
               dict(rec, backend="onnxruntime", latency_ms=1.0, error="RuntimeError: broken"),
               dict(rec, model=TIMM, backend="jit", latency_ms=2.0), dict(rec, model=TIMM, backend="eager",
                                                                         latency_ms=2.5)]
    picked = runner._pick_fastest(records)
    assert [(r["model"], r["backend"]) for r in picked] == [(LEANVIT, "openvino"), (TIMM, "jit")]  # failed: no pick
    assert picked[0]["route"] == "openvino fp32 (fastest of 3)"
    assert picked[0]["route_candidates_ms"] == {"jit fp32": 3.0, "openvino fp32": 1.5, "onnxruntime fp32": 1.0}


@pytest.mark.slow
def test_latency_mode_picks_and_reports_its_route(capsys, tmp_path) -> None:
    """`leanvit bench --mode latency`: batch 1, 1 thread, every exact route raced, the fastest kept and named."""
    out = tmp_path / "latency.json"
    rc = main(["bench", LEANVIT, "--mode", "latency", "--img-size", "64", "--warmup", "0", "--duration", "0.02",
               "--no-progress", "--out", str(out)])
    assert rc == 0
    assert "route picked" in capsys.readouterr().out
    rec, = json.loads(out.read_text())
    assert rec["batch_size"] == 1 and rec["threads"] == 1 and rec["error"] is None
    assert set(rec["route_candidates_ms"]) == {f"{b} fp32" for b in AUTO_ROUTES}
    assert rec["latency_ms"] == min(rec["route_candidates_ms"].values())
    assert rec["route"].startswith(f"{rec['backend']} fp32") and rec["rounds"] == runner.AUTO_ROUNDS
    assert rec["rel_err"] < 1e-3  # an exact route


@pytest.mark.slow
def test_rounds_interleave_every_run() -> None:
    records = benchmark([LEANVIT, TIMM], backend="eager", rounds=2, **FAST)
    for rec in records:
        assert rec["error"] is None and rec["throughput"] == pytest.approx(2 / (rec["latency_ms"] / 1e3), rel=1e-6)
        # each round: its window, at least one call (a call longer than the window is one by itself)
        assert rec["rounds"] == 2 and len(rec["round_medians_ms"]) == 2 and rec["iterations"] >= 2
        assert rec["latency_ms"] == pytest.approx(sum(rec["round_medians_ms"]) / 2)  # median of two rounds
        assert rec["peak_memory_mb"] is None  # every runtime is alive at once: no per-run peak


# --- bad input ---------------------------------------------------------------------------------------
def test_unknown_model_suggests_close_names(capsys) -> None:
    with pytest.raises(KeyError, match="efficientvit_m0"):
        benchmark(["efficientvit_m00"], progress=False)
    with pytest.raises(KeyError, match="mobilenetv3_small_050"):
        benchmark(["mobilenetv3_smal_050"], progress=False)
    assert main(["bench", "shvit_s9"]) == 1
    assert "unknown model 'shvit_s9'" in capsys.readouterr().err


@pytest.mark.parametrize("backend,module,extra", [("onnxruntime", "onnxruntime", "onnx"),
                                                  ("openvino", "openvino", "openvino")])
def test_missing_backend_package_names_extra(monkeypatch, capsys, backend: str, module: str, extra: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(MissingBackendError, match=rf"pip install 'leanvit\[{extra}\]'"):
        benchmark([LEANVIT], backend=backend, **FAST)
    assert main(["bench", LEANVIT, "--backend", backend]) == 1
    assert f"leanvit[{extra}]" in capsys.readouterr().err


@pytest.mark.slow
def test_fp16_on_cpu_is_refused_unless_fallback(capsys) -> None:
    with pytest.raises(UnsupportedPrecisionError, match="fp16 needs a CUDA GPU"):
        benchmark([LEANVIT], backend="eager", precision="fp16", **FAST)
    assert main(["bench", LEANVIT, "--precision", "fp16"]) == 1
    assert "--allow-fallback" in capsys.readouterr().err
    rec, = benchmark([LEANVIT], backend="eager", precision="fp16", allow_fallback=True, **FAST)
    assert rec["error"] is None and rec["precision"] == "fp32" and "fell back to fp32" in rec["note"]


def test_bf16_onnxruntime_is_refused() -> None:
    with pytest.raises(UnsupportedPrecisionError, match="no bf16 kernels"):
        benchmark([LEANVIT], backend="onnxruntime", precision="bf16", **FAST)


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(batch_size=-4), "batch_size must be an integer >= 1"),
    (dict(img_size=8), "img_size must be an integer >= 32"),
    (dict(threads=0), "threads must be an integer >= 1"),
    (dict(duration=0.0), "duration must be > 0"),
    (dict(mode="speed"), "unknown mode"),
    (dict(backend="tensorrt"), "unknown backend"),
    (dict(precision="int4"), "unknown precision"),
    (dict(clock="cpu", threads=2), "single-threaded"),
    (dict(clock="tsc"), "clock must be"),
    (dict(backend="onnxruntime", channels_last=True), "channels_last applies to the PyTorch backends"),
    (dict(rounds=0), "rounds must be an integer >= 1"),
    (dict(rounds=2, mode="memory"), "rounds interleave timed runs"),
    (dict(rounds=2, isolate=True), "rounds interleave timed runs"),
    (dict(backend="auto,jit"), "give it alone"),
    (dict(backend="auto", precision="bf16"), "picks the fastest exact route"),
    (dict(backend="auto", mode="train"), "picks the fastest exact route"),
])
def test_invalid_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        benchmark([LEANVIT], **{**dict(progress=False), **kwargs})


def test_cli_invalid_batch(capsys) -> None:
    assert main(["bench", LEANVIT, "--batch-size", "0"]) == 1
    assert "batch_size must be an integer >= 1" in capsys.readouterr().err


def test_cuda_requested_without_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        benchmark([LEANVIT], device="cuda", progress=False)


@pytest.mark.slow
def test_interleaved_medians_alternates_calls() -> None:
    from leanvit.bench.timing import interleaved_medians

    order: list[str] = []
    calls = {k: (lambda k=k: order.append(k)) for k in ("a", "b")}
    medians = interleaved_medians(calls, rounds=3, duration_s=1e-4, warmup_s=0.0)
    assert set(medians) == {"a", "b"} and all(len(v) == 3 and min(v) >= 0 for v in medians.values())
    runs = [k for i, k in enumerate(order) if i == 0 or order[i - 1] != k]  # collapse consecutive calls
    assert runs[-6:] == ["a", "b"] * 3  # timed rounds alternate A B A B A B after the warm-ups


@pytest.mark.slow
def test_int8_with_roofline_fractions(monkeypatch) -> None:
    # (the executorch backend's lowering costs ~40 s a model: tests/test_mobile.py covers it)
    monkeypatch.setattr(roofline, "_SIZES", (512,))  # faster; tests/test_roofline.py checks the peaks themselves
    real_peaks = runner.cpu_peaks
    monkeypatch.setattr(runner, "cpu_peaks", lambda seconds: real_peaks(seconds=0.05))
    small = dict(FAST, img_size=32)
    if not caps.cpu_has_int8_dot():  # the probe refuses int8 here (test_int8_refusals); run the path a VNNI CPU takes
        with pytest.raises(UnsupportedPrecisionError, match="VNNI"):
            benchmark([LEANVIT], backend="onnxruntime", precision="int8", roofline=True, **small)
        monkeypatch.setattr(caps, "cpu_has_int8_dot", lambda: True)
    records = benchmark([LEANVIT], backend="onnxruntime", precision="fp32,int8", roofline=True, **small)
    assert [r["precision"] for r in records] == ["fp32", "int8"]
    for rec in records:
        assert rec["error"] is None, rec["error"]
        assert rec["throughput"] > 0 and rec["macs_m"] > 0
        # the fraction is MACs x img/s over the measured peak
        assert rec["roofline_fp32_pct"] == pytest.approx(
            100 * rec["macs_m"] * 1e6 * rec["throughput"] / (rec["matmul_peak_fp32_gmacs"] * 1e9))
        # bf16's roof only where bf16 is native, and there its peak (oneDNN, AVX512-BF16) is the higher one
        if caps.cpu_has_bf16():
            assert 0 < rec["roofline_bf16_pct"] <= rec["roofline_fp32_pct"]
        else:
            assert "roofline_bf16_pct" not in rec and "matmul_peak_bf16_gmacs" not in rec
            assert rec["non_native_vs_fp32"]["bf16"] > 0  # shown only with its measured cost
        # int8's roof where the CPU has int8 dot products (forced above where it lacks them)
        assert rec["roofline_int8_pct"] == pytest.approx(
            100 * rec["macs_m"] * 1e6 * rec["throughput"] / (rec["matmul_peak_int8_gmacs"] * 1e9))
    assert "matmul peak, 1 thread: fp32" in format_table(records)
    with pytest.raises(ValueError, match="roofline"):
        benchmark([LEANVIT], roofline=True, threads=2, **FAST)


@pytest.mark.slow
def test_int8_refusals(monkeypatch) -> None:
    with pytest.raises(UnsupportedPrecisionError, match="quantised artifact"):
        benchmark([LEANVIT], backend="jit", precision="int8", **FAST)
    monkeypatch.setattr(caps, "cpu_has_int8_dot", lambda: True)
    assert caps.check_precision("int8", "compile") == ("int8", "")  # the PT2E graph, compiled by inductor
    monkeypatch.setattr(caps, "cpu_has_int8_dot", lambda: False)
    with pytest.raises(UnsupportedPrecisionError, match="VNNI"):
        benchmark([LEANVIT], backend="onnxruntime", precision="int8", **FAST)
    rec, = benchmark([LEANVIT], backend="onnxruntime", precision="int8", allow_fallback=True, **FAST)
    assert rec["precision"] == "fp32" and "VNNI" in rec["note"]


def test_load_every_run_saw_is_not_unsteadiness() -> None:
    # the idle demo (2026-12-07): round 3 ran ~15 % slower for every run alike; interleaving cancels that, so only
    # a run's own disagreement beyond it marks the run
    common = [[10.0, 10.1, 11.6], [20.0, 19.9, 23.0], [5.0, 5.05, 5.8], [30.0, 30.0, 34.4]]
    loads = round_loads(common)
    assert loads[0] == pytest.approx(1.0, abs=0.01) and loads[2] == pytest.approx(1.15, abs=0.01)
    own = [10.0, 10.0, 10.0 * 1.15 * 1.2]  # 20 % slower than the others in round 3
    for medians, unsteady in [(common[0], False), (own, True)]:
        rounds = [TimingStats.from_times([m / 1e3] * 3, 0) for m in medians]
        fields = runner._timing_fields(TimingStats.pooled(rounds), 2, rounds, loads)
        assert fields["unsteady"] is unsteady, fields
        assert fields["round_loads"] == loads
    assert round_loads(common[:2]) == [1.0, 1.0, 1.0]  # two runs: nothing common to tell apart
