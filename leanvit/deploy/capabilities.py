"""What this machine and its installed packages can run, and the process settings every runtime shares.

* Optional packages: :func:`require` imports one or raises :class:`MissingBackendError` naming the pip extra.
* Precisions: :func:`check_precision` refuses (:class:`UnsupportedPrecisionError`) or falls back when a
  backend or the hardware lacks one (CPU bf16 needs AVX512-BF16 / AMX, fp16 a CUDA GPU).
* :func:`check_jit_optimize`: where ``jit_optimize`` applies.
* :func:`torch_threads` and :func:`quiet_deprecations`: the torch thread count and the torch.jit /
  TorchScript-exporter warnings, restored when the block ends.
* :func:`preserved_signal_stack`: the calling thread's alternate signal stack, restored after OpenVINO
  compiles a model (its CPU plugin leaves a freed one behind otherwise: see the function).

Every other deploy module builds on this one, so it imports none of them (only the route table, :mod:`.routes`:
what each backend needs and supports is read from its :class:`~leanvit.deploy.routes.Route`).
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib
import sys
import warnings
from types import ModuleType
from typing import Any, Iterator

import torch

from ..errors import InvalidValueError, OperationError
from .int8_policy import cpu_class_of, int8_speed_check
from .routes import PRECISIONS, ROUTES, backend_route

__all__ = [
    "MissingBackendError", "UnsupportedPrecisionError", "require", "require_backend", "cpu_has_bf16", "cpu_has_int8_dot",
    "check_precision", "check_jit_optimize", "torch_threads", "quiet_deprecations", "preserved_signal_stack",
]


class MissingBackendError(OperationError):
    """An optional package a backend needs is not installed; the message names the pip extra."""


class UnsupportedPrecisionError(InvalidValueError):
    """The requested precision is not available for this backend on this hardware."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingBackendError` saying which leanvit extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingBackendError(
            f"{purpose} needs the '{module}' package, which is not installed: pip install 'leanvit[{extra}]'"
        ) from e


def require_backend(backend: str) -> None:
    """Raise for an unknown ``backend`` and :class:`MissingBackendError` when its packages (its route's
    ``packages``) are missing."""
    for module, extra in backend_route(backend).packages:
        require(module, extra, f"the {backend} backend")


