"""Detection / instance segmentation as a :class:`leanvit.train.task.Task`, trained by leanvit's one loop.

``cfg.task.arch`` is the detector (retinanet | mask_rcnn | faster_rcnn), ``cfg.model.name`` the leanvit
backbone, ``cfg.data.path`` a COCO-layout root or ``shapes`` (the synthetic set, written under
``OUTPUT/shapes``), ``cfg.task.backbone_checkpoint`` ImageNet weights for the backbone (any layout
``leanvit.load_checkpoint`` reads, or a dense checkpoint's ``backbone.*``). ``cfg.task.options``:

- ``min_size`` / ``max_size``: the detector's resize (800 / 1333, official); ``flip_prob`` (0.5);
- ``norm_eval`` (true): backbone BatchNorm statistics frozen, as the official dense backbones;
- ``detector``: further ``create_detector`` overrides (``rpn_post_nms_top_n_train``, ``fpn_channels``, ...);
- ``shapes``: ``{train, val, size, seed}`` of the synthetic set;
- ``train_json`` / ``train_images`` / ``val_json`` / ``val_images``: a custom COCO json and its image folder.

Evaluation: COCO box AP (and mask AP for Mask R-CNN) over all processes' detections.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..errors import InvalidValueError
from ..train.config import ConfigError, TrainConfig
from ..train.distributed import DistInfo, barrier, gather_objects
from ..train.engine import autocast
from ..train.data import SampleDataset, list_collate, resumable_train_loader, sharded_eval_loader
from ..train.task import evaluation_batches, gather_lists
from .coco import CocoDetection, CocoSplit, RandomHorizontalFlip, coco_split
from .coco_eval import STAT_NAMES, coco_evaluate, detections_to_coco, format_table
from .dense_task import DenseTask
from .detectors import create_detector, label_offset
from .shapes import write_shapes_coco

__all__ = ["DetectionTask", "DETECTION_OPTIONS", "evaluate_detections"]

log = logging.getLogger("leanvit.train")

DETECTION_OPTIONS = {
    "min_size": 800, "max_size": 1333, "flip_prob": 0.5, "norm_eval": True, "detector": {},
    "shapes": {}, "train_json": None, "train_images": None, "val_json": None, "val_images": None,
}
_SHAPES_DEFAULTS = dict(train=64, val=16, size=160, seed=0)
_METRICS = tuple(f"{t}_{n}" for t in ("bbox", "segm") for n in STAT_NAMES)


@torch.no_grad()
def evaluate_detections(model: nn.Module, loader: Iterable, dataset: CocoDetection, info: DistInfo, *,
                        dtype: torch.dtype | None = None, progress: bool = False,
                        desc: str = "val") -> tuple[dict[str, float], list[str]]:
    """COCO AP of ``model`` on ``dataset`` (its loader sharded over processes); every process gets the metrics."""
    masks = getattr(model, "roi_heads", None) is not None and model.roi_heads.has_mask()
    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    for images, targets in evaluation_batches(model, loader, info, skipped, progress=progress, desc=desc):
        with autocast(info.device, dtype):
            outputs = model([im.to(info.device) for im in images])
        results += detections_to_coco(outputs, [t["image_id"] for t in targets], dataset.category_ids,
                                      dataset.label_offset)
    all_results, all_skipped = gather_lists(results, info), gather_lists(skipped, info)
    metrics: dict[str, float] = {}
    if info.is_main:
        metrics = coco_evaluate(dataset.coco, all_results, ("bbox", "segm") if masks else ("bbox",),
                                image_ids=dataset.image_ids)
        log.info("COCO AP on %d images (%d detections):\n%s", len(dataset), len(all_results), format_table(metrics))
    metrics = gather_objects(metrics, info)[0]  # rank 0's result, everywhere
    return metrics, all_skipped


class DetectionTask(DenseTask):
    """COCO-format detection and instance segmentation on a leanvit backbone (see the module docstring)."""

    name = "detection"
    eval_command = "leanvit detect eval"
    default_metric = "bbox_AP"
    evaluation_metrics = _METRICS
    model_kind = "detector"
    build = staticmethod(create_detector)
    default_options = DETECTION_OPTIONS
    data_identity = ("category_ids", "categories")

    def __init__(self, cfg: TrainConfig, need_train: bool = True) -> None:
        if cfg.task.arch is None:
            raise ConfigError("task.name=detection needs task.arch: retinanet, mask_rcnn or faster_rcnn")
        super().__init__(cfg, need_train)
        self.offset = label_offset(cfg.task.arch)
        self.category_ids: list[int] = []

    # --- data
    def _splits(self, info: DistInfo) -> tuple[CocoSplit | None, CocoSplit]:
        o, path = self.options, self.cfg.data.path
        if o["val_json"] or o["train_json"]:
            missing = [k for k in ("val_json", "val_images") + (("train_json", "train_images") if self.need_train
                                                                else ()) if not o[k]]
            if missing:
                raise ConfigError(f"a custom COCO json needs task.options {', '.join(missing)} as well")
            val = CocoSplit(Path(o["val_json"]), Path(o["val_images"]))
            train = CocoSplit(Path(o["train_json"]), Path(o["train_images"])) if self.need_train else None
            return train, val
        if path == "shapes":
            s = {**_SHAPES_DEFAULTS, **(o["shapes"] or {})}
            root = Path(self.cfg.output) / "shapes"
            if info.is_main:
                write_shapes_coco(root, s["train"], s["val"], seed=s["seed"], size=s["size"])
            barrier(info)
            path = str(root)
        return (coco_split(path, "train") if self.need_train else None), coco_split(path, "val")

    def open_data(self, info: DistInfo) -> None:
        train_split, val_split = self._splits(info)
        masks = self.arch == "mask_rcnn"
        self.val_set = CocoDetection(val_split, train=False, masks=masks, label_offset=self.offset)
        self.train_set = (CocoDetection(train_split, train=True, masks=masks, label_offset=self.offset)
                          if train_split is not None else None)
        ref = self.train_set or self.val_set
        if self.train_set is not None and self.train_set.category_ids != self.val_set.category_ids:
            raise InvalidValueError(f"{train_split.annotations} and {val_split.annotations} define different categories; "
                                    "both splits need the same category ids")
        self.classes, self.category_ids = list(ref.classes), list(ref.category_ids)
        self.num_classes = self.cfg.model.num_classes or len(self.classes)
        if self.num_classes < len(self.classes):
            raise InvalidValueError(f"model.num_classes={self.num_classes} but the data has {len(self.classes)} categories")
        self.description = str(self.cfg.data.path)
        self.train_size = len(self.train_set) if self.train_set is not None else 0
        self.val_size = len(self.val_set)

    # --- model
    def arch_kwargs(self) -> dict[str, Any]:
        o = self.options
        return dict(min_size=int(o["min_size"]), max_size=int(o["max_size"]), **super().arch_kwargs())

    def train_loader(self, info: DistInfo) -> tuple[Iterable, Any]:
        samples = SampleDataset(self.train_set, RandomHorizontalFlip(float(self.options["flip_prob"])),
                                seed=self.cfg.train.seed)
        return resumable_train_loader(samples, collate_fn=list_collate, **self.train_loader_settings(info))

    def eval_loader(self, info: DistInfo, batch_size: int) -> Iterable:
        return sharded_eval_loader(SampleDataset(self.val_set), batch_size=batch_size, collate_fn=list_collate,
                                   **self.loader_settings(info))

    # --- per batch
    def to_device(self, inputs: Any, targets: Any, device: torch.device) -> tuple[Any, Any]:
        images = [im.to(device, non_blocking=True) for im in inputs]
        moved = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
                 for t in targets]
        return images, moved

    def loss(self, model: nn.Module, images: Any, targets: Any) -> torch.Tensor:
        losses = model(images, targets)
        return sum(losses.values())

    def measure(self, model: nn.Module, loader: Iterable, info: DistInfo, *, dtype: torch.dtype | None = None,
                channels_last: bool = False, progress: bool = False,
                desc: str = "val") -> tuple[dict[str, Any], list[str]]:
        return evaluate_detections(model, loader, self.val_set, info, dtype=dtype, progress=progress, desc=desc)

    # --- evaluating a checkpoint (leanvit detect eval)
    def report_scores(self, scores: dict[str, Any], skipped: list[str]) -> dict[str, Any]:
        return dict(skipped_files=len(set(skipped)), skipped_annotations=dict(self.val_set.skipped), metrics=scores,
                    table=format_table(scores))

    # --- bookkeeping
    def checkpoint_meta(self) -> dict[str, Any]:
        return dict(super().checkpoint_meta(), category_ids=list(self.category_ids), label_offset=self.offset)

    def resolved(self) -> dict[str, Any]:
        return dict(super().resolved(), arch=self.arch, category_ids=list(self.category_ids),
                    skipped_annotations=dict(self.val_set.skipped) if self.train_set is None
                    else dict(self.train_set.skipped))
