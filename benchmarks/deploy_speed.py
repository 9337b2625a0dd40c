"""Deployment speed on this CPU, in one run: leanvit vs timm, and leanvit's fastest path vs OpenVINO.

Fused models, batch 16 of ``signal_images``, 1 thread, native resolution, ``signal_weights_`` (logits that
depend on the input).

1. PyTorch fp32: leanvit (best of eager / jit, jit with and without ``--jit-optimize``: ``torch.jit.freeze``
   + ``optimize_for_inference``) vs timm fused + ``torch.jit.trace`` (the papers' protocol).
2. Fastest shipped path: every leanvit backend x precision that ``leanvit bench`` offers, each on the
   model fused for its runtime as ``leanvit bench`` does (``fuse(target=target_for(backend))``: OpenVINO
   runs EfficientViT-M's split-qkv attention), keeping those whose max logit error vs fp32 eager relative
   to the logits' spread is within the export's bf16 bound (``leanvit.deploy.verify.BF16_SPREAD_RTOL``);
   the fastest vs OpenVINO at its *default* precision (bf16 on AMX CPUs) running
   timm's fused model. ``--torch-form`` also times OpenVINO bf16 on the ``target="torch"`` graph.
3. ``--roofline`` only: this CPU's single-thread matmul peaks, measured as ``leanvit bench --roofline`` does
   (``leanvit.bench.roofline.cpu_peaks``: fp32 always, best of torch.mm and OpenVINO MatMul; int8 where the CPU
   has int8 dot products; bf16 where it is native; a precision it only emulates is reported by its measured
   ratio to fp32, never as a roof), the fraction of its precision's peak each path reaches (MACs per image x
   images/s / peak MAC/s), and the roofline ceilings: the largest ratio over timm's jit (fp32 peak) and over
   timm's OpenVINO (the fastest native float peak: bf16 where native, else fp32) that any path with the model's
   MACs could reach. A target above its ceiling needs fewer MACs or cheaper arithmetic (int8), not a better
   graph (NOTES.md entry 15).
4. The exact route (issue 25 target 1), a second table: leanvit's fastest fp32 path vs timm's fused model in
   OpenVINO at fp32 (timed as an extra path where OpenVINO's default is another precision), with ``--roofline``
   each one's share of the fp32 peak and the fp32 ceiling over timm's OpenVINO.

Calls are timed with the process CPU time (1 thread; see NOTES.md entry 2). timm's PyTorch number is
the papers' protocol (NCHW trace); next to it, leanvit's best is compared with the best of timm's four jit
paths (trace / optimized, NCHW / channels-last: the same tooling leanvit's paths get; NOTES.md entry 15).

The machine is shared and noisy, so the paths of one model are timed in interleaved rounds
(A B C ... A B C ...) and each path reports the median of its per-round medians.

    python benchmarks/deploy_speed.py                        # shvit_s1 shvit_s4 efficientvit_m0 efficientvit_m5
    python benchmarks/deploy_speed.py --roofline             # + this CPU's matmul peaks, fractions and ceilings
    python benchmarks/deploy_speed.py efficientvit_m0 --rounds 3 --seconds 1 --json out.json --markdown out.md
    python benchmarks/deploy_speed.py --rounds 3 --seconds 1.5 --torch-form   # + OpenVINO on the torch-target graph
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import torch

from leanvit.bench.env import environment
from leanvit.bench.roofline import RooflinePeaks, cpu_peaks, roofline_ceiling
from leanvit.bench.timing import interleaved_medians
from leanvit.deploy.capabilities import check_precision
from leanvit.deploy.runtime import OpenVinoRuntime, Runtime, build_runtime
from leanvit.deploy.verify import BF16_SPREAD_RTOL
from leanvit.models import count_macs, create_model, logit_agreement, signal_images, signal_weights_
from leanvit.models.fusion import TARGETS
from leanvit.deploy.routes import target_for
from leanvit.zoo import fuse_model, resolve_model

DEFAULT_MODELS = ["shvit_s1", "shvit_s4", "efficientvit_m0", "efficientvit_m5"]
MAX_REL_ERR = BF16_SPREAD_RTOL  # error / logit spread, the export's bf16 bound


class PathSpec(NamedTuple):
    """One way to run a model: the ``leanvit bench`` settings it uses."""

    backend: str
    precision: str
    bf16_mode: str | None = None
    channels_last: bool = False
    jit_optimize: bool = False  # --jit-optimize: freeze + optimize_for_inference after the trace
    target: str | None = None  # fuse target; None: target_for(backend), what `leanvit bench` ships

    def label(self, lib: str = "leanvit") -> str:
        """E.g. 'leanvit jit fp32 CL opt', 'timm jit fp32', 'leanvit jit bf16 CL convert'."""
        return (f"{lib} {self.backend} {self.precision}" + (" CL" if self.channels_last else "")
                + (" opt" if self.jit_optimize else "") + (f" {self.bf16_mode}" if self.bf16_mode else ""))


# leanvit paths that `leanvit bench` ships
LEANVIT_PATHS = [
    PathSpec("eager", "fp32"), PathSpec("jit", "fp32"), PathSpec("jit", "fp32", jit_optimize=True),
    PathSpec("eager", "fp32", channels_last=True), PathSpec("jit", "fp32", channels_last=True),
    PathSpec("jit", "fp32", channels_last=True, jit_optimize=True),
    PathSpec("onnxruntime", "fp32"), PathSpec("openvino", "fp32"),
    PathSpec("jit", "bf16", "autocast", True), PathSpec("jit", "bf16", "convert", True), PathSpec("openvino", "bf16"),
]
COMPILE_PATHS = [PathSpec("compile", "fp32", channels_last=True), PathSpec("compile", "bf16", "convert", True)]
# timm's PyTorch references: the papers' protocol (NCHW trace) first, then the same tooling leanvit gets
TIMM_JIT_PATHS = [
    PathSpec("jit", "fp32"), PathSpec("jit", "fp32", channels_last=True), PathSpec("jit", "fp32", jit_optimize=True),
    PathSpec("jit", "fp32", channels_last=True, jit_optimize=True),
]
# with --compile, timm's model gets torch.compile too (the same tooling as leanvit's compile path)
TIMM_COMPILE_PATHS = [PathSpec("compile", "fp32", channels_last=True)]
CLOCK = time.process_time  # 1 thread on a shared machine: CPU time is steady, wall time is not (NOTES.md 2)


@dataclass
class RunPath:
    """One way to run one model."""

    label: str
    lib: str
    precision: str
    runtime: Runtime
    x: Any
    batch: int
    rel_err: float = 0.0
    times: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.batch / statistics.median(self.times) if self.times else 0.0


def _rel_err(reference: torch.Tensor, output: torch.Tensor) -> float:
    """Max logit error relative to the reference logits' spread across the batch (as bench and export report)."""
    return logit_agreement(reference, output)["relative_error"]


