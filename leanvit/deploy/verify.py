"""Compare what a runtime or an exported artifact computes with the PyTorch model it came from.

Errors are measured as :func:`leanvit.models.signal.logit_agreement` does: the max abs difference, that
difference relative to the reference logits' *spread* (their std across the inputs, averaged over the
classes: the part of a logit that depends on the input) and the share of inputs whose top-1 class agrees.
The spread needs at least two inputs, so a runtime traced for batch 1 is run on several batches of
:func:`~leanvit.models.signal.signal_images` and the rows are compared together. Dense outputs (segmentors'
(N, C, H, W) logit maps) are compared per pixel: each pixel's class logits are a row. A dense artifact with a
free image size is checked at sizes other than the one it was traced at (``sizes``); one that cannot run
there, or answers in another shape, fails with :class:`ArtifactRunError`.

Tolerances (export verification):

* fp32: max abs difference <= :data:`FP32_ATOL` (an absolute bound, for logits of order 1); the
  spread-relative error is reported too.
* bf16: error relative to the spread <= :data:`BF16_SPREAD_RTOL` (catches values far off) and the
  input-dependent parts correlated >= :data:`BF16_MIN_CORRELATION` (catches a graph that ignores its input,
  which the spread bound alone lets through).
* int8: top-1 agreement >= :data:`INT8_MIN_AGREEMENT` on real images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InvalidValueError, OperationError
from ..models.signal import logit_agreement, signal_images
from .runtime import Runtime, load_artifact, run_in_batches

__all__ = [
    "FP32_ATOL", "BF16_SPREAD_RTOL", "BF16_MIN_CORRELATION", "INT8_MIN_AGREEMENT", "MIN_VERIFY_ROWS", "LogitCheck",
    "ArtifactRunError", "verification_images", "run_in_batches",
    "compare_runtime", "tolerance_for", "within_tolerance", "verify_artifact",
]

# fp32 max abs diff measured on signal_weights_ (seeds 3, 4; logit spread 0.9-2), artifact vs the fused model,
# 4 signal_images at batch 1: ONNX Runtime / OpenVINO 1.1e-5 - 4.1e-5 for efficientvit_m0 and shvit_s1 at
# 64 and 224 px and shvit_s1 at 72, but 1.2e-4 - 2.0e-4 for efficientvit_m0 at 72 px (padded attention
# windows; both runtimes, so fp32 summation order, not a wrong graph); TorchScript 0. The former 1e-4 was
# set on near-constant logits (perturbed BatchNorms only); 1e-3 is 5x the worst measured and still far below
# a real graph error (a 0.5 logit shift, tests/test_export.py).
FP32_ATOL = 1e-3
# bf16 error / spread measured on signal_weights_ (seed 3), 4 signal_images run at batch 1, fused model vs
# its bf16 artifact (TorchScript weights+activations in bf16 / OpenVINO INFERENCE_PRECISION_HINT bf16),
# AMD EPYC Zen 4 (AVX512-BF16), torch 2.14.1, OpenVINO 2026.4:
#                       64 px          128 px         224 px
#   efficientvit_m0     0.50 / 0.43    1.26 / 0.91    0.38 / 0.48
#   shvit_s1            0.21 / 0.24    0.18 / 0.22    0.20 / 0.20
#   sepvit_lite         0.07 / -       0.10 / -       0.17 / 0.14
# (TorchScript / OpenVINO; OpenVINO returned no rows for sepvit_lite off its native 224). efficientvit_m0 over
# seeds 0, 1, 2, 4: 0.31-0.85 at 64 px, 0.67-1.92 at 128 px (worst: seed 2, OpenVINO); `leanvit bench` jit
# autocast bf16 at 128 px: 1.8. Random variance-preserving weights are close to chaotic, so bf16 rounding
# moves the logits by as much as the inputs do (top-1 agreement fell to 0.5 in several runs); trained weights
# are far calmer (benchmarks/NOTES.md entry 14: 2.7e-2 of max|logit| for a trained efficientvit_m0). The bound
# is twice the worst measured value: on such weights it catches a bf16 graph that computes something far
# off, not bf16's own rounding.
BF16_SPREAD_RTOL = 4.0
# The spread bound alone cannot fail a graph that ignores its input: its batch-mean logits score 3.5-5.5 (below
# 4 in most cases), because chaotic random weights make bf16 rounding as large as the inputs' effect. The
# correlation of the input-dependent parts (logit_agreement's input_correlation) separates the two. Measured on
# 4 signal_images, signal_weights_ seeds 0, 2, 3, fused model vs its bf16 form (weights+activations converted,
# and autocast), eager torch 2.14.1 on a 2-core AMD EPYC (family 25 model 17, Zen 4 class, native AVX512-BF16):
#   working bf16:   efficientvit_m0 64 px 0.49-0.98 (seed 0: 0.49 / 0.76, whose rel error 7.9 / 3.9 is the
#                   chaotic case), 224 px >= 0.996; shvit_s1 64 / 224 px >= 0.998; sepvit_lite 224 px 1.000
#   broken graphs:  batch-mean logits or the logits of a zero image 0.000; rows answered for the wrong
#                   input (permuted) -0.64 to -0.11
# A floor of 0.3 sits between, 10x the spread of an unrelated output's correlation over 4 x 1000 logits (~0.03).
BF16_MIN_CORRELATION = 0.3
# int8 (leanvit.deploy.quantize) is not a rounding of fp32 but a different model: its check is the share of real
# images (from the calibration folder) whose top-1 class stays the fp32 one. Trained models keep 96-100 % in the
# protocol of docs/deploy.md; a broken graph or a mis-calibrated one falls far below.
INT8_MIN_AGREEMENT = 0.9
# rows compared per check (>= 2: the spread is measured across them)
MIN_VERIFY_ROWS = 4


@dataclass
class LogitCheck:
    """How a runtime's logits compare with the reference's on the checked rows."""
    rows: int
    max_abs_diff: float
    rel_err: float
    top1_agreement: float
    correlation: float  # of the input-dependent parts: logit_agreement's input_correlation

    def worst(self, other: "LogitCheck") -> "LogitCheck":
        """The element-wise worse of two checks (rows add up)."""
        return LogitCheck(self.rows + other.rows, max(self.max_abs_diff, other.max_abs_diff),
                          max(self.rel_err, other.rel_err), min(self.top1_agreement, other.top1_agreement),
                          min(self.correlation, other.correlation))


class ArtifactRunError(OperationError):
    """An artifact could not be run at a checked input, or its output has another shape than PyTorch's."""


