"""``benchmark(models, ...)``: throughput, latency, memory and training speed of leanvit and timm models.

Defaults follow the papers' speed tests (LeViT heritage, see docs/benchmarks.md): BN-fused model,
``torch.jit.trace``, CPU batch 16 on 1 thread in fp32, GPU batch 256 with AMP (fp16); warm-up, then
a timed window. Each configuration yields one flat record (dict) with the settings, the timings
(median and spread), peak memory, the device and the library versions.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..deploy import capabilities
from ..deploy.capabilities import (MissingBackendError, check_jit_optimize, check_precision, quiet_deprecations,
                                   torch_threads)
from ..deploy.routes import BACKENDS, PRECISIONS, backend_route, target_for
from ..deploy.quantize import quantize_for
from ..deploy.runtime import build_runtime
from ..deploy.verify import compare_runtime, run_in_batches, verification_images
from ..errors import InvalidValueError, OperationError
from ..models import count_macs, count_params, create_model
from ..models.checkpoint import checkpoint_img_size
from ..models.signal import signal_images, signal_weights_
from ..zoo import ModelSpec, count_unfused_norms, fuse_model, resolve_model
from .env import environment
from .memory import PeakMemory, release_freed_memory, rss_mb
from .options import DEFAULT_DURATION_S, DEFAULT_WARMUP_S, MODES, ROUND_SPREAD_BOUND_PCT, BenchOptions
from .roofline import cpu_peaks
from .timing import TimingStats, interleaved_stats, measure, round_loads, round_spread_pct

__all__ = ["MODES", "AUTO_BACKEND", "AUTO_ROUTES", "BenchOptions", "benchmark", "fastest_per_model", "run_single"]

_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
# ``backend="auto"``: race these exact fp32 routes (those whose package is installed) and keep the fastest per model.
AUTO_BACKEND = "auto"
AUTO_ROUTES = ("eager", "jit", "onnxruntime", "openvino")
AUTO_ROUNDS = 3  # interleaved rounds of an auto race when --rounds is not given


def _defaults(mode: str, device: str) -> tuple[int, str]:
    """(batch, precision) of the protocol: papers' throughput batch 16 (CPU) / 256 (GPU AMP), latency batch 1."""
    cuda = device.startswith("cuda")
    batch = 1 if mode == "latency" else (256 if cuda else 16)
    return batch, ("fp16" if cuda else "fp32")


