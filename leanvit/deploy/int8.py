"""``quantize_model``: a model (and its checkpoint) -> int8 artifacts per runtime, with fp32 vs int8 top-1.

Images come from folders: calibration from any folder of images (class folders or flat), validation from
class folders (ImageFolder order: sorted folder names = the class indices the model was trained with, as
for ImageNet's val/ in synset folders). Both go through the model's evaluation transform (timm's
``resolve_data_config`` / ``create_transform`` at the model's input size: resize by ``crop_pct``, centre
crop, mean / std), as ``leanvit train`` evaluates.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from .._io import atomic_write_text
from ..checkpoint import create_for_checkpoint, load_weights, read_qat_state
from ..errors import InvalidValueError, MissingFileError
from ..zoo import ModelSpec, build_model, fuse_model, resolve_model, target_for
from . import capabilities
from .capabilities import torch_threads
from .names import CALIBRATION_IMAGES, INT8_RUNTIMES
from .pt2e import QAT_RUNTIMES
from .quantize import AccuracyReport, QuantizedArtifact, predict, quantize_for, quantize_qat, top1_report
from .tuning import KeepFloatSearch, tune_runtime

__all__ = ["IMAGE_SUFFIXES", "Int8Result", "Int8Run", "build_for", "eval_transform", "load_image_folder",
           "quantize_model"]

IMAGE_SUFFIXES = IMG_EXTENSIONS  # torchvision's ImageFolder extensions


def build_for(spec: ModelSpec, img_size: int, checkpoint: str | Path | None) -> nn.Module:
    """The eval model to deploy: random weights, or shaped like ``checkpoint`` (class count, distillation
    head) with its weights for leanvit models; timm models load theirs strictly."""
    if checkpoint is None:
        return build_model(spec, img_size)
    if spec.source == "leanvit":
        return create_for_checkpoint(spec.name, checkpoint, img_size)
    module = build_model(spec, img_size)
    load_weights(module, checkpoint)
    return module


def eval_transform(model: nn.Module, img_size: int) -> Any:
    """The model's evaluation transform at ``img_size`` (timm's data config: crop_pct, interpolation, mean, std)."""
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({"input_size": (3, img_size, img_size)}, model=model)
    return create_transform(**cfg)


def load_image_folder(folder: str | Path, transform: Any, *, labelled: bool, limit: int | None = None,
                      what: str = "images") -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """(images, labels or None, class names) from ``folder``: class sub-folders (labels = sorted folder
    index) or, unlabelled, a flat folder. The first ``limit`` files in a class-interleaved order, so that a
    small calibration set still spans the classes. Errors name the folder and the fix."""
    from PIL import Image, UnidentifiedImageError

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise MissingFileError(f"{what} folder {root} does not exist (or is a file): pass a directory of images"
                               + (" in class sub-folders" if labelled else ""))
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())  # torchvision's find_classes order
    if labelled and not classes:
        raise MissingFileError(f"{what} folder {root} has no class sub-folders: labelled images go in "
                               "ROOT/<class>/<image> (ImageFolder layout)")
    # ImageFolder's own listing (extensions, class indices), as leanvit train reads class folders
    samples = make_dataset(str(root), {c: i for i, c in enumerate(classes)}, extensions=IMAGE_SUFFIXES,
                           allow_empty=True) if classes else []
    per_class: list[list[Path]] = [[] for _ in classes]
    for path, index in samples:
        per_class[index].append(Path(path))
    flat = sorted(f for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    files: list[tuple[Path, int]] = [(f, -1) for f in flat] if not labelled else []
    for rank in range(max((len(p) for p in per_class), default=0)):  # interleave the classes
        files += [(p[rank], i) for i, p in enumerate(per_class) if rank < len(p)]
    if not files:
        raise MissingFileError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {what} folder {root}")
    files = files[:limit] if limit else files
    tensors, labels, bad = [], [], []
    for path, label in files:
        try:
            with Image.open(path) as img:
                tensors.append(transform(img.convert("RGB")))
            labels.append(label)
        except (OSError, UnidentifiedImageError) as e:
            bad.append(f"{path.name}: {e}")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable file(s) in {root}: {'; '.join(bad[:3])}", stacklevel=2)
    if not tensors:
        raise InvalidValueError(f"none of the {len(files)} image files in {what} folder {root} could be read "
                                f"(first: {bad[0]})")
    return torch.stack(tensors), (torch.tensor(labels) if labelled else None), classes


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


def quantize_model(
    model: str,
    calibration: str | Path,
    out_dir: str | Path,
    *,
    runtimes: Sequence[str] = ("openvino", "onnxruntime", "executorch", "pytorch"),
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
) -> Int8Run:
    """Quantise ``model`` (+ ``checkpoint``) to int8 for each of ``runtimes`` into ``out_dir``, calibrated on
    ``calibration_images`` images of ``calibration``; with ``val`` (class folders) measure fp32 (the fused
    PyTorch model) and int8 top-1 on the same images. Writes ``out_dir/int8.json`` with the numbers.

    With ``max_drop`` and ``tune`` (labelled class folders, disjoint from ``val``: e.g. held-out training
    images) each runtime's int8 keeps in float the fewest modules that bring the tuning top-1 drop within
    ``max_drop`` points (:func:`leanvit.deploy.tuning.tune_runtime`); ``val`` then reports the result
    unbiased. ``compiled=False`` evaluates the PyTorch int8 graph eagerly (no ~1 min inductor compile)."""
    unknown = [r for r in runtimes if r not in INT8_RUNTIMES]
    if unknown:
        raise InvalidValueError(f"unknown int8 runtime(s) {', '.join(unknown)}; choose from {', '.join(INT8_RUNTIMES)}")
    spec = resolve_model(model)
    side = img_size or spec.img_size
    module = build_for(spec, side, checkpoint)
    transform = eval_transform(module, side)
    calib, _, _ = load_image_folder(calibration, transform, labelled=False, limit=calibration_images,
                                    what="calibration")
    run = Int8Run(spec.name, side)
    if not capabilities.cpu_has_int8_dot():
        run.notes.append("this CPU has no VNNI / AMX int8 instructions: the artifacts are valid, but int8 will run "
                         "slower here than on the deployment CPU")
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
        path = out / f"{spec.name}_int8{INT8_RUNTIMES[runtime]}"
        search = None
        if qat is not None and QAT_RUNTIMES[qat[0]] == runtime:
            artifact = quantize_qat(runtime, module, example, qat[0], qat[1], path)
        else:
            if tune_set is not None and max_drop is not None:
                with torch_threads(threads):
                    search = tune_runtime(runtime, fused, calib, tune_set[0], tune_set[1], max_drop, scheme=scheme,
                                          batch_size=batch_size)
            artifact = quantize_for(runtime, fused, example, calib, path, scheme=scheme,
                                    keep_float=search.keep_float if search else (), threads=threads)
        result = Int8Result(artifact, search=search)
        if images is not None and labels is not None:
            if fp32_preds is None:
                fp32_preds = predict(fused, images, batch_size)
            int8 = artifact.open(threads, batch_size=batch, compiled=compiled)
            result.accuracy = top1_report(fp32_preds, predict(int8, images, batch), labels)
        run.results.append(result)
    record = {"model": run.model, "img_size": side, "checkpoint": str(checkpoint) if checkpoint else None,
              "calibration": str(calibration), "calibration_images": len(calib), "val": str(val) if val else None,
              "tune": str(tune) if tune else None, "max_drop": max_drop,
              "results": [r.to_dict() for r in run.results], "notes": run.notes}
    atomic_write_text(out / "int8.json", json.dumps(record, indent=2))
    return run