def _paths(name: str, batch: int, with_compile: bool, with_torch_form: bool) -> tuple[list[RunPath], float]:
    """Runtimes for leanvit's paths and timm's references; returns them and the MACs per image.

    Each leanvit path runs the model fused for its runtime, as ``leanvit bench`` does
    (``fuse(target=target_for(backend))``: OpenVINO gets EfficientViT-M's split-qkv attention)."""
    out: list[RunPath] = []
    lean_spec, timm_spec = resolve_model(f"leanvit:{name}"), resolve_model(f"timm:{name}")
    side = lean_spec.img_size
    x = signal_images(batch, side, seed=0)
    raw = signal_weights_(create_model(lean_spec.ref, img_size=side).eval(), seed=0)
    lean = {target: fuse_model(raw, target=target) for target in TARGETS}
    macs = count_macs(lean["torch"], side, fuse_first=False)
    with torch.inference_mode():
        ref = lean["torch"](x).float()
    paths = LEANVIT_PATHS + (COMPILE_PATHS if with_compile else [])
    if with_torch_form:  # what the openvino backend ran before fuse(target="openvino"): not a shipped path
        paths.append(PathSpec("openvino", "bf16", target="torch"))
    for lp in paths:
        try:
            check_precision(lp.precision, lp.backend)
        except (ValueError, RuntimeError) as e:
            print(f"  skip {lp.label()}: {e}", file=sys.stderr)
            continue
        target = lp.target or target_for(lp.backend)
        # A copy each: PyTorch runtimes may cast their module in place.
        rt = build_runtime(copy.deepcopy(lean[target]), lp.backend, x, precision=lp.precision, threads=1,
                           bf16_mode=lp.bf16_mode or "autocast", channels_last=lp.channels_last,
                           jit_optimize=lp.jit_optimize)
        label = lp.label()
        shipped = target == target_for(lp.backend)
        if target == "openvino" or not shipped:
            label += f" [fuse target={target}]"
        p = RunPath(label, "leanvit" if shipped else "reference", lp.precision, rt, rt.prepare(x), batch)
        p.rel_err = _rel_err(ref, rt.to_torch(rt.run(p.x)))
        out.append(p)
    timm_fused = fuse_model(signal_weights_(create_model(timm_spec.ref, img_size=side).eval(), seed=0))
    with torch.inference_mode():
        timm_ref = timm_fused(x).float()  # timm's own random weights: its paths are checked against its eager
    for tp in TIMM_JIT_PATHS + (TIMM_COMPILE_PATHS if with_compile else []):
        rt = build_runtime(copy.deepcopy(timm_fused), tp.backend, x, threads=1, channels_last=tp.channels_last,
                           jit_optimize=tp.jit_optimize)
        p = RunPath(tp.label("timm"), "timm", tp.precision, rt, rt.prepare(x), batch)
        p.rel_err = _rel_err(timm_ref, rt.to_torch(rt.run(p.x)))
        out.append(p)
    # OpenVINO's own default precision, then (where that is not fp32) the exact reference at fp32
    for precision in (None, "fp32"):
        ov = OpenVinoRuntime(timm_fused, example=x, threads=1, precision=precision)
        label = f"timm openvino default ({ov.effective_precision})" if precision is None else "timm openvino fp32"
        p = RunPath(label, "timm", ov.effective_precision, ov, ov.prepare(x), batch)
        p.rel_err = _rel_err(timm_ref, ov.to_torch(ov.run(p.x)))
        out.append(p)
        if ov.effective_precision == "fp32":
            break
    return out, macs


