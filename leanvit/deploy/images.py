"""Images from folders for deployment: the evaluation transform and calibration / validation folders.

:func:`eval_transform` is the papers' evaluation transform (resize the short side to ``img_size / crop_pct``,
centre crop, mean / std: timm's ``create_transform``), what ``leanvit train`` evaluates with;
:func:`model_eval_transform` takes its settings from a model's data config. :func:`load_image_folder` reads
class folders (ImageFolder order: sorted folder names = the class indices the model was trained with, as for
ImageNet's val/ in synset folders) or, unlabelled, flat folders. ``leanvit export --precision int8`` and
``leanvit quantize`` calibrate on these.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from timm.data import create_transform, resolve_data_config
from torch import nn
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from ..errors import InvalidValueError, MissingFileError

__all__ = ["eval_transform", "model_eval_transform", "load_image_folder"]


def eval_transform(img_size: int, mean: Sequence[float], std: Sequence[float], crop_pct: float,
                   interpolation: str = "bicubic") -> Callable:
    """The papers' evaluation transform: resize the short side to img_size / crop_pct, centre crop."""
    return create_transform(img_size, is_training=False, interpolation=interpolation, mean=tuple(mean),
                            std=tuple(std), crop_pct=crop_pct)


def model_eval_transform(model: nn.Module, img_size: int) -> Callable:
    """``model``'s evaluation transform at ``img_size`` (timm's data config: crop_pct, interpolation, mean, std)."""
    cfg = resolve_data_config({"input_size": (3, img_size, img_size)}, model=model)
    return eval_transform(img_size, cfg["mean"], cfg["std"], cfg["crop_pct"], cfg["interpolation"])


def load_image_folder(folder: str | Path, transform: Any, *, labelled: bool, limit: int | None = None,
                      what: str = "images") -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """(images, labels or None, class names) from ``folder``: class sub-folders (labels = sorted folder
    index) or, unlabelled, a flat folder. The first ``limit`` files in a class-interleaved order, so that a
    small calibration set still spans the classes. Errors name the folder and the fix."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise MissingFileError(f"{what} folder {root} does not exist (or is a file): pass a directory of images"
                               + (" in class sub-folders" if labelled else ""))
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())  # torchvision's find_classes order
    if labelled and not classes:
        raise MissingFileError(f"{what} folder {root} has no class sub-folders: labelled images go in "
                               "ROOT/<class>/<image> (ImageFolder layout)")
    # ImageFolder's own listing (extensions, class indices), as leanvit train reads class folders
    samples = make_dataset(str(root), {c: i for i, c in enumerate(classes)}, extensions=IMG_EXTENSIONS,
                           allow_empty=True) if classes else []
    per_class: list[list[Path]] = [[] for _ in classes]
    for path, index in samples:
        per_class[index].append(Path(path))
    flat = sorted(f for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS)
    files: list[tuple[Path, int]] = [(f, -1) for f in flat] if not labelled else []
    for rank in range(max((len(p) for p in per_class), default=0)):  # interleave the classes
        files += [(p[rank], i) for i, p in enumerate(per_class) if rank < len(p)]
    if not files:
        raise MissingFileError(f"no images ({', '.join(IMG_EXTENSIONS)}) in {what} folder {root}")
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
