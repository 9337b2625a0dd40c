"""``quantize_model``: a model (and its checkpoint) -> int8 artifacts per runtime, with fp32 vs int8 top-1.

Images come from folders (:mod:`.images`): calibration from any folder of images (class folders or flat),
validation from class folders. Both go through the model's evaluation transform
(:func:`~leanvit.deploy.images.model_eval_transform`), as ``leanvit train`` evaluates.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .._io import atomic_write_text
from ..models import create_model
from ..models.checkpoint import checkpoint_img_size, read_qat_state
from ..errors import InvalidValueError
from ..zoo import fuse_model, resolve_model
from . import capabilities
from .capabilities import torch_threads
from .images import load_image_folder, model_eval_transform
from .int8_policy import CPU_CLASSES, cpu_class_of, resolve_target_cpu
from .routes import CALIBRATION_IMAGES, INT8_RUNTIMES, int8_route, target_for
from .pt2e import QAT_RUNTIMES
from .quantize import AccuracyReport, QuantizedArtifact, predict, quantize_for, quantize_qat, top1_report
from .tuning import KeepFloatSearch, tune_runtime

__all__ = ["Int8Result", "Int8Run", "quantize_model"]


@dataclass
class Int8Result:
    """One runtime's int8 artifact and, with validation images, its accuracy against fp32."""
    artifact: QuantizedArtifact
    accuracy: AccuracyReport | None = None
    search: KeepFloatSearch | None = None  # the mixed-precision search, when a bound and tuning images were given

    def summary(self) -> str:
        """One line for people."""
        acc = self.accuracy.summary() if self.accuracy else "no validation images: accuracy not measured"
        mixed = f", {len(self.artifact.keep_float)} unit(s) in float" if self.artifact.keep_float else ""
        line = f"{self.artifact.runtime} int8 ({self.artifact.scheme}{mixed}) -> {self.artifact.path}: {acc}"
        return line + (f"\n  {self.search.summary()}" if self.search else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly fields."""
        return {"artifact": dict(vars(self.artifact), keep_float=list(self.artifact.keep_float)),
                "accuracy": self.accuracy.to_dict() if self.accuracy else None,
                "search": self.search.to_dict() if self.search else None}


@dataclass
class Int8Run:
    """Everything :func:`quantize_model` made."""
    model: str
    img_size: int
    results: list[Int8Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    target_cpu: str = ""  # the CPU class the artifacts were quantised for (leanvit.deploy.int8_policy)


def quantize_model(
    model: str,
    calibration: str | Path,
    out_dir: str | Path,
    *,
    runtimes: Sequence[str] = INT8_RUNTIMES,
    checkpoint: str | Path | None = None,
    val: str | Path | None = None,
    img_size: int | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    val_images: int | None = None,
    scheme: str = "default",
    batch_size: int = 16,
    threads: int | None = 1,
    max_drop: float | None = None,
    tune: str | Path | None = None,
    tune_images: int | None = None,
    compiled: bool = True,
    target_cpu: str | None = None,
) -> Int8Run:
    """Quantise ``model`` (+ ``checkpoint``) to int8 for each of ``runtimes`` into ``out_dir``, calibrated on
    ``calibration_images`` images of ``calibration``; with ``val`` (class folders) measure fp32 (the fused
    PyTorch model) and int8 top-1 on the same images. Writes ``out_dir/int8.json`` with the numbers.

    With ``max_drop`` and ``tune`` (labelled class folders, disjoint from ``val``: e.g. held-out training
    images) each runtime's int8 keeps in float the fewest modules that bring the tuning top-1 drop within
    ``max_drop`` points (:func:`leanvit.deploy.tuning.tune_runtime`); ``val`` then reports the result
    unbiased. ``compiled=False`` evaluates the PyTorch int8 graph eagerly (no ~1 min inductor compile).

    ``img_size`` defaults to the size ``checkpoint`` was trained at (else the model's native size); an explicit
    size that differs from it warns. ``target_cpu`` (``"vnni"`` / ``"no-vnni"``, default this machine's class)
    picks the quantisation exact for the deployment CPU's int8 instructions
    (:data:`~leanvit.deploy.int8_policy.INT8_RECIPES`); another class than this machine's warns, since the
    accuracy measured here then comes from this CPU's kernels."""
    unknown = [r for r in runtimes if r not in INT8_RUNTIMES]
    if unknown:
        raise InvalidValueError(f"unknown int8 runtime(s) {', '.join(unknown)}; choose from {', '.join(INT8_RUNTIMES)}")
    spec = resolve_model(model)
    side = checkpoint_img_size(img_size, checkpoint, spec.img_size)
    here = cpu_class_of(capabilities.cpu_has_int8_dot())
    target = resolve_target_cpu(target_cpu, here == "vnni")
    module = create_model(spec.ref, img_size=side, checkpoint=checkpoint).eval()  # shaped like the checkpoint
    transform = model_eval_transform(module, side)
    calib, _, _ = load_image_folder(calibration, transform, labelled=False, limit=calibration_images,
                                    what="calibration")
    run = Int8Run(spec.name, side, target_cpu=target)
    run.notes.append(f"quantised for {target} CPUs ({CPU_CLASSES[target]}); this machine: {here}")
    if target != here:
        message = (f"the int8 artifacts are made for {target} CPUs but this machine is {here}: the accuracy measured "
                   "here comes from this CPU's int8 kernels, not the deployment CPU's")
        warnings.warn(message, stacklevel=2)
        run.notes.append(message)
    tune_set = None
    if (max_drop is None) != (tune is None):
        raise InvalidValueError("the keep-float search needs both max_drop (top-1 points) and tune (labelled images "
                                "disjoint from val); without tune, max_drop is only checked by the command line")
    if tune is not None:
        if val is not None and Path(tune).resolve() == Path(val).resolve():
            raise InvalidValueError("tune and val are the same folder: choosing on the validation images would make the "
                                    "reported drop optimistic; tune on held-out training images")
        tune_set = load_image_folder(tune, transform, labelled=True, limit=tune_images, what="tuning")[:2]
    images = labels = None
    if val is not None:
        images, labels, classes = load_image_folder(val, transform, labelled=True, limit=val_images, what="validation")
        if len(classes) > getattr(module, "num_classes", len(classes)):
            raise InvalidValueError(f"validation folder has {len(classes)} classes but the model predicts "
                                    f"{module.num_classes}: pass the checkpoint trained on these classes")
    qat = read_qat_state(checkpoint) if checkpoint is not None and spec.source == "leanvit" else None
    if qat is not None:
        run.notes.append(f"the checkpoint was quantisation-aware fine-tuned ({qat[0]}): {QAT_RUNTIMES[qat[0]]} int8 "
                         "converts its learned int8 graph, the other runtimes post-training-quantise its weights")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp32_preds: torch.Tensor | None = None  # every fused form computes the same function: predict once
    for runtime in runtimes:
        fused = fuse_model(module, target=target_for(runtime))
        batch = 1 if runtime == "executorch" else batch_size  # ExecuTorch programs have a static batch
        example = torch.zeros(batch, 3, side, side)
        path = out / f"{spec.name}_int8{int8_route(runtime).int8_suffix}"
        search = None
        if qat is not None and QAT_RUNTIMES[qat[0]] == runtime:
            artifact = quantize_qat(runtime, module, example, qat[0], qat[1], path)
        else:
            if tune_set is not None and max_drop is not None:
                with torch_threads(threads):
                    search = tune_runtime(runtime, fused, calib, tune_set[0], tune_set[1], max_drop, scheme=scheme,
                                          batch_size=batch_size, target_cpu=target)
            artifact = quantize_for(runtime, fused, example, calib, path, scheme=scheme,
                                    keep_float=search.keep_float if search else (), threads=threads,
                                    target_cpu=target)
        result = Int8Result(artifact, search=search)
        if images is not None and labels is not None:
            if fp32_preds is None:
                fp32_preds = predict(fused, images, batch_size)
            int8 = artifact.open(threads, batch_size=batch, compiled=compiled)
            result.accuracy = top1_report(fp32_preds, predict(int8, images, batch), labels)
        run.results.append(result)
    record = {"model": run.model, "img_size": side, "checkpoint": str(checkpoint) if checkpoint else None,
              "calibration": str(calibration), "calibration_images": len(calib), "val": str(val) if val else None,
              "tune": str(tune) if tune else None, "max_drop": max_drop, "target_cpu": target, "machine_cpu": here,
              "results": [r.to_dict() for r in run.results], "notes": run.notes}
    atomic_write_text(out / "int8.json", json.dumps(record, indent=2))
    return run
