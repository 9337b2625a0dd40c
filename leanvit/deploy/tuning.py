"""Mixed precision by measurement: which modules to keep in float so that int8 stays within a top-1 bound.

:func:`search_keep_float` is a sensitivity search that runs on top of any int8 runtime (leanvit's, not the
runtime's: one procedure for OpenVINO, ONNX Runtime, ExecuTorch and PyTorch):

1. quantise everything and measure top-1 on labelled *tuning* images (not the validation images the final
   report uses: choosing on them would make the reported drop optimistic);
2. within the bound: done. Otherwise quantise once per unit with that unit kept in float, and rank the units
   by how much of the logit error (relative to fp32, a continuous measure: top-1 on a few hundred images
   moves in steps of a third of a point) that removes;
3. keep the best-ranked units in float one by one until the tuning top-1 drop is within the bound.

A unit is a block's part (``stages.1.blocks.0.mixer``, ``stages.2.blocks.4.ffn``), the stem or the head:
:func:`quantizable_units`. The search costs one quantisation per unit plus one per kept unit; each trial
runs in the runtime's cheapest faithful form (:func:`trial_int8`: ExecuTorch and PyTorch evaluate the PT2E
graph eagerly instead of lowering / compiling it).
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import InvalidValueError
from . import capabilities
from .int8_policy import resolve_target_cpu
from .mobile import as_nchw
from .routes import int8_route
from .pt2e import calibrated_pt2e, converted_pt2e, pytorch_int8_quantizer, xnnpack_quantizer
from .quantize import quantize_for
from .runtime import run_in_batches

__all__ = ["KeepFloatSearch", "quantizable_units", "trial_int8", "search_keep_float", "tune_runtime"]

Model = Callable[[torch.Tensor], torch.Tensor]


def quantizable_units(fused: nn.Module) -> list[str]:
    """The search's units, in model order: every conv / linear layer's block part (the module after the
    block index, e.g. ``stages.1.blocks.0.mixer``; ``stages.1.downsample`` for stage-level parts) or, outside
    the stages, its top-level module (``patch_embed``, ``head``)."""
    units: dict[str, None] = {}
    for name, module in fused.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        parts = name.split(".")
        numbered = [i for i, p in enumerate(parts) if p.isdigit()]
        if len(numbered) >= 2 and numbered[1] == numbered[0] + 2:  # stages.N.blocks.M.part
            cut = numbered[1] + 2
        else:  # a stage-level part (stages.N.downsample) or a top-level module
            cut = numbered[0] + 2 if numbered else 1
        units[".".join(parts[:cut])] = None
    return list(units)


def trial_int8(runtime: str, fused: nn.Module, calibration: torch.Tensor, scheme: str,
               keep_float: Sequence[str], workdir: Path, batch_size: int, target_cpu: str | None = None) -> Model:
    """An int8 model to score during the search: the runtime's own artifact for OpenVINO / ONNX Runtime, the
    eagerly run PT2E graph (same quantizer, same calibration) for ExecuTorch and PyTorch; ``target_cpu`` as
    for :func:`~leanvit.deploy.quantize.quantize_for`."""
    target = resolve_target_cpu(target_cpu, capabilities.cpu_has_int8_dot())
    if runtime == "executorch":
        return converted_pt2e(calibrated_pt2e(as_nchw(fused), calibration, xnnpack_quantizer(scheme, keep_float)))
    if runtime == "pytorch":
        quantizer, _ = pytorch_int8_quantizer(fused, scheme, keep_float, target)
        return converted_pt2e(calibrated_pt2e(fused, calibration, quantizer))
    side = int(calibration.shape[-1])
    path = workdir / f"trial{int8_route(runtime).int8_suffix}"
    example = torch.zeros(batch_size, 3, side, side)
    return quantize_for(runtime, fused, example, calibration, path, scheme=scheme, keep_float=keep_float,
                        threads=None, target_cpu=target).open(None)


@dataclass
class KeepFloatSearch:
    """What :func:`search_keep_float` measured on the tuning images."""
    max_drop: float
    images: int
    fp32_top1: float
    int8_top1: float  # everything quantised
    mixed_top1: float  # with ``keep_float`` in float
    keep_float: tuple[str, ...]
    met: bool
    trials: int
    ranking: list[tuple[str, float]] = field(default_factory=list)  # unit, share of the logit error it removes

    @property
    def drop(self) -> float:
        """Tuning top-1 drop of the chosen mixed precision, in points."""
        return self.fp32_top1 - self.mixed_top1

    def summary(self) -> str:
        """One line for people."""
        state = "met" if self.met else "NOT met"
        all_int8 = self.fp32_top1 - self.int8_top1
        return (f"keep-float search on {self.images} tuning images: all-int8 drop {all_int8:+.2f}, "
                f"{len(self.keep_float)} unit(s) in float -> drop {self.drop:+.2f} (bound {self.max_drop}: {state}; "
                f"{self.trials} trials)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly fields."""
        return dict(asdict(self), keep_float=list(self.keep_float), drop=self.drop)