def _ceiling(peak: float, macs: float, reference: dict[str, Any]) -> float:
    return roofline_ceiling(peak, macs, reference["throughput"])


def _fastest_peak(peaks: RooflinePeaks) -> tuple[str, float]:
    """The roof of the fastest exact-or-bf16 path: bf16's peak where bf16 is native here, else fp32's (the
    paths raced here are float; int8's peak is reported, not a roof for them)."""
    precision = "bf16" if "bf16" in peaks.native else "fp32"
    return precision, peaks.native[precision]


def race(paths: list[RunPath], rounds: int, seconds: float) -> None:
    """Interleaved rounds; each path keeps its per-round median call time."""
    calls = {str(i): (lambda p=p: p.runtime.run(p.x)) for i, p in enumerate(paths)}
    medians = interleaved_medians(calls, rounds=rounds, duration_s=seconds, warmup_s=1.0, clock=CLOCK)
    for i, p in enumerate(paths):
        p.times.extend(medians[str(i)])


def _torch_form_cell(row: dict[str, Any] | None, timm_ov: dict[str, Any]) -> str:
    if row is None:
        return " - |"
    return f" {row['throughput']:.1f} ({row['throughput'] / timm_ov['throughput']:.2f}x) |"


def _exact_table(results: list[dict[str, Any]], with_peaks: bool) -> str:
    """Exact routes only (fp32 everywhere): leanvit's fastest vs timm's model in OpenVINO fp32, with each one's
    share of this CPU's fp32 matmul peak and the fp32 roofline ceiling over timm's OpenVINO (issue 25 target 1)."""
    head = ("| model | MMACs | leanvit fastest exact (fp32) | timm OpenVINO fp32 | ratio |"
            + (" % of fp32 peak (leanvit / timm) | fp32 ceiling over timm OV |" if with_peaks else "") + "\n"
            + "|---|---|---|---|---|" + ("---|---|" if with_peaks else ""))
    lines = [head]
    for s in results:
        e = s["exact"]
        lean, timm = e["leanvit"], e["timm"]
        roof = (f" {100 * lean['peak_fraction']:.1f}% / {100 * timm['peak_fraction']:.1f}% | {e['ceiling']:.2f}x |"
                if with_peaks else "")
        lines.append(f"| {s['model']} | {s['macs_m']:.0f} | {lean['throughput']:.1f} ({lean['path'][8:]}) | "
                     f"{timm['throughput']:.1f} | {e['ratio']:.2f}x |" + roof)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per path per round")
    ap.add_argument("--compile", action="store_true",
                    help="also race torch.compile, leanvit's and timm's (≈40 s set-up per model and precision)")
    ap.add_argument("--torch-form", action="store_true",
                    help="also time OpenVINO bf16 on the fuse(target='torch') graph (reference, not a shipped path)")
    ap.add_argument("--roofline", action="store_true",
                    help="also measure this CPU's matmul peaks (fp32; int8 where it has int8 dot products; bf16 where "
                         "native) and report each path's share of its precision's peak and the roofline ceilings")
    ap.add_argument("--json", help="write all numbers here")
    ap.add_argument("--markdown", help="write the summary table here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    peaks = cpu_peaks(seconds=1.0) if args.roofline else None
    if peaks is not None:
        print(peaks.describe(), flush=True)
    results: list[dict[str, Any]] = []
    for name in args.models:
        t0 = time.perf_counter()
        paths, macs = _paths(name, args.batch_size, args.compile, args.torch_form)
        race(paths, args.rounds, args.seconds)
        rows = []
        for p in paths:
            peak = peaks.native.get(p.precision) if peaks is not None else None
            frac = macs * p.throughput / peak if peak else None
            rows.append(dict(path=p.label, lib=p.lib, precision=p.precision, throughput=p.throughput,
                             rel_err=p.rel_err, peak_fraction=frac, round_medians_ms=[1e3 * t for t in p.times]))
            print(f"  {name:16s} {p.label:46s} {p.throughput:8.1f} img/s  err/spread {p.rel_err:.1e}"
                  + (f"  {100 * frac:5.1f}% of {p.precision} peak" if frac is not None else ""), flush=True)
        lean_fp32 = max((r for r in rows if r["lib"] == "leanvit" and r["precision"] == "fp32"
                         and r["path"].split()[1] in ("eager", "jit")), key=lambda r: r["throughput"])
        timm_jit = next(r for r in rows if r["path"] == "timm jit fp32")  # the papers' protocol
        timm_best_jit = max((r for r in rows if r["lib"] == "timm" and r["path"].startswith("timm jit ")),
                            key=lambda r: r["throughput"])  # same tooling: trace / optimized, NCHW / CL
        fastest = max((r for r in rows if r["lib"] == "leanvit" and r["rel_err"] <= MAX_REL_ERR),
                      key=lambda r: r["throughput"])
        timm_ov = next(r for r in rows if r["path"].startswith("timm openvino"))
        # Exact route (issue 25 target 1): leanvit's fastest fp32 path vs timm's model in OpenVINO fp32.
        exact = max((r for r in rows if r["lib"] == "leanvit" and r["precision"] == "fp32"),
                    key=lambda r: r["throughput"])
        timm_ov_fp32 = next(r for r in rows if r["path"].startswith("timm openvino") and r["precision"] == "fp32")
        summary = dict(model=name, macs_m=macs / 1e6, rows=rows,
                       pytorch_fp32=dict(leanvit=lean_fp32, timm=timm_jit, timm_best_jit=timm_best_jit,
                                         ratio=lean_fp32["throughput"] / timm_jit["throughput"],
                                         ratio_same_tooling=lean_fp32["throughput"] / timm_best_jit["throughput"],
                                         ceiling=_ceiling(peaks.native["fp32"], macs, timm_jit) if peaks else None),
                       fastest=dict(leanvit=fastest, timm=timm_ov, ratio=fastest["throughput"] / timm_ov["throughput"],
                                    ceiling=_ceiling(_fastest_peak(peaks)[1], macs, timm_ov) if peaks else None),
                       exact=dict(leanvit=exact, timm=timm_ov_fp32,
                                  ratio=exact["throughput"] / timm_ov_fp32["throughput"],
                                  ceiling=_ceiling(peaks.native["fp32"], macs, timm_ov_fp32) if peaks else None),
                       torch_form=next((r for r in rows if r["lib"] == "reference"), None),
                       seconds=time.perf_counter() - t0)
        results.append(summary)
        print(f"{name}: PyTorch fp32 {summary['pytorch_fp32']['ratio']:.2f}x ({lean_fp32['path']} vs timm jit; "
              f"{summary['pytorch_fp32']['ratio_same_tooling']:.2f}x vs timm best jit, {timm_best_jit['path']}); "
              f"fastest {summary['fastest']['ratio']:.2f}x ({fastest['path']} vs {timm_ov['path']}); "
              f"exact {summary['exact']['ratio']:.2f}x ({exact['path']} vs timm openvino fp32)", flush=True)

    env = environment("cpu")
    roof_head = (f" peak fraction (fastest / OV) | ceiling fp32 / {_fastest_peak(peaks)[0]} |" if peaks else "")
    head = ("| model | MMACs | leanvit best PyTorch fp32 | timm jit fp32 | ratio (target 1.15) | "
            "vs timm best jit (same tooling) | "
            "leanvit fastest (err/spread) | timm OpenVINO default | ratio (target 1.25) |" + roof_head
            + (" OV bf16, fuse target=torch (ratio) |" if args.torch_form else "") + "\n"
            "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if peaks else "")
            + ("---|" if args.torch_form else ""))
    lines = [head]
    for s in results:
        a, f = s["pytorch_fp32"], s["fastest"]
        roof = ""
        if peaks:
            fracs = [f"{100 * r['peak_fraction']:.1f}%" if r["peak_fraction"] is not None else "-"
                     for r in (f["leanvit"], f["timm"])]
            roof = f" {fracs[0]} / {fracs[1]} | {a['ceiling']:.2f}x / {f['ceiling']:.2f}x |"
        lines.append(
            f"| {s['model']} | {s['macs_m']:.0f} | {a['leanvit']['throughput']:.1f} ({a['leanvit']['path'][8:]}) | "
            f"{a['timm']['throughput']:.1f} | {a['ratio']:.2f}x | "
            f"{a['ratio_same_tooling']:.2f}x ({a['timm_best_jit']['path'][5:]} "
            f"{a['timm_best_jit']['throughput']:.1f}) | "
            f"{f['leanvit']['throughput']:.1f} "
            f"({f['leanvit']['path'][8:]}, {f['leanvit']['rel_err']:.1e}) | {f['timm']['throughput']:.1f} | "
            f"{f['ratio']:.2f}x |" + roof
            + (_torch_form_cell(s["torch_form"], f["timm"]) if args.torch_form else ""))
    lines += ["", _exact_table(results, peaks is not None)]
    md = (f"Images/s (CPU-time clock), batch {args.batch_size}, 1 thread, fused, {args.rounds} interleaved rounds x "
          f"{args.seconds:g} s; CL = channels-last. {env['device']}; "
          + (f"{peaks.describe()}; " if peaks else "")
          + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + "\n\n" + "\n".join(lines) + "\n")
    print("\n" + md)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(peaks=dict(native=peaks.native, non_native_ratio=peaks.non_native_ratio) if peaks else None,
                           environment=env, results=results), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
