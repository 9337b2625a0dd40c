"""Semantic segmentation as a :class:`leanvit.train.task.Task`, trained by leanvit's one loop.

``cfg.task.arch`` is the segmentor (semantic_fpn | upernet), ``cfg.model.name`` the leanvit backbone,
``cfg.data.path`` an ADE20K root (``ADEChallengeData2016`` inside or the folder itself), any
``images/`` + ``annotations/`` folder with ``classes.txt``, or ``shapes`` (the synthetic scenes as class
maps, written under ``OUTPUT/shapes``). ``cfg.task.backbone_checkpoint``: ImageNet weights for the backbone.
``cfg.task.options`` (defaults = the official ADE20K pipeline, SepViT's ``_base_/datasets/ade20k.py``):

- ``crop_size`` 512, ``scale`` [2048, 512], ``ratio_range`` [0.5, 2.0], ``cat_max_ratio`` 0.75, ``flip`` 0.5,
  ``photometric`` true: training pipeline; ``eval_scale`` [2048, 512]: test resize;
- ``eval``: ``{mode: whole | slide, crop: 512, stride: 341, scales: [1.0], flip: false}``;
- ``reduce_zero_label`` (ADE20K: always; folders: false), ``classes`` (a class-list file), ``strict`` (false:
  bad pairs are skipped and counted; true: they are errors);
- ``norm_eval`` (true), ``segmentor``: further ``create_segmentor`` overrides (``channels``, ``aux_weight``...);
- ``shapes``: ``{train, val, size, seed}`` of the synthetic set.

The ``aug`` section (timm's classification augmentations, Mixup) does not apply: the pipeline is set here.
Evaluation: mIoU / mAcc / aAcc (percent) from one confusion matrix summed over all processes.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..errors import InvalidValueError, MissingFileError
from ..train.config import ConfigError, TrainConfig
from ..train.distributed import DistInfo, barrier
from ..train.engine import autocast
from ..train.data import SampleDataset, collate, list_collate, resumable_train_loader, sharded_eval_loader
from ..train.task import evaluation_batches, gather_lists
from .ade20k import (SegEvalTransform, SegmentationSource, SegTrainTransform, open_ade20k, open_folder,
                     write_shapes_segmentation)
from .dense_task import DenseTask
from .seg_metrics import SegConfusion
from .segmentors import ARCHS, create_segmentor, segment

__all__ = ["SegmentationTask", "SEGMENTATION_OPTIONS", "prepare_data_path", "open_segmentation_split",
           "evaluate_segmentation", "inference_options"]

log = logging.getLogger("leanvit.train")

SEGMENTATION_OPTIONS: dict[str, Any] = {
    "crop_size": 512, "scale": [2048, 512], "ratio_range": [0.5, 2.0], "cat_max_ratio": 0.75, "flip": 0.5,
    "photometric": True, "eval_scale": [2048, 512], "eval": {}, "reduce_zero_label": None, "classes": None,
    "strict": False, "norm_eval": True, "segmentor": {}, "shapes": {},
}
EVAL_DEFAULTS: dict[str, Any] = {"mode": "whole", "crop": 512, "stride": 341, "scales": [1.0], "flip": False}
_SHAPES_DEFAULTS = dict(train=64, val=16, size=160, seed=0)
_METRICS = ("mIoU", "mAcc", "aAcc")


def prepare_data_path(path: str, options: dict[str, Any], shapes_root: Path, info: DistInfo) -> str:
    """``path`` itself, or for ``shapes`` the folder the synthetic set is written to (by rank 0)."""
    if path != "shapes":
        return path
    s = {**_SHAPES_DEFAULTS, **(options.get("shapes") or {})}
    if info.is_main:
        write_shapes_segmentation(shapes_root, s["train"], s["val"], seed=s["seed"], size=s["size"])
    barrier(info)
    return str(shapes_root)


def open_segmentation_split(path: str, split: str, options: dict[str, Any]) -> SegmentationSource:
    """One split of an ADE20K root or a labelled folder (see the module docstring)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise MissingFileError(f"segmentation data {root} does not exist; pass an ADE20K root, a folder with "
                               "images/<split>/ + annotations/<split>/ + classes.txt, or 'shapes'")
    strict = bool(options.get("strict", False))
    ade_split = {"train": "training", "val": "validation"}.get(split, split)
    if (root / "ADEChallengeData2016").is_dir() or root.name == "ADEChallengeData2016":
        return open_ade20k(root, ade_split, strict=strict)
    return open_folder(root, split, options.get("classes"), reduce_zero_label=bool(options.get("reduce_zero_label")),
                       strict=strict)


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, loader: Iterable, num_classes: int, info: DistInfo, *,
                          classes: list[str] | None = None, ignore_index: int = 255, dtype: torch.dtype | None = None,
                          progress: bool = False, desc: str = "val", **inference: Any) -> tuple[dict[str, Any], list[str]]:
    """Dataset-level mIoU / mAcc / aAcc (fractions) over all processes; ``inference``: :func:`segment` options."""
    confusion = SegConfusion(num_classes, ignore_index)
    skipped: list[str] = []
    for images, labels in evaluation_batches(model, loader, info, skipped, progress=progress, desc=desc):
        for image, label in zip(images, labels):
            with autocast(info.device, dtype):
                probs = segment(model, image[None].to(info.device), label.shape[-2:], **inference)
            confusion.update(probs.argmax(1).cpu(), label[None])
    confusion.all_reduce()
    return confusion.compute(classes), gather_lists(skipped, info)