def _score(logits: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    top1 = 100.0 * float((logits.argmax(-1) == labels).float().mean())
    error = float((logits - reference).pow(2).mean() / reference.pow(2).mean().clamp_min(1e-12))
    return top1, error


def search_keep_float(trial: Callable[[tuple[str, ...]], Model], fp32: Model, images: torch.Tensor,
                      labels: torch.Tensor, units: Sequence[str], max_drop: float, *, batch_size: int = 16,
                      max_units: int | None = None) -> KeepFloatSearch:
    """The fewest best-ranked ``units`` to keep in float for a tuning top-1 drop <= ``max_drop`` points.

    ``trial(keep_float)`` returns the int8 model with those units in float; ``fp32`` is the float model.
    At most ``max_units`` (default: half the units) are kept; ``met`` says whether the bound was reached.
    """
    if len(images) == 0 or len(images) != len(labels):
        raise InvalidValueError(f"tuning needs labelled images: got {len(images)} images and {len(labels)} labels")
    reference = run_in_batches(fp32, images, batch_size)
    fp32_top1, _ = _score(reference, reference, labels)
    trials = 0

    def measure(keep: tuple[str, ...]) -> tuple[float, float]:
        nonlocal trials
        trials += 1
        return _score(run_in_batches(trial(keep), images, batch_size), reference, labels)

    int8_top1, base_error = measure(())
    result = KeepFloatSearch(max_drop, len(images), fp32_top1, int8_top1, int8_top1, (), False, trials)
    if fp32_top1 - int8_top1 <= max_drop:
        result.met = True
        return result
    gains = {u: base_error - measure((u,))[1] for u in units}
    ranked = sorted((u for u in units if gains[u] > 0), key=lambda u: -gains[u])
    result.ranking = [(u, gains[u] / base_error if base_error else 0.0) for u in ranked]
    limit = max_units if max_units is not None else max(1, len(units) // 2)
    keep: list[str] = []
    for unit in ranked[:limit]:
        keep.append(unit)
        top1, _ = measure(tuple(keep))
        result.keep_float, result.mixed_top1 = tuple(keep), top1
        if fp32_top1 - top1 <= max_drop:
            result.met = True
            break
    result.trials = trials
    return result


def tune_runtime(runtime: str, fused: nn.Module, calibration: torch.Tensor, images: torch.Tensor,
                 labels: torch.Tensor, max_drop: float, *, scheme: str = "default", batch_size: int = 16,
                 units: Sequence[str] | None = None, max_units: int | None = None,
                 target_cpu: str | None = None) -> KeepFloatSearch:
    """:func:`search_keep_float` for one runtime's int8 (trials per :func:`trial_int8`, for ``target_cpu``) over
    ``units`` (default: :func:`quantizable_units`)."""
    with tempfile.TemporaryDirectory(prefix="leanvit-tune-") as tmp:
        return search_keep_float(
            lambda keep: trial_int8(runtime, fused, calibration, scheme, keep, Path(tmp), batch_size, target_cpu),
            fused, images, labels, quantizable_units(fused) if units is None else units, max_drop,
            batch_size=batch_size, max_units=max_units)