def cpu_has_bf16() -> bool:
    """Whether PyTorch's oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_has_int8_dot() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX512-VNNI / AVX-VNNI / AMX-INT8)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:  # not Linux: ask PyTorch's dispatcher
        return torch.backends.cpu.get_cpu_capability() in ("AVX512",)
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _openvino_capabilities() -> set[str]:
    ov = require("openvino", "openvino", "the openvino backend")
    return set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def check_precision(
    precision: str, backend: str, device: str = "cpu", allow_fallback: bool = False,
) -> tuple[str, str]:
    """Validate ``precision`` for ``backend`` on ``device``; returns ``(precision_to_use, note)``.

    Raises :class:`UnsupportedPrecisionError` naming the problem and the way out, unless
    ``allow_fallback`` is set, in which case fp32 is used and ``note`` says why.
    """
    if precision not in PRECISIONS:
        raise InvalidValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    require_backend(backend)
    route = backend_route(backend)
    cuda = device.startswith("cuda")
    if cuda and not route.cuda:
        raise InvalidValueError(f"the {backend} backend runs on CPU only here; use --device cpu")
    problem = ""
    if precision == "int8":
        if route.int8 is None or cuda:
            int8_backends = ", ".join(r.backend for r in ROUTES if r.backend and r.int8)
            problem = f"int8 runs as a quantised artifact on CPU, in the {int8_backends} backends"
        else:  # decided by measured int8 / fp32 speed on this CPU class (leanvit.deploy.int8_policy.INT8_SPEED)
            problem, int8_note = int8_speed_check(route.int8, cpu_class_of(cpu_has_int8_dot()))
            if not problem:
                return precision, int8_note
    elif precision == "fp16" and not cuda:
        problem = "fp16 needs a CUDA GPU (AMP); on CPU use bf16 (native on AVX512-BF16/AMX CPUs) or fp32"
    elif precision == "bf16" and route.name == "onnxruntime" and not cuda:
        problem = "onnxruntime's CPU provider has no bf16 kernels; use the openvino or a PyTorch backend for bf16"
    elif precision != "fp32" and route.mixed_precision is None:
        problem = f"the {backend} backend runs the fp32 graph (no mixed precision here); use --precision fp32 or int8"
    elif precision == "bf16" and route.mixed_precision == "openvino" and "BF16" not in _openvino_capabilities():
        problem = "OpenVINO reports no BF16 support on this CPU (needs AVX512-BF16 or AMX)"
    elif precision == "bf16" and route.mixed_precision == "torch":
        if cuda and not torch.cuda.is_bf16_supported():
            problem = "this GPU has no bf16 support; use fp16"
        elif not cuda and not cpu_has_bf16():
            problem = "this CPU has no native bf16 (needs AVX512-BF16 or AMX); use fp32"
    if not problem:
        return precision, ""
    if allow_fallback:
        return "fp32", f"{precision} unavailable ({problem}); fell back to fp32"
    raise UnsupportedPrecisionError(f"precision {precision} with backend {backend} on {device}: {problem}. "
                                    "Pass --allow-fallback (allow_fallback=True) to run fp32 instead.")


def check_jit_optimize(backend: str, device: str = "cpu") -> None:
    """Raise ``ValueError`` unless ``jit_optimize`` can apply to ``backend`` on ``device``.

    ``jit_optimize`` rewrites a TorchScript trace (``torch.jit.freeze`` then
    ``torch.jit.optimize_for_inference``), so it needs the ``jit`` backend. It is CPU-only because its
    gain comes from oneDNN: frozen fp32 convolutions become ``prim::mkldnn_convolution`` with
    pre-packed weights (benchmarks/NOTES.md entry 15); on CUDA nothing of that applies and it was never
    measured. fp32 stays exact (float rounding); bf16 (autocast or ``bf16_mode='convert'``) also works and
    keeps the plain trace's error: freezing folds the weight casts into bf16 constants, and bf16
    convolutions stay aten ops.
    """
    if backend != "jit":
        raise InvalidValueError(f"jit_optimize (--jit-optimize) rewrites a TorchScript trace, so it applies to the jit "
                                f"backend only, not {backend!r}: use backend jit, or drop jit_optimize for {backend}")
    if device.startswith("cuda"):
        raise InvalidValueError(f"jit_optimize (--jit-optimize) is CPU-only: optimize_for_inference's gain here is oneDNN "
                                f"weight pre-packing, unmeasured on {device}; drop it on CUDA (plain jit, or compile)")


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``, restoring the old value after."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def quiet_deprecations() -> Iterator[None]:
    """Silence torch.jit / TorchScript-exporter deprecation and tracer warnings inside the block.

    torch 2.14 marks both deprecated; the warnings say nothing a user can act on while running the
    papers' (traced) protocol or the default legacy ONNX exporter.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


class _SignalStack(ctypes.Structure):
    """POSIX ``stack_t`` (Linux and macOS field order)."""
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _sigaltstack() -> Any:
    if sys.platform == "win32":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).sigaltstack
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        return None


@contextlib.contextmanager
def preserved_signal_stack() -> Iterator[None]:
    """Restore the calling thread's alternate signal stack (``sigaltstack``) when the block ends.

    OpenVINO 2026.4's CPU plugin installs its own alternate stack on the compiling thread for every compiled
    model and reinstalls the one it replaced when that model is destroyed. Destroyed out of creation order
    (A, B compiled; A freed, then B) the thread is left with A's *freed* stack, and the next signal whose
    handler runs on the alternate stack (every Python-level handler: CPython sets SA_ONSTACK; e.g. the
    SIGCHLD handler torch's DataLoader installs) kills the process with SIGSEGV. That crashed leanvit's test
    suite when a subprocess exited after many OpenVINO runs (CI, 2026-12-02). Reinstalling the caller's
    stack right after each compile keeps every saved "previous" stack the caller's own, so any destruction
    order restores a live one; OpenVINO's handlers then run on that stack (or the thread's own).
    """
    call = _sigaltstack()
    saved = _SignalStack()
    if call is None or call(None, ctypes.byref(saved)) != 0:
        yield
        return
    try:
        yield
    finally:
        call(ctypes.byref(saved), None)