def verification_images(batch_size: int, img_size: int | tuple[int, int], *, min_rows: int = MIN_VERIFY_ROWS,
                        seed: int = 0) -> torch.Tensor:
    """:func:`signal_images` for whole batches of ``batch_size``: the fewest that give ``min_rows`` rows."""
    batches = max(1, math.ceil(min_rows / batch_size))
    return signal_images(batches * batch_size, img_size, seed=seed)


def _rows(logits: torch.Tensor) -> torch.Tensor:
    # (N, C) logits are rows already; (N, C, H, W) maps give one row per pixel
    return logits.movedim(1, -1).reshape(-1, logits.shape[1]) if logits.dim() == 4 else logits.reshape(len(logits), -1)


def _shape(images: torch.Tensor, batch_size: int) -> str:
    return "x".join(map(str, (batch_size, *images.shape[1:])))


def compare_runtime(reference: torch.Tensor, runtime: Runtime, images: torch.Tensor, batch_size: int) -> LogitCheck:
    """``runtime``'s logits on ``images`` (run in ``batch_size`` chunks) against ``reference`` (the PyTorch
    model's logits on the same images). Raises :class:`ArtifactRunError` when it answers in another shape."""
    output = run_in_batches(runtime, images, batch_size)
    if output.shape != reference.shape:
        raise ArtifactRunError(f"the output at input {_shape(images, batch_size)} is {tuple(output.shape[1:])}; "
                               f"PyTorch gives {tuple(reference.shape[1:])}")
    agreement = logit_agreement(_rows(reference), _rows(output))
    return LogitCheck(len(images), agreement["max_abs_error"], agreement["relative_error"],
                      agreement["top1_agreement"], agreement["input_correlation"])


def tolerance_for(precision: str) -> str:
    """The export verification's bound for ``precision``, in words."""
    if precision == "fp32":
        return f"max abs diff <= {FP32_ATOL:g}"
    if precision == "int8":
        return f"top-1 agreement >= {INT8_MIN_AGREEMENT:g} on the calibration folder's images"
    return f"error / logit spread <= {BF16_SPREAD_RTOL:g} and input correlation >= {BF16_MIN_CORRELATION:g}"


def within_tolerance(precision: str, check: LogitCheck) -> bool:
    """Whether ``check`` meets the export bound for ``precision``."""
    if precision == "fp32":
        return check.max_abs_diff <= FP32_ATOL
    if precision == "int8":
        return check.top1_agreement >= INT8_MIN_AGREEMENT
    return check.rel_err <= BF16_SPREAD_RTOL and check.correlation >= BF16_MIN_CORRELATION


def verify_artifact(artifact: str | Path, reference_model: torch.nn.Module, *, precision: str, batches: list[int],
                    img_size: int | tuple[int, int], threads: int | None = 1, seed: int = 0,
                    images: torch.Tensor | None = None,
                    sizes: list[tuple[int, int]] | None = None) -> tuple[LogitCheck, bool]:
    """Load ``artifact`` with its runtime and compare it with ``reference_model`` (fp32) at each batch size
    in ``batches`` on ``images`` (default: :func:`verification_images`); returns the worst check and whether
    it meets :func:`tolerance_for` ``precision``. ``sizes``: the (H, W) each batch is checked at (a dense
    model's free image size; one batch each: its pixels are the rows), else ``img_size``. Raises
    :class:`ArtifactRunError` when the artifact cannot run a checked input."""
    if not batches:
        raise InvalidValueError("verify_artifact needs at least one batch size")
    if sizes is not None and len(sizes) != len(batches):
        raise InvalidValueError(f"{len(sizes)} sizes for {len(batches)} batches: give one size per batch")
    runtime = load_artifact(artifact, threads=threads, precision=None if precision == "int8" else precision)
    worst: LogitCheck | None = None
    for i, batch_size in enumerate(batches):
        if sizes is not None:
            rows = verification_images(batch_size, sizes[i], min_rows=batch_size, seed=seed + i)
        elif images is None:
            rows = verification_images(batch_size, img_size, seed=seed + i)
        else:  # whole batches only: a runtime traced for one batch runs only it
            rows = images[: max(batch_size, len(images) // batch_size * batch_size)]
        reference = run_in_batches(reference_model, rows, batch_size)
        try:
            check = compare_runtime(reference, runtime, rows, batch_size)
        except ArtifactRunError:
            raise
        except Exception as e:  # noqa: BLE001 - e.g. a graph whose shapes were frozen at the trace size
            raise ArtifactRunError(f"the artifact fails at input {_shape(rows, batch_size)} "
                                   f"({str(e).strip()[:300]})") from e
        worst = check if worst is None else worst.worst(check)
    return worst, within_tolerance(precision, worst)
