"""Roofline ceilings: the single-thread matmul peak of this CPU and the speed-up bound it sets.

A model's MACs at the matmul peak bound every exact route's throughput: ``ceiling = peak / (MACs x
reference img/s)`` is the largest speed-up over ``reference`` that any graph rewrite can reach at that
precision (benchmarks/deploy_speed.py reports it per model; docs/benchmarks.md explains the numbers).
"""
from __future__ import annotations

import time

import torch

from ..deploy.capabilities import torch_threads
from ..deploy.writers import compile_openvino
from .timing import measure

__all__ = ["matmul_peak", "roofline_ceiling"]

_SIZES = (512, 1024, 2048)


def matmul_peak(dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Single-thread matmul MAC/s: the best of torch.mm and OpenVINO's MatMul over a few square sizes.

    Both libraries are asked because ceilings divide by this number: a peak that one library's GEMM misses
    would make the ceilings look lower than the hardware allows. Timed on the process CPU clock (steady on a
    shared machine, unlike wall time).
    """
    best = 0.0
    with torch_threads(1), torch.inference_mode():
        for n in _SIZES:
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            st = measure(lambda: torch.mm(a, b), warmup_s=0.2, duration_s=seconds, clock=time.process_time)
            best = max(best, n**3 / st.median_s)
    return max(best, _openvino_matmul_peak(dtype, seconds))


def _openvino_matmul_peak(dtype: torch.dtype, seconds: float) -> float:
    try:  # optional runtime: without it the torch peak stands alone
        import numpy as np
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError:
        return 0.0
    hint = {torch.float32: "f32", torch.bfloat16: "bf16"}[dtype]
    best = 0.0
    for n in _SIZES:
        a = ops.parameter([n, n], np.float32)
        model = ov.Model([ops.matmul(a, ops.constant(np.random.randn(n, n).astype(np.float32)), False, False)], [a])
        request = compile_openvino(model, {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY",
                                           "INFERENCE_PRECISION_HINT": hint}).create_infer_request()
        x = np.random.randn(n, n).astype(np.float32)
        st = measure(lambda: request.infer({0: x}, share_inputs=True), warmup_s=0.2, duration_s=seconds,
                     clock=time.process_time)
        best = max(best, n**3 / st.median_s)
    return best


def roofline_ceiling(peak_macs_per_s: float, macs: float, reference_images_per_s: float) -> float:
    """Bound on any exact route's speed-up over a reference running at ``reference_images_per_s``: every one of
    the model's ``macs`` per image at ``peak_macs_per_s``."""
    return peak_macs_per_s / (macs * reference_images_per_s)