class SegmentationTask(DenseTask):
    """Semantic segmentation with Semantic FPN / UperNet on a leanvit backbone (see the module docstring)."""

    name = "segmentation"
    eval_command = "leanvit segment eval"
    default_metric = "mIoU"
    evaluation_metrics = _METRICS
    model_kind = "segmentor"
    build = staticmethod(create_segmentor)
    default_options = SEGMENTATION_OPTIONS

    def __init__(self, cfg: TrainConfig, need_train: bool = True) -> None:
        if cfg.task.arch not in ARCHS:
            raise ConfigError(f"task.name=segmentation needs task.arch: {' or '.join(ARCHS)} (got {cfg.task.arch!r})")
        super().__init__(cfg, need_train)
        bad_eval = sorted(set(self.options["eval"] or {}) - set(EVAL_DEFAULTS))
        if bad_eval:
            raise ConfigError(f"unknown task.options.eval keys {bad_eval}; valid: {', '.join(EVAL_DEFAULTS)}")
        self.inference = {**EVAL_DEFAULTS, **(self.options["eval"] or {})}

    # --- data
    def open_data(self, info: DistInfo) -> None:
        cfg, o = self.cfg, self.options
        path = prepare_data_path(cfg.data.path, o, Path(cfg.output) / "shapes", info)
        self.train_set = open_segmentation_split(path, cfg.data.train_split, o) if self.need_train else None
        self.val_set = open_segmentation_split(path, cfg.data.val_split or "val", o)
        if self.train_set is not None and self.train_set.classes != self.val_set.classes:
            raise InvalidValueError("the training and validation splits list different classes")
        self.classes = list(self.val_set.classes)
        self.num_classes = cfg.model.num_classes or len(self.classes)
        if self.num_classes < len(self.classes):
            raise InvalidValueError(f"model.num_classes={self.num_classes} but the data has {len(self.classes)} classes")
        self.description = self.val_set.description.rsplit(" ", 1)[0]
        self.train_size = len(self.train_set) if self.train_set is not None else 0
        self.val_size = len(self.val_set)
        for source in (self.train_set, self.val_set):
            for reason, paths in (source.skipped if source is not None else {}).items():
                log.warning("%s: skipped %d image(s) (%s), e.g. %s", source.description, len(paths), reason, paths[0])

    def train_loader(self, info: DistInfo) -> tuple[Iterable, Any]:
        o = self.options
        transform = SegTrainTransform(o["crop_size"], tuple(o["scale"]), tuple(o["ratio_range"]), o["cat_max_ratio"],
                                      o["flip"], bool(o["photometric"]))
        samples = SampleDataset(self.train_set, transform, seed=self.cfg.train.seed, with_reason=True)
        return resumable_train_loader(samples, collate_fn=collate, **self.train_loader_settings(info))

    def eval_loader(self, info: DistInfo, batch_size: int) -> Iterable:
        """Lists of full-size images and labels, with the loader's own generator: one without draws its base
        seed from the global RNG at every iteration, which would shift the RNG streams of a resumed run."""
        samples = SampleDataset(self.val_set, SegEvalTransform(tuple(self.options["eval_scale"])), with_reason=True)
        return sharded_eval_loader(samples, batch_size=batch_size, collate_fn=list_collate, seed=self.cfg.train.seed,
                                   **self.loader_settings(info))

    # --- per batch
    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.cfg.model.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return sum(model(images, labels).values())

    def measure(self, model: nn.Module, loader: Iterable, info: DistInfo, *, dtype: torch.dtype | None = None,
                channels_last: bool = False, progress: bool = False,
                desc: str = "val") -> tuple[dict[str, Any], list[str]]:
        return evaluate_segmentation(model, loader, self.num_classes, info, classes=self.classes, dtype=dtype,
                                     progress=progress, desc=desc, **self.inference)

    def epoch_metrics(self, scores: dict[str, Any]) -> dict[str, float]:
        return {k: 100.0 * scores[k] for k in _METRICS}

    def log_scores(self, scores: dict[str, Any]) -> None:
        worst = sorted((v, k) for k, v in scores["IoU"].items() if v == v)[:5]
        log.info("mIoU %.2f, mAcc %.2f, aAcc %.2f on %d pixels; lowest IoU: %s", 100 * scores["mIoU"],
                 100 * scores["mAcc"], 100 * scores["aAcc"], scores["pixels"],
                 ", ".join(f"{k} {100 * v:.1f}" for v, k in worst))

    # --- evaluating a checkpoint (leanvit segment eval)
    @classmethod
    def for_checkpoint(cls, options: Any) -> tuple["SegmentationTask", nn.Module]:
        """The dense set-up, with the checkpoint's inference options under ``options``' (mode, crop, ...)."""
        task, model = super().for_checkpoint(options)
        task.inference = inference_options(task.trained_meta, options)
        return task, model

    def report_scores(self, scores: dict[str, Any], skipped: list[str]) -> dict[str, Any]:
        return dict(inference=self.inference, skipped_files=len(set(skipped)),
                    skipped_while_scanning={k: len(v) for k, v in self.val_set.skipped.items()},
                    mIoU=100 * scores["mIoU"], mAcc=100 * scores["mAcc"], aAcc=100 * scores["aAcc"],
                    IoU={k: 100 * v for k, v in scores["IoU"].items()})

    # --- bookkeeping
    def checkpoint_meta(self) -> dict[str, Any]:
        return dict(super().checkpoint_meta(), inference=dict(self.inference))

    def resolved(self) -> dict[str, Any]:
        source = self.train_set or self.val_set
        return dict(super().resolved(), arch=self.arch, skipped_while_scanning={k: len(v) for k, v in source.skipped.items()})


def inference_options(meta: dict[str, Any], options: Any) -> dict[str, Any]:
    """:func:`segment`'s options for a checkpoint: the defaults, the checkpoint's, then those ``options`` sets
    (its ``mode``, ``crop``, ``stride``, ``scales``, ``flip`` fields that are not None)."""
    overrides = {k: getattr(options, k) for k in EVAL_DEFAULTS if getattr(options, k, None) is not None}
    return {**EVAL_DEFAULTS, **meta.get("inference", {}), **overrides}
