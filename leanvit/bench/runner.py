"""``benchmark(models, ...)``: throughput, latency, memory and training speed of leanvit and timm models.

Defaults follow the papers' speed tests (LeViT heritage, see docs/benchmarks.md): BN-fused model,
``torch.jit.trace``, CPU batch 16 on 1 thread in fp32, GPU batch 256 with AMP (fp16); warm-up, then
a timed window. Each configuration yields one flat record (dict) with the settings, the timings
(median and spread), peak memory, the device and the library versions.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..deploy import capabilities
from ..deploy.capabilities import check_jit_optimize, check_precision, quiet_deprecations, torch_threads
from ..deploy.names import BACKENDS, INT8_BACKENDS, INT8_RUNTIMES, PRECISIONS
from ..deploy.quantize import quantize_for
from ..deploy.runtime import build_runtime
from ..deploy.verify import compare_runtime, run_in_batches, verification_images
from ..errors import InvalidValueError, OperationError
from ..models import count_macs, count_params
from ..models.signal import signal_images, signal_weights_
from ..zoo import ModelSpec, build_model, count_unfused_norms, fuse_model, resolve_model, target_for
from .env import environment
from .memory import PeakMemory, release_freed_memory, rss_mb
from .roofline import matmul_peak
from .options import MODES, BenchOptions
from .timing import TimingStats, measure

__all__ = ["MODES", "BenchOptions", "BenchConfig", "benchmark", "run_config"]

_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass(frozen=True)
class BenchConfig:
    """One measurement: a model under one mode / backend / precision / batch / thread setting."""

    model: str
    mode: str = "throughput"
    backend: str = "jit"
    precision: str = "fp32"
    device: str = "cpu"
    batch_size: int = 16
    threads: int | None = 1
    img_size: int | None = None
    warmup_s: float = 2.0
    duration_s: float = 10.0
    fuse: bool = True
    bf16_mode: str = "autocast"
    compile_mode: str | None = None
    count_macs: bool = False
    perturb_bn: bool = True
    clock: str = "wall"
    channels_last: bool = False
    jit_optimize: bool = False
    note: str = ""
    seed: int = 0


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


def _validate(mode: str, device: str, batch_size: int | None, threads: int | None, img_size: int | None,
              warmup: float | None, duration: float | None) -> None:
    if mode not in MODES:
        raise InvalidValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if device != "cpu" and not device.startswith("cuda"):
        raise InvalidValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidValueError("device cuda requested but no CUDA GPU is visible; use --device cpu")
    for name, value, low in (("batch_size", batch_size, 1), ("threads", threads, 1), ("img_size", img_size, 32)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            raise InvalidValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if warmup is not None and warmup < 0:
        raise InvalidValueError(f"warmup must be >= 0 seconds, got {warmup}")
    if duration is not None and duration <= 0:
        raise InvalidValueError(f"duration must be > 0 seconds, got {duration}")


def benchmark(models: str | Sequence[str], options: BenchOptions | None = None, **changes: Any) -> list[dict[str, Any]]:
    """Measure every (model, backend, precision) combination; returns one record per combination.

    ``options`` (:class:`~leanvit.bench.options.BenchOptions`, default: the protocol's) with ``changes``
    applied, e.g. ``benchmark(["shvit_s1"], backend="onnxruntime,openvino", threads=1)``.
    ``backend`` / ``precision`` may be lists or comma-separated strings. ``None`` picks the protocol
    defaults (see :func:`_defaults`); ``warmup`` / ``duration`` default to 2 s / 10 s (the papers use
    10 s / 60 s). ``isolate`` runs each configuration in a fresh Python process (default: for
    ``memory`` mode on CPU, where an RSS peak is only meaningful in a clean process). ``jit_optimize``
    freezes and ``optimize_for_inference``-s the jit trace (CPU, backend jit only; see
    :class:`~leanvit.deploy.runtime.TorchRuntime`).

    All arguments are checked before anything runs: unknown models (KeyError with close names),
    missing backend packages (:class:`~leanvit.deploy.capabilities.MissingBackendError`, naming the pip
    extra) and precisions the hardware lacks (:class:`~leanvit.deploy.capabilities.UnsupportedPrecisionError`
    unless ``allow_fallback``). Failures while running one configuration are recorded in its
    ``error`` field and the others still run.
    """
    o = (options or BenchOptions()).replace(**changes)
    mode, device, batch_size, threads, img_size = o.mode, o.device, o.batch_size, o.threads, o.img_size
    warmup, duration, clock, channels_last, jit_optimize = o.warmup, o.duration, o.clock, o.channels_last, o.jit_optimize
    names = [models] if isinstance(models, str) else list(models)
    if not names:
        raise InvalidValueError("no models given")
    _validate(mode, device, batch_size, threads, img_size, warmup, duration)
    if clock not in ("wall", "cpu"):
        raise InvalidValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    if clock == "cpu" and (device != "cpu" or threads != 1):
        raise InvalidValueError("clock='cpu' (process CPU time) equals latency only for single-threaded CPU runs: "
                                "use it with device cpu and threads 1")
    if o.roofline and (device != "cpu" or threads != 1 or mode not in ("throughput", "latency")):
        raise InvalidValueError("roofline fractions compare with the single-thread CPU matmul peak: use them with device "
                                "cpu, threads 1 and mode throughput or latency")
    default_batch, default_precision = _defaults(mode, device)
    specs = [resolve_model(n) for n in names]  # fails fast on unknown names
    configs: list[tuple[ModelSpec, BenchConfig]] = []
    for spec, bk, prec in itertools.product(specs, _as_list(o.backend), _as_list(o.precision)):
        if bk not in BACKENDS:
            raise InvalidValueError(f"unknown backend {bk!r}; choose from {', '.join(BACKENDS)}")
        prec = prec or default_precision
        if prec not in PRECISIONS:
            raise InvalidValueError(f"unknown precision {prec!r}; choose from {', '.join(PRECISIONS)}")
        if channels_last and bk in ("onnxruntime", "openvino"):
            raise InvalidValueError(f"channels_last applies to the PyTorch backends, not {bk} (it picks its own layout)")
        if mode == "train" and bk != "eager":
            raise InvalidValueError(f"train mode measures eager PyTorch training steps; got backend {bk!r}")
        if jit_optimize:
            check_jit_optimize(bk, device)  # refused before anything runs, not recorded as a per-run error
        used, note = check_precision(prec, bk, device, o.allow_fallback)
        configs.append((spec, BenchConfig(
            model=spec.label, mode=mode, backend=bk, precision=used, device=device,
            batch_size=batch_size or default_batch, threads=threads, img_size=img_size or spec.img_size,
            warmup_s=2.0 if warmup is None else warmup, duration_s=10.0 if duration is None else duration,
            fuse=o.fuse and mode != "train", bf16_mode=o.bf16_mode, compile_mode=o.compile_mode,
            count_macs=o.count_macs or o.roofline, perturb_bn=o.perturb_bn, clock=clock, channels_last=channels_last, jit_optimize=jit_optimize, note=note,
        )))
    isolate = o.isolate if o.isolate is not None else mode == "memory" and device == "cpu"
    env = environment(device)
    peaks: dict[str, float] = {}
    if o.roofline:
        # bf16's roof only where bf16 is native: emulated (AVX2 CPUs) its "peak" is ~100x below fp32's, meaningless
        roofs = {"bf16": torch.bfloat16, "fp32": torch.float32} if capabilities.cpu_has_bf16() else {"fp32": torch.float32}
        peaks = {p: matmul_peak(dtype, seconds=0.5) for p, dtype in roofs.items()}
    records = []
    bar = tqdm(configs, desc=f"bench {mode}", unit="run", disable=not o.progress, file=sys.stderr)
    for spec, cfg in bar:
        bar.set_postfix_str(f"{cfg.model} {cfg.backend} {cfg.precision}")
        try:
            rec = _run_isolated(cfg) if isolate else run_config(cfg, spec)
        except Exception as e:  # one broken model/backend pair must not lose the other results
            rec = _record(cfg, spec, error=f"{type(e).__name__}: {e}")
        rec.update(device=env["device"], cpu=env["cpu"], gpu=env["gpu"], versions=env["versions"])
        if peaks and rec.get("throughput") and rec.get("macs_m"):
            for p, peak in peaks.items():
                rec[f"roofline_{p}_pct"] = 100.0 * rec["macs_m"] * 1e6 * rec["throughput"] / peak
                rec[f"matmul_peak_{p}_gmacs"] = peak / 1e9
        records.append(rec)
        if rec.get("throughput"):
            bar.set_postfix_str(f"{cfg.model} {cfg.backend}: {rec['throughput']:.0f} img/s")
    return records


def _record(cfg: BenchConfig, spec: ModelSpec, **values: Any) -> dict[str, Any]:
    """A result row: identity and settings first, then the measured values (None when not measured)."""
    rec: dict[str, Any] = dict(
        model=cfg.model, source=spec.source, family=spec.family, top1=spec.top1, mode=cfg.mode,
        backend=cfg.backend, precision=cfg.precision, device=cfg.device, batch_size=cfg.batch_size,
        threads=cfg.threads, img_size=cfg.img_size, fused=cfg.fuse, channels_last=cfg.channels_last,
        jit_optimize=cfg.jit_optimize,
        throughput=None, latency_ms=None, latency_p90_ms=None, latency_p99_ms=None, spread_pct=None,
        iterations=None, clock=cfg.clock, peak_memory_mb=None, setup_memory_mb=None, memory_method=None,
        max_abs_diff=None, rel_err=None, top1_agreement=None, params_m=None, macs_m=None, unfused_norms=None,
        setup_s=None,
        warmup_s=cfg.warmup_s, duration_s=cfg.duration_s, note=cfg.note, error=None,
    )
    rec.update(values)
    return rec


def _timing_fields(stats: TimingStats, batch: int) -> dict[str, Any]:
    return dict(
        throughput=batch / stats.median_s, latency_ms=1e3 * stats.median_s, latency_p90_ms=1e3 * stats.p90_s,
        latency_p99_ms=1e3 * stats.p99_s, spread_pct=stats.spread_pct, iterations=stats.iterations,
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


def run_config(cfg: BenchConfig, spec: ModelSpec | None = None) -> dict[str, Any]:
    """Run one configuration in this process and return its record."""
    spec = spec or resolve_model(cfg.model)
    cuda = cfg.device.startswith("cuda")
    torch.manual_seed(cfg.seed)
    release_freed_memory()
    base_mb = None if cuda else rss_mb()  # CPU memory is counted from before the model exists
    with torch_threads(None if cuda else cfg.threads), quiet_deprecations(), _cudnn_benchmark(cuda):
        t0 = time.perf_counter()
        model = build_model(spec, cfg.img_size)
        if cfg.perturb_bn:
            signal_weights_(model, seed=cfg.seed, img_size=cfg.img_size)  # logits that depend on the input
        example = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size)
        if cfg.mode == "train":
            return _run_train(cfg, spec, model, example, base_mb)
        if cfg.fuse:
            model = fuse_model(model, target=target_for(cfg.backend))  # e.g. OpenVINO's own deploy form
        params = count_params(model) / 1e6
        norms = count_unfused_norms(model)
        macs = count_macs(model, cfg.img_size, fuse_first=False) / 1e6 if cfg.count_macs else None
        # fp32 eager logits on separate test images (whole timed-size batches, >= 2 rows for the spread):
        # what every backend/precision is compared with, also for batch-1 latency runs. The images are
        # drawn again from their seed for the comparison, so the memory measurement does not hold them.
        reference = run_in_batches(model, verification_images(cfg.batch_size, cfg.img_size, seed=cfg.seed + 1),
                                   cfg.batch_size)
        if cfg.precision == "int8":
            runtime = _int8_runtime(model, cfg, example)
        else:
            runtime = build_runtime(model, cfg.backend, example, precision=cfg.precision, device=cfg.device,
                                    threads=cfg.threads, bf16_mode=cfg.bf16_mode, compile_mode=cfg.compile_mode,
                                    channels_last=cfg.channels_last, jit_optimize=cfg.jit_optimize)
        del model
        setup_s = time.perf_counter() - t0
        release_freed_memory()
        setup_mb = torch.cuda.memory_allocated() / 2**20 if cuda else rss_mb() - base_mb
        x = runtime.prepare(example.to(cfg.device))
        with PeakMemory(cfg.device, base_mb) as mem:
            if cfg.mode == "memory":
                # A few calls reach the steady-state peak; no long timed window needed.
                stats = measure(lambda: runtime.run(x), warmup_s=0.0, duration_s=1e-9, min_iters=3,
                                max_iters=3, min_warmup_iters=1, sync=runtime.synchronize)
            else:
                stats = measure(lambda: runtime.run(x), warmup_s=cfg.warmup_s, duration_s=cfg.duration_s,
                                sync=runtime.synchronize, clock=_CLOCKS[cfg.clock])
        check_images = verification_images(cfg.batch_size, cfg.img_size, seed=cfg.seed + 1)
        check = compare_runtime(reference, runtime, check_images, cfg.batch_size)
    # int8 artifacts keep their float ops in the runtime's precision (OpenVINO: bf16 on AVX512-BF16 CPUs)
    precision = cfg.precision if cfg.precision == "int8" else getattr(runtime, "effective_precision", cfg.precision)
    # Three calls in memory mode are not a speed measurement: leave the timings empty.
    timings = _timing_fields(stats, cfg.batch_size) if cfg.mode != "memory" else {}
    return _record(cfg, spec, precision=precision, params_m=params, macs_m=macs, unfused_norms=norms,
                   setup_s=setup_s, max_abs_diff=check.max_abs_diff, rel_err=check.rel_err,
                   top1_agreement=check.top1_agreement, setup_memory_mb=setup_mb,
                   peak_memory_mb=mem.peak_mb, memory_method=mem.method, **timings)


def _int8_runtime(model: nn.Module, cfg: BenchConfig, example: torch.Tensor) -> Any:
    """The int8 artifact of ``model`` for ``cfg.backend`` (leanvit.deploy.quantize), opened in its runtime.

    Calibrated on the benchmark's own signal images: right for timing, meaningless for accuracy (random
    weights); ``leanvit quantize`` measures accuracy on real images."""
    calibration = signal_images(32, cfg.img_size, seed=cfg.seed + 2)
    with tempfile.TemporaryDirectory(prefix="leanvit-bench-int8-") as tmp:
        runtime = INT8_BACKENDS[cfg.backend]
        path = Path(tmp) / f"model{INT8_RUNTIMES[runtime]}"
        artifact = quantize_for(runtime, model, example, calibration, path, threads=cfg.threads)
        return artifact.open(cfg.threads, batch_size=cfg.batch_size)  # every runtime holds its program in memory


def _run_train(cfg: BenchConfig, spec: ModelSpec, model: nn.Module, example: torch.Tensor,
               base_mb: float | None) -> dict[str, Any]:
    """Training steps/s: forward (AMP on GPU / autocast bf16 on CPU when asked), cross-entropy, backward, AdamW."""
    t0 = time.perf_counter()
    device = cfg.device
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=fmt).train()
    params = count_params(model) / 1e6
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = example.to(device).contiguous(memory_format=fmt)
    num_classes = getattr(model, "num_classes", 1000) or 1000
    target = torch.randint(0, num_classes, (cfg.batch_size,), device=device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None  # fp16 AMP needs loss scaling

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
        stats = measure(step, warmup_s=cfg.warmup_s, duration_s=cfg.duration_s, sync=sync, clock=_CLOCKS[cfg.clock])
    return _record(cfg, spec, params_m=params, setup_s=setup_s, peak_memory_mb=mem.peak_mb,
                   memory_method=mem.method, **_timing_fields(stats, cfg.batch_size))


def _run_isolated(cfg: BenchConfig) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter (clean RSS baseline); returns its record."""
    env = dict(os.environ)
    if cfg.threads:
        # Thread pools are sized at import in the child; make them match before torch loads.
        env.update(OMP_NUM_THREADS=str(cfg.threads), MKL_NUM_THREADS=str(cfg.threads))
    proc = subprocess.run(
        [sys.executable, "-m", "leanvit.bench._isolated", json.dumps(asdict(cfg))],
        capture_output=True, text=True, env=env, timeout=1800,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise OperationError(f"isolated run failed (exit {proc.returncode}): {' | '.join(tail)}")
    rec = json.loads(lines[-1])
    rec["memory_method"] = f"{rec.get('memory_method')} (fresh process)"
    return rec