def _as_list(value: str | Sequence[str] | None) -> list[str | None]:
    if value is None:
        return [None]
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def _validate(o: BenchOptions) -> None:
    """Refuse settings that cannot be measured, before anything runs."""
    if o.mode not in MODES:
        raise InvalidValueError(f"unknown mode {o.mode!r}; choose from {', '.join(MODES)}")
    if o.device != "cpu" and not o.device.startswith("cuda"):
        raise InvalidValueError(f"device must be 'cpu' or 'cuda[:N]', got {o.device!r}")
    if o.device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidValueError("device cuda requested but no CUDA GPU is visible; use --device cpu")
    for name, low in (("batch_size", 1), ("threads", 1), ("img_size", 32), ("rounds", 1)):
        value = getattr(o, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            raise InvalidValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if o.warmup is not None and o.warmup < 0:
        raise InvalidValueError(f"warmup must be >= 0 seconds, got {o.warmup}")
    if o.duration is not None and o.duration <= 0:
        raise InvalidValueError(f"duration must be > 0 seconds, got {o.duration}")
    if o.clock not in _CLOCKS:
        raise InvalidValueError(f"clock must be 'wall' or 'cpu', got {o.clock!r}")
    if o.clock == "cpu" and (o.device != "cpu" or o.threads != 1):
        raise InvalidValueError("clock='cpu' (process CPU time) equals latency only for single-threaded CPU runs: "
                                "use it with device cpu and threads 1")
    if o.roofline and (o.device != "cpu" or o.threads != 1 or o.mode not in ("throughput", "latency")):
        raise InvalidValueError("roofline fractions compare with the single-thread CPU matmul peak: use them with device "
                                "cpu, threads 1 and mode throughput or latency")
    if o.rounds is not None and (o.mode not in ("throughput", "latency") or o.isolate):
        raise InvalidValueError("rounds interleave timed runs held in one process: use them with mode throughput or "
                                "latency and without isolate")


def _backends(o: BenchOptions) -> list[str]:
    """The backends to run: the named ones, or for ``auto`` every exact fp32 route whose package is installed."""
    names = _as_list(o.backend)
    if AUTO_BACKEND not in names:
        return names  # type: ignore[return-value]
    if len(names) > 1:
        raise InvalidValueError(f"backend {AUTO_BACKEND!r} races {', '.join(AUTO_ROUTES)} by itself: give it alone")
    if o.mode not in ("throughput", "latency") or _as_list(o.precision) not in ([None], ["fp32"]) or o.device != "cpu":
        raise InvalidValueError(f"backend {AUTO_BACKEND!r} picks the fastest exact route: CPU, fp32, mode throughput "
                                "or latency")
    available = []
    for route in AUTO_ROUTES:
        try:
            capabilities.require_backend(route)
        except MissingBackendError:
            continue  # a route this install cannot run is not a candidate
        available.append(route)
    return available


def benchmark(models: str | Sequence[str], options: BenchOptions | None = None, **changes: Any) -> list[dict[str, Any]]:
    """Measure every (model, backend, precision) combination; returns one record per combination.

    ``options`` (:class:`~leanvit.bench.options.BenchOptions`, default: the protocol's) with ``changes``
    applied, e.g. ``benchmark(["shvit_s1"], backend="onnxruntime,openvino", threads=1)``.
    ``backend`` / ``precision`` may be lists or comma-separated strings. ``None`` picks the protocol
    defaults (see :func:`_defaults`); ``warmup`` / ``duration`` default to 2 s / 10 s (the papers use
    10 s / 60 s). ``isolate`` runs each configuration in a fresh Python process (default: for
    ``memory`` mode on CPU, where an RSS peak is only meaningful in a clean process). ``jit_optimize``
    freezes and ``optimize_for_inference``-s the jit trace (CPU, backend jit only; see
    :class:`~leanvit.deploy.runtime.TorchRuntime`). ``rounds`` times every run in interleaved rounds
    in one process (each record then carries its rounds' medians, their spread, and ``unsteady`` beyond
    :data:`~leanvit.bench.options.ROUND_SPREAD_BOUND_PCT`). ``backend="auto"`` races the exact fp32 routes
    (:data:`AUTO_ROUTES`) in interleaved rounds and keeps each model's fastest, naming it in ``route``.

    All arguments are checked before anything runs: unknown models (KeyError with close names),
    missing backend packages (:class:`~leanvit.deploy.capabilities.MissingBackendError`, naming the pip
    extra) and precisions the hardware lacks (:class:`~leanvit.deploy.capabilities.UnsupportedPrecisionError`
    unless ``allow_fallback``). Failures while running one configuration are recorded in its
    ``error`` field and the others still run.
    """
    o = (options or BenchOptions()).replace(**changes)
    names = [models] if isinstance(models, str) else list(models)
    if not names:
        raise InvalidValueError("no models given")
    if o.checkpoint is not None and len(names) != 1:
        raise InvalidValueError(f"a checkpoint holds one model's weights; got {len(names)} models: bench them one at a "
                                "time")
    if o.backend is None:  # batch-1 latency on CPU is what an application sees: its fastest exact route
        exact_cpu = o.device == "cpu" and _as_list(o.precision) in ([None], ["fp32"])
        o = o.replace(backend=AUTO_BACKEND if o.mode == "latency" and exact_cpu else "jit")
    _validate(o)
    auto = AUTO_BACKEND in _as_list(o.backend)
    if auto and o.rounds is None:
        o = o.replace(rounds=AUTO_ROUNDS)
    default_batch, default_precision = _defaults(o.mode, o.device)
    specs = [resolve_model(n) for n in names]  # fails fast on unknown names
    runs: list[tuple[ModelSpec, BenchOptions, str]] = []
    for spec, bk, prec in itertools.product(specs, _backends(o), _as_list(o.precision)):
        if bk not in BACKENDS:
            raise InvalidValueError(f"unknown backend {bk!r}; choose from {', '.join(BACKENDS)} or {AUTO_BACKEND}")
        prec = prec or default_precision
        if prec not in PRECISIONS:
            raise InvalidValueError(f"unknown precision {prec!r}; choose from {', '.join(PRECISIONS)}")
        if o.channels_last and bk in ("onnxruntime", "openvino"):
            if auto:
                continue  # the auto race keeps the PyTorch routes in NHWC; the others pick their own layout
            raise InvalidValueError(f"channels_last applies to the PyTorch backends, not {bk} (it picks its own layout)")
        if o.mode == "train" and bk != "eager":
            raise InvalidValueError(f"train mode measures eager PyTorch training steps; got backend {bk!r}")
        if o.jit_optimize and not (auto and bk != "jit"):
            check_jit_optimize(bk, o.device)  # refused before anything runs, not recorded as a per-run error
        used, note = check_precision(prec, bk, o.device, o.allow_fallback)
        runs.append((spec, o.replace(
            backend=bk, precision=used, batch_size=o.batch_size or default_batch, img_size=checkpoint_img_size(o.img_size, o.checkpoint, spec.img_size),
            warmup=DEFAULT_WARMUP_S if o.warmup is None else o.warmup,
            duration=DEFAULT_DURATION_S if o.duration is None else o.duration,
            fuse=o.fuse and o.mode != "train", count_macs=o.count_macs or o.roofline,
            jit_optimize=o.jit_optimize and bk == "jit"), note))
    isolate = o.isolate if o.isolate is not None else o.mode == "memory" and o.device == "cpu"
    env = environment(o.device)
    peaks = cpu_peaks(seconds=0.5) if o.roofline else None
    bar = tqdm(total=len(runs), desc=f"bench {o.mode}", unit="run", disable=not o.progress, file=sys.stderr)
    if o.rounds is not None:
        records = _race(runs, o.rounds, bar)
    else:
        records = []
        for spec, run, note in runs:
            bar.set_postfix_str(f"{spec.label} {run.backend} {run.precision}")
            try:
                rec = _run_isolated(spec, run) if isolate else run_single(spec, run)
            except Exception as e:  # one broken model/backend pair must not lose the other results
                rec = _record(spec, run, error=f"{type(e).__name__}: {e}")
            records.append(rec)
            bar.update()
            if rec.get("throughput"):
                bar.set_postfix_str(f"{spec.label} {run.backend}: {rec['throughput']:.0f} img/s")
    bar.close()
    for rec, (_, _, note) in zip(records, runs):
        rec.update(device=env["device"], cpu=env["cpu"], gpu=env["gpu"], versions=env["versions"], note=note)
        if peaks is not None:
            rec.update(peaks.fields(rec.get("macs_m"), rec.get("throughput")))
    return _pick_fastest(records) if auto else records


def fastest_per_model(
    records: Sequence[dict[str, Any]], eligible: Callable[[dict[str, Any]], bool],
    speed: Callable[[dict[str, Any]], float],
) -> list[tuple[list[dict[str, Any]], dict[str, Any] | None]]:
    """Per model, in the order first seen: all its records, and the eligible one with the highest ``speed``
    (None when none is eligible). The one way routes are picked: ``bench --mode latency`` and the demo."""
    out = []
    for model in dict.fromkeys(r["model"] for r in records):
        candidates = [r for r in records if r["model"] == model]
        eligible_ones = [r for r in candidates if eligible(r)]
        out.append((candidates, max(eligible_ones, key=speed) if eligible_ones else None))
    return out


def _pick_fastest(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per model from an auto race: the fastest route that ran and passed, with the others' p50 times."""
    def ran(r: dict[str, Any]) -> bool:
        return bool(r.get("latency_ms")) and not r.get("error")

    picked: list[dict[str, Any]] = []
    for candidates, fastest in fastest_per_model(records, ran, lambda r: -r["latency_ms"]):
        best = dict(fastest or candidates[0])
        best["route"] = f"{_route_label(best)} (fastest of {len(candidates)})" if fastest else None
        best["route_candidates_ms"] = {_route_label(r): r.get("latency_ms") for r in candidates}
        picked.append(best)
    return picked


def _route_label(rec: dict[str, Any]) -> str:
    """A run's route, e.g. 'openvino fp32' or 'jit fp32 CL'."""
    return f"{rec['backend']} {rec['precision']}" + (" CL" if rec.get("channels_last") else "") + (
        " opt" if rec.get("jit_optimize") else "")


def _record(spec: ModelSpec, run: BenchOptions, **values: Any) -> dict[str, Any]:
    """A result row: identity and settings first, then the measured values (None when not measured)."""
    rec: dict[str, Any] = dict(
        # a checkpoint's weights are not the published ones whose top-1 the zoo lists
        model=spec.label, source=spec.source, family=spec.family, top1=None if run.checkpoint else spec.top1,
        checkpoint=run.checkpoint, mode=run.mode,
        backend=run.backend, precision=run.precision, device=run.device, batch_size=run.batch_size,
        threads=run.threads, img_size=run.img_size, fused=run.fuse, channels_last=run.channels_last,
        jit_optimize=run.jit_optimize,
        throughput=None, latency_ms=None, latency_p90_ms=None, latency_p99_ms=None, spread_pct=None,
        iterations=None, clock=run.clock, rounds=run.rounds, round_medians_ms=None, round_loads=None, round_spread_pct=None,
        unsteady=None, peak_memory_mb=None, setup_memory_mb=None, memory_method=None,
        max_abs_diff=None, rel_err=None, top1_agreement=None, params_m=None, macs_m=None, unfused_norms=None,
        setup_s=None,
        warmup_s=run.warmup, duration_s=run.duration, note="", error=None,
    )
    rec.update(values)
    return rec


def _timing_fields(stats: TimingStats, batch: int, rounds: Sequence[TimingStats] = (),
                   loads: Sequence[float] | None = None) -> dict[str, Any]:
    """Throughput and latency of one timed window, or of interleaved ``rounds`` (``stats`` pools their calls:
    p50 is then the median of the rounds' medians, p90 / p99 / spread those of every call; ``best_round_throughput``
    that of the fastest round). ``loads``: the load every run of the race saw per round (:func:`round_loads`);
    ``round_spread_pct`` / ``unsteady`` judge what is left of the run's rounds without it."""
    if not rounds:
        median_s, extra = stats.median_s, {}
    else:
        round_medians = [r.median_s for r in rounds]
        median_s = statistics.median(round_medians)
        loads = list(loads) if loads is not None else [1.0] * len(round_medians)
        spread = round_spread_pct([m / load for m, load in zip(round_medians, loads)])
        # load only ever adds time: the fastest round is the least disturbed estimate of the run's own speed
        extra = dict(round_medians_ms=[1e3 * m for m in round_medians], round_loads=loads, round_spread_pct=spread,
                     unsteady=spread > ROUND_SPREAD_BOUND_PCT, best_round_throughput=batch / min(round_medians))
    return dict(
        throughput=batch / median_s, latency_ms=1e3 * median_s, latency_p90_ms=1e3 * stats.p90_s,
        latency_p99_ms=1e3 * stats.p99_s, spread_pct=stats.spread_pct, iterations=stats.iterations, **extra,
    )


@contextlib.contextmanager
def _cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """cuDNN autotuning (the papers' GPU protocol) for one run; the process's setting is restored after."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled or saved
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


@contextlib.contextmanager
def _run_context(run: BenchOptions) -> Iterator[None]:
    """The process settings every run of ``run``'s kind is built and timed in (threads, cuDNN autotuning)."""
    cuda = run.device.startswith("cuda")
    with torch_threads(None if cuda else run.threads), quiet_deprecations(), _cudnn_benchmark(cuda):
        yield


@dataclass
class _Prepared:
    """A run built and ready to time: its runtime, timed input and the fp32 eager logits it is checked against."""

    runtime: Any
    x: Any
    reference: torch.Tensor
    values: dict[str, Any]  # record fields known before timing (params, MACs, set-up time and memory)

    def call(self) -> Any:
        return self.runtime.run(self.x)

    def finish(self, spec: ModelSpec, run: BenchOptions, **values: Any) -> dict[str, Any]:
        """The run's record: its logits checked against the reference on separate images, then ``values``."""
        check_images = verification_images(run.batch_size, run.img_size, seed=run.seed + 1)
        check = compare_runtime(self.reference, self.runtime, check_images, run.batch_size)
        # int8 artifacts keep their float ops in the runtime's precision (OpenVINO: bf16 on AVX512-BF16 CPUs)
        precision = run.precision if run.precision == "int8" else getattr(self.runtime, "effective_precision",
                                                                          run.precision)
        return _record(spec, run, precision=precision, max_abs_diff=check.max_abs_diff, rel_err=check.rel_err,
                       top1_agreement=check.top1_agreement, **self.values, **values)


def _built_model(spec: ModelSpec, run: BenchOptions, cache: dict[tuple, nn.Module] | None) -> nn.Module:
    """``spec``'s random-weight eval model for ``run`` (the same weights for every route of one model: a race reuses
    the last one built through ``cache`` instead of building and perturbing it again for each route)."""
    key = (spec.ref, run.img_size, run.seed, run.perturb_bn, run.checkpoint)
    if cache is not None and key in cache:
        return cache[key]
    model = _new_model(spec, run)
    if cache is not None:
        cache.clear()  # runs come model by model: keep one
        cache[key] = model
    return model


def _new_model(spec: ModelSpec, run: BenchOptions) -> nn.Module:
    """``spec``'s eval model for ``run``: ``run.checkpoint``'s weights, or seeded random ones (``perturb_bn``: with
    non-identity BatchNorms, so that the logits depend on the input and the routes' checks mean something)."""
    torch.manual_seed(run.seed)
    model = create_model(spec.ref, img_size=run.img_size, checkpoint=run.checkpoint).eval()
    if run.perturb_bn and run.checkpoint is None:
        signal_weights_(model, seed=run.seed, img_size=run.img_size)
    return model


def _prepare(spec: ModelSpec, run: BenchOptions, base_mb: float | None,
             cache: dict[tuple, nn.Module] | None = None) -> _Prepared:
    """Build, fuse and compile ``spec`` for ``run`` (inference modes), with the reference logits."""
    cuda = run.device.startswith("cuda")
    t0 = time.perf_counter()
    model = _built_model(spec, run, cache)
    torch.manual_seed(run.seed)
    example = torch.randn(run.batch_size, 3, run.img_size, run.img_size)
    # fuse_model returns a copy; an unfused model is copied so that a runtime casting it leaves the cached one alone
    model = fuse_model(model, target=target_for(run.backend)) if run.fuse else copy.deepcopy(model)
    params = count_params(model) / 1e6
    norms = count_unfused_norms(model)
    macs = count_macs(model, run.img_size, fuse_first=False) / 1e6 if run.count_macs else None
    # fp32 eager logits on separate test images (whole timed-size batches, >= 2 rows for the spread):
    # what every backend/precision is compared with, also for batch-1 latency runs. The images are
    # drawn again from their seed for the comparison, so the memory measurement does not hold them.
    reference = run_in_batches(model, verification_images(run.batch_size, run.img_size, seed=run.seed + 1),
                               run.batch_size)
    if run.precision == "int8":
        runtime = _int8_runtime(model, run, example)
    else:
        runtime = build_runtime(model, run.backend, example, precision=run.precision, device=run.device,
                                threads=run.threads, bf16_mode=run.bf16_mode, compile_mode=run.compile_mode,
                                channels_last=run.channels_last, jit_optimize=run.jit_optimize)
    del model
    setup_s = time.perf_counter() - t0
    # CPU set-up memory needs the RSS from before the build; a race builds every run first and measures none (and
    # skips the full garbage collection, whose cost grows with every runtime already built)
    if base_mb is not None or cuda:
        release_freed_memory()
    setup_mb = torch.cuda.memory_allocated() / 2**20 if cuda else None if base_mb is None else rss_mb() - base_mb
    return _Prepared(runtime, runtime.prepare(example.to(run.device)), reference,
                     dict(params_m=params, macs_m=macs, unfused_norms=norms, setup_s=setup_s,
                          setup_memory_mb=setup_mb))


def run_single(spec: ModelSpec, run: BenchOptions) -> dict[str, Any]:
    """Measure one run (``run``: a :class:`BenchOptions` with one backend and precision and its defaults resolved,
    as :func:`benchmark` makes them) in this process; returns its record."""
    cuda = run.device.startswith("cuda")
    torch.manual_seed(run.seed)
    release_freed_memory()
    base_mb = None if cuda else rss_mb()  # CPU memory is counted from before the model exists
    with _run_context(run):
        if run.mode == "train":
            model = _new_model(spec, run)
            return _run_train(spec, run, model, torch.randn(run.batch_size, 3, run.img_size, run.img_size), base_mb)
        prepared = _prepare(spec, run, base_mb)
        with PeakMemory(run.device, base_mb) as mem:
            if run.mode == "memory":
                # A few calls reach the steady-state peak; no long timed window needed.
                stats = measure(prepared.call, warmup_s=0.0, duration_s=1e-9, min_iters=3, max_iters=3,
                                min_warmup_iters=1, sync=prepared.runtime.synchronize)
            else:
                stats = measure(prepared.call, warmup_s=run.warmup, duration_s=run.duration,
                                sync=prepared.runtime.synchronize, clock=_CLOCKS[run.clock])
        # Three calls in memory mode are not a speed measurement: leave the timings empty.
        timings = _timing_fields(stats, run.batch_size) if run.mode != "memory" else {}
        return prepared.finish(spec, run, peak_memory_mb=mem.peak_mb, memory_method=mem.method, **timings)


def _race(runs: Sequence[tuple[ModelSpec, BenchOptions, str]], rounds: int, bar: Any) -> list[dict[str, Any]]:
    """Build every run, then time them all in ``rounds`` interleaved rounds (one process, one thread setting:
    all runs share ``benchmark``'s options). Peak memory is not measured: every runtime is alive at once."""
    if not runs:
        return []
    first = runs[0][1]
    prepared: dict[str, _Prepared] = {}
    records: dict[int, dict[str, Any]] = {}
    models: dict[tuple, nn.Module] = {}
    with _run_context(first):
        for i, (spec, run, _) in enumerate(runs):
            bar.set_postfix_str(f"build {spec.label} {run.backend} {run.precision}")
            try:
                prepared[str(i)] = _prepare(spec, run, None, models)
            except Exception as e:  # one broken model/backend pair must not lose the other results
                records[i] = _record(spec, run, error=f"{type(e).__name__}: {e}")
        models.clear()
        bar.set_postfix_str(f"{len(prepared)} runs x {rounds} interleaved rounds")
        # a call longer than the round's window is a window by itself: one is enough (the rounds give the spread)
        stats = interleaved_stats({k: p.call for k, p in prepared.items()}, rounds=rounds, duration_s=first.duration,
                                  warmup_s=first.warmup, clock=_CLOCKS[first.clock], min_iters=1,
                                  sync={k: p.runtime.synchronize for k, p in prepared.items()})
        loads = round_loads([[r.median_s for r in stats[key]] for key in prepared])
        for key, p in prepared.items():
            spec, run, _ = runs[int(key)]
            try:
                records[int(key)] = p.finish(spec, run, **_timing_fields(TimingStats.pooled(stats[key]),
                                                                         run.batch_size, stats[key], loads))
            except Exception as e:
                records[int(key)] = _record(spec, run, error=f"{type(e).__name__}: {e}")
            bar.update()
    return [records[i] for i in range(len(runs))]


def _int8_runtime(model: nn.Module, run: BenchOptions, example: torch.Tensor) -> Any:
    """The int8 artifact of ``model`` for ``run.backend`` (leanvit.deploy.quantize), opened in its runtime.

    Calibrated on the benchmark's own signal images: right for timing, meaningless for accuracy (random
    weights); ``leanvit quantize`` measures accuracy on real images."""
    calibration = signal_images(32, run.img_size, seed=run.seed + 2)
    with tempfile.TemporaryDirectory(prefix="leanvit-bench-int8-") as tmp:
        route = backend_route(run.backend)
        runtime = route.int8
        path = Path(tmp) / f"model{route.int8_suffix}"
        artifact = quantize_for(runtime, model, example, calibration, path, threads=run.threads)
        return artifact.open(run.threads, batch_size=run.batch_size)  # every runtime holds its program in memory


def _run_train(spec: ModelSpec, run: BenchOptions, model: nn.Module, example: torch.Tensor,
               base_mb: float | None) -> dict[str, Any]:
    """Training steps/s: forward (AMP on GPU / autocast bf16 on CPU when asked), cross-entropy, backward, AdamW."""
    t0 = time.perf_counter()
    device = run.device
    fmt = torch.channels_last if run.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=fmt).train()
    params = count_params(model) / 1e6
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = example.to(device).contiguous(memory_format=fmt)
    num_classes = getattr(model, "num_classes", 1000) or 1000
    target = torch.randint(0, num_classes, (run.batch_size,), device=device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.precision)
    scaler = torch.amp.GradScaler("cuda") if run.precision == "fp16" else None  # fp16 AMP needs loss scaling

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            out = model(x)
            outs = out if isinstance(out, (tuple, list)) else (out,)  # distilled heads: train both
            loss = sum(torch.nn.functional.cross_entropy(o.float(), target) for o in outs)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    step()  # allocates optimizer state: part of the memory peak, not of the timings
    setup_s = time.perf_counter() - t0
    with PeakMemory(device, base_mb) as mem:
        stats = measure(step, warmup_s=run.warmup, duration_s=run.duration, sync=sync, clock=_CLOCKS[run.clock])
    return _record(spec, run, params_m=params, setup_s=setup_s, peak_memory_mb=mem.peak_mb,
                   memory_method=mem.method, **_timing_fields(stats, run.batch_size))


def _run_isolated(spec: ModelSpec, run: BenchOptions) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter (clean RSS baseline); returns its record."""
    env = dict(os.environ)
    if run.threads:
        # Thread pools are sized at import in the child; make them match before torch loads.
        env.update(OMP_NUM_THREADS=str(run.threads), MKL_NUM_THREADS=str(run.threads))
    proc = subprocess.run(
        [sys.executable, "-m", "leanvit.bench._isolated", spec.label, json.dumps(asdict(run))],
        capture_output=True, text=True, env=env, timeout=1800,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise OperationError(f"isolated run failed (exit {proc.returncode}): {' | '.join(tail)}")
    rec = json.loads(lines[-1])
    rec["memory_method"] = f"{rec.get('memory_method')} (fresh process)"
    return rec
