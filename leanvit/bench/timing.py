"""Warm-up, then a timed window: the LeViT-heritage loop of the papers' speed tests."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from ..errors import InvalidValueError

__all__ = ["TimingStats", "measure", "interleaved_stats", "interleaved_medians", "round_loads", "round_spread_pct"]


@dataclass(frozen=True)
class TimingStats:
    """Per-call time statistics (seconds) over the timed window (``times``: each call's, in order)."""

    iterations: int
    warmup_iterations: int
    total_s: float
    median_s: float
    mean_s: float
    std_s: float
    p10_s: float
    p90_s: float
    p99_s: float
    times: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @property
    def spread_pct(self) -> float:
        """(p90 - p10) / median in percent: how noisy the window was."""
        return 100.0 * (self.p90_s - self.p10_s) / self.median_s if self.median_s > 0 else 0.0

    @classmethod
    def from_times(cls, times: list[float], warmup_iterations: int = 0) -> "TimingStats":
        """Statistics of a list of per-call times."""
        t = np.asarray(times, dtype=np.float64)
        p10, p50, p90, p99 = np.percentile(t, [10, 50, 90, 99])
        return cls(len(t), warmup_iterations, float(t.sum()), float(p50), float(t.mean()), float(t.std()),
                   float(p10), float(p90), float(p99), tuple(float(v) for v in t))

    @classmethod
    def pooled(cls, rounds: Sequence["TimingStats"]) -> "TimingStats":
        """The statistics of every call of several timed windows together (e.g. interleaved rounds)."""
        return cls.from_times([t for r in rounds for t in r.times], sum(r.warmup_iterations for r in rounds))


def measure(
    fn: Callable[[], Any],
    *,
    warmup_s: float = 2.0,
    duration_s: float = 10.0,
    min_iters: int = 5,
    max_iters: int | None = None,
    min_warmup_iters: int = 2,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> TimingStats:
    """Call ``fn`` for ``warmup_s`` seconds (at least ``min_warmup_iters`` times: TorchScript's
    profiling executor optimises the graph only after its first runs), then time calls until ``duration_s``
    seconds of calls and ``min_iters`` calls have accumulated (or ``max_iters`` calls).

    ``sync`` runs after every call (``torch.cuda.synchronize`` on GPU, as the papers do). ``clock``
    times each call: wall time by default; ``time.process_time`` (CPU time of this process) is far
    steadier for single-threaded CPU runs on a shared machine, where wall time also counts the
    time other jobs hold the core.
    """
    if warmup_s < 0 or duration_s <= 0:
        raise InvalidValueError(f"need warmup >= 0 and duration > 0 seconds, got {warmup_s} and {duration_s}")
    sync = sync or (lambda: None)
    warm = 0
    start = time.perf_counter()
    while warm < min_warmup_iters or time.perf_counter() - start < warmup_s:
        fn()
        sync()
        warm += 1
    times: list[float] = []
    total = 0.0
    while total < duration_s or len(times) < min_iters:
        t0 = clock()
        fn()
        sync()
        dt = clock() - t0
        times.append(dt)
        total += dt
        if max_iters is not None and len(times) >= max_iters:
            break
    return TimingStats.from_times(times, warm)


def interleaved_stats(
    calls: Mapping[str, Callable[[], Any]],
    *,
    rounds: int,
    duration_s: float,
    warmup_s: float = 1.0,
    clock: Callable[[], float] = time.perf_counter,
    sync: Mapping[str, Callable[[], None]] | None = None,
    min_iters: int = 3,
) -> dict[str, list[TimingStats]]:
    """Race ``calls`` in interleaved rounds (A B C ... A B C ...): each is warmed up once for ``warmup_s``,
    then timed for ``duration_s`` (and at least ``min_iters`` calls) per round; returns each call's per-round
    statistics.

    On a shared machine, load that comes and goes then hits every call alike instead of whichever
    happened to be timed at that moment (benchmarks/NOTES.md entries 2 and 15). ``sync`` (per key) runs
    after every call of that key (``torch.cuda.synchronize`` on GPU)."""
    if rounds < 1:
        raise InvalidValueError(f"rounds must be >= 1, got {rounds}")
    sync = sync or {}
    for key, fn in calls.items():  # warm-up: warmup_s and at least two calls (TorchScript optimises after its first)
        measure(fn, warmup_s=warmup_s, duration_s=1e-9, min_iters=1, clock=clock, sync=sync.get(key))
    stats: dict[str, list[TimingStats]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, fn in calls.items():  # one call brings its weights back into the caches the others used
            stats[key].append(measure(fn, warmup_s=0.0, min_warmup_iters=1, duration_s=duration_s, min_iters=min_iters,
                                      clock=clock, sync=sync.get(key)))
    return stats


def interleaved_medians(
    calls: Mapping[str, Callable[[], Any]],
    *,
    rounds: int,
    duration_s: float,
    warmup_s: float = 1.0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """:func:`interleaved_stats`' per-round median call times (seconds) of each call."""
    stats = interleaved_stats(calls, rounds=rounds, duration_s=duration_s, warmup_s=warmup_s, clock=clock)
    return {key: [r.median_s for r in per_round] for key, per_round in stats.items()}


def round_loads(medians_by_run: Sequence[Sequence[float]]) -> list[float]:
    """The load every run of one interleaved race saw in each round: per round, the median over runs of the
    run's round median relative to its own median (1.0 everywhere with fewer than 3 runs, where the common part
    cannot be told from a run's own). Dividing a run's round medians by it leaves what is the run's own.

    Why: on the idle 2-core EPYC (2026-12-07) the demo's third round ran 10-25 % slower for all 38 runs alike,
    which marked every run unsteady although no ranking changed; interleaving cancels such load, so only a run's
    disagreement beyond it can reorder neighbours."""
    if len(medians_by_run) < 3:
        return [1.0] * (len(medians_by_run[0]) if medians_by_run else 0)
    relative = np.asarray([[m / float(np.median(run)) for m in run] for run in medians_by_run], dtype=np.float64)
    return [float(v) for v in np.median(relative, axis=0)]


def round_spread_pct(round_medians: Sequence[float]) -> float:
    """How far interleaved rounds disagree: (slowest - fastest round median) / their median, in percent."""
    mid = float(np.median(round_medians))
    return 100.0 * (max(round_medians) - min(round_medians)) / mid if mid > 0 else 0.0
