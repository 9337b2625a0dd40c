"""Roofline ceilings: the single-thread matmul peaks of this CPU and the speed-up bound they set.

A model's MACs at the matmul peak bound every exact route's throughput: ``ceiling = peak / (MACs x
reference img/s)`` is the largest speed-up over ``reference`` that any graph rewrite can reach at that
precision (benchmarks/deploy_speed.py reports it per model; docs/benchmarks.md explains the numbers).

:func:`cpu_peaks` is what ``leanvit bench --roofline`` measures: the fp32 peak always, the int8 peak where the CPU
has int8 dot-product instructions (AVX512-VNNI / AVX-VNNI / AMX) and the bf16 peak where bf16 is native
(AVX512-BF16 / AMX). A precision this CPU only emulates is never a roof: it is reported with its measured ratio to
fp32 (bf16 on an AVX2 CPU runs ~100x below fp32), so nobody picks it without seeing what it costs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..deploy import capabilities
from ..deploy.capabilities import torch_threads
from ..deploy.writers import compile_openvino
from .timing import measure

__all__ = ["RooflinePeaks", "cpu_peaks", "matmul_peak", "int8_matmul_peak", "roofline_ceiling"]

_SIZES = (512, 1024, 2048)
_EMULATED_SIZE = 256  # an emulated precision runs ~100x slower: one small matmul tells its ratio


def _best_rate(call_for_size: Callable[[int], Callable[[], Any]], sizes: tuple[int, ...], seconds: float) -> float:
    """The best MAC/s of ``call_for_size(n)`` (an n x n x n matmul) over ``sizes``, on the process CPU clock (steady
    on a shared machine, unlike wall time)."""
    best = 0.0
    for n in sizes:
        call = call_for_size(n)
        st = measure(call, warmup_s=min(0.2, seconds), duration_s=seconds, clock=time.process_time)
        best = max(best, n**3 / st.median_s)
    return best


def matmul_peak(dtype: torch.dtype, seconds: float = 1.0, sizes: tuple[int, ...] = _SIZES) -> float:
    """Single-thread matmul MAC/s: the best of torch.mm and OpenVINO's MatMul over a few square sizes.

    Both libraries are asked because ceilings divide by this number: a peak that one library's GEMM misses
    would make the ceilings look lower than the hardware allows.
    """
    def torch_mm(n: int) -> Callable[[], Any]:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        return lambda: torch.mm(a, b)

    with torch_threads(1), torch.inference_mode():
        best = _best_rate(torch_mm, sizes, seconds)
    return max(best, _openvino_matmul_peak(dtype, seconds, sizes))


def _openvino_matmul_peak(dtype: torch.dtype, seconds: float, sizes: tuple[int, ...]) -> float:
    """OpenVINO MatMul MAC/s."""
    try:  # optional runtime: without it the other library's peak stands alone
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError:
        return 0.0
    hint = {torch.float32: "f32", torch.bfloat16: "bf16"}[dtype]

    def call_for_size(n: int) -> Callable[[], Any]:
        a = ops.parameter([n, n], np.float32)
        out = ops.matmul(a, ops.constant(np.random.randn(n, n).astype(np.float32)), False, False)
        request = compile_openvino(ov.Model([out], [a]), {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_PRECISION_HINT": hint}).create_infer_request()
        x = np.random.randn(n, n).astype(np.float32)
        return lambda: request.infer({0: x}, share_inputs=True)

    return _best_rate(call_for_size, sizes, seconds)


def _onnxruntime_int8_peak(seconds: float, sizes: tuple[int, ...]) -> float:
    """ONNX Runtime MatMulInteger (uint8 x int8 -> int32) MAC/s on one thread: its MLAS int8 GEMM."""
    try:  # optional runtime
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return 0.0

    def call_for_size(n: int) -> Callable[[], Any]:
        rng = np.random.default_rng(0)
        weight = numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "w")
        graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "int8_matmul",
                                  [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
                                  [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])], [weight])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        a = rng.integers(0, 256, (n, n), dtype=np.uint8)
        return lambda: session.run(None, {"a": a})

    return _best_rate(call_for_size, sizes, seconds)


def int8_matmul_peak(seconds: float = 1.0, sizes: tuple[int, ...] = _SIZES) -> float:
    """Single-thread int8 matmul MAC/s: ONNX Runtime's MatMulInteger (uint8 x int8, MLAS: VNNI where the CPU has
    it); 0 without onnxruntime. (An OpenVINO MatMul between FakeQuantize nodes stayed at the fp32 rate on the Zen 4
    class EPYC, 47 vs 49 GMAC/s, while MatMulInteger ran 4.3x fp32: OpenVINO's int8 GEMM is not reached that way.)"""
    return _onnxruntime_int8_peak(seconds, sizes)


@dataclass(frozen=True)
class RooflinePeaks:
    """This CPU's single-thread matmul peaks (MAC/s) for its native precisions, and the measured ratio to fp32 of
    each precision it only emulates (no roof: a fraction of an emulated "peak" would flatter a slow route)."""

    native: dict[str, float]
    non_native_ratio: dict[str, float] = field(default_factory=dict)

    def fields(self, macs_m: float | None, throughput: float | None) -> dict[str, Any]:
        """A benchmark record's roofline fields: ``matmul_peak_<p>_gmacs`` and, with a measured throughput and MAC
        count, ``roofline_<p>_pct`` for each native precision; ``non_native_vs_fp32`` for the others, and
        ``matmul_peaks`` (:meth:`describe`)."""
        out: dict[str, Any] = {f"matmul_peak_{p}_gmacs": peak / 1e9 for p, peak in self.native.items()}
        if macs_m and throughput:
            out.update({f"roofline_{p}_pct": 100.0 * macs_m * 1e6 * throughput / peak
                        for p, peak in self.native.items()})
        if self.non_native_ratio:
            out["non_native_vs_fp32"] = dict(self.non_native_ratio)
        out["matmul_peaks"] = self.describe()
        return out

    def describe(self) -> str:
        """One line, e.g. 'matmul peak, 1 thread: fp32 45.5 GMAC/s; bf16 not native here (measured 0.011x ...)'."""
        parts = [f"{p} {peak / 1e9:.1f} GMAC/s" + ("" if p == "fp32" else f" ({peak / self.native['fp32']:.1f}x fp32)")
                 for p, peak in self.native.items()]
        parts += [f"{p} not native here (measured {ratio:.3g}x fp32: not a roof, not offered)"
                  for p, ratio in self.non_native_ratio.items()]
        return "matmul peak, 1 thread: " + "; ".join(parts)


def cpu_peaks(seconds: float = 0.5) -> RooflinePeaks:
    """Measure this CPU's peaks: fp32 always; int8 where :func:`~leanvit.deploy.capabilities.cpu_has_int8_dot`,
    bf16 where :func:`~leanvit.deploy.capabilities.cpu_has_bf16`; the other two by their ratio to fp32."""
    fp32 = matmul_peak(torch.float32, seconds, _SIZES)
    native, emulated = {"fp32": fp32}, {}
    int8 = int8_matmul_peak(seconds, _SIZES if capabilities.cpu_has_int8_dot() else (_EMULATED_SIZE,))
    if capabilities.cpu_has_int8_dot():
        native["int8"] = int8
    elif int8 > 0:
        emulated["int8"] = int8 / fp32
    if capabilities.cpu_has_bf16():
        native["bf16"] = matmul_peak(torch.bfloat16, seconds, _SIZES)
    else:  # torch.mm alone: OpenVINO keeps f32 where bf16 is not native, which would hide the cost
        with torch_threads(1), torch.inference_mode():
            a = torch.randn(_EMULATED_SIZE, _EMULATED_SIZE, dtype=torch.bfloat16)
            st = measure(lambda: torch.mm(a, a), warmup_s=0.0, duration_s=min(seconds, 0.2), min_iters=3,
                         clock=time.process_time)
        emulated["bf16"] = _EMULATED_SIZE**3 / st.median_s / fp32
    return RooflinePeaks(native, emulated)


def roofline_ceiling(peak_macs_per_s: float, macs: float, reference_images_per_s: float) -> float:
    """Bound on any exact route's speed-up over a reference running at ``reference_images_per_s``: every one of
    the model's ``macs`` per image at ``peak_macs_per_s``."""
    return peak_macs_per_s / (macs * reference_images_per_s)
