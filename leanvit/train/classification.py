"""Image classification as a :class:`leanvit.train.task.Task`: the trainer's default task.

Data from :func:`leanvit.train.data.open_source` (ImageFolder, ``digits``, ``fake``) through timm's
transforms, the student from ``create_model`` (fine-tuning, frozen stages), Mixup/CutMix with label
smoothing, DeiT distillation, and top-1/top-5 evaluation.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from . import build
from ..errors import InvalidValueError
from .config import TrainConfig
from .data import build_loaders, build_transforms, open_source
from .distributed import DistInfo
from .engine import DistillationLoss, build_criterion, evaluate_model
from .qat import FakeQuantModel
from .task import TRAINER_CSV_FIELDS, Task, register_task

__all__ = ["ClassificationTask", "CSV_FIELDS"]

CSV_FIELDS = TRAINER_CSV_FIELDS + ["val_loss", "top1", "top5", "ema_top1", "ema_top5", "skipped_files"]


class ClassificationTask(Task):
    """Classification of whole images into ``cfg.model.num_classes`` (or the data's) classes."""

    name = "classification"
    metric_names = ("top1", "ema_top1")
    default_metric = "top1"
    csv_fields = CSV_FIELDS[len(TRAINER_CSV_FIELDS):]

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__(cfg)
        self.spec = build.model_spec(cfg)
        self.mixup: Any = None
        self.criterion: nn.Module | None = None

    def open_data(self, info: DistInfo) -> None:
        cfg = self.cfg
        self.bundle = open_source(cfg.data.path, cfg, self.spec.img_size)
        self.classes = list(self.bundle.classes)
        self.description = self.bundle.description
        self.train_size, self.val_size = len(self.bundle.train), len(self.bundle.val)
        self.num_classes = cfg.model.num_classes or len(self.classes)
        if self.num_classes < len(self.classes):
            raise InvalidValueError(f"model.num_classes={self.num_classes} but {self.description} has "
                                    f"{len(self.classes)} classes; leave model.num_classes unset to use the data's")

    def build_model(self, info: DistInfo) -> nn.Module:
        model = build.build_student(self.cfg, self.num_classes, self.spec.img_size)
        if self.cfg.finetune.qat != "none":
            return FakeQuantModel(model, self.spec.img_size, self.cfg.finetune.qat)
        return model

    def frozen_modules(self, model: nn.Module) -> list[nn.Module]:
        return build.freeze_early_stages(model, self.cfg.finetune.freeze_stages)

    def build_loaders(self, info: DistInfo) -> tuple[Iterable, Iterable, Any]:
        s = self.spec
        train_tf, eval_tf = build_transforms(self.cfg, s.img_size, s.mean, s.std, s.crop_pct)
        return build_loaders(self.cfg, self.bundle, train_tf, eval_tf, info.rank, info.world_size,
                             info.device.type == "cuda")

    def build_loss(self, device: torch.device) -> None:
        cfg = self.cfg
        self.mixup = build.build_mixup(cfg, self.num_classes)
        self.criterion = build_criterion(self.mixup is not None, cfg.aug.smoothing)
        if cfg.distill.type != "none":
            teacher = build.build_teacher(cfg, self.num_classes, self.spec.img_size).to(device)
            if cfg.model.channels_last:
                teacher.to(memory_format=torch.channels_last)
            self.criterion = DistillationLoss(self.criterion, teacher, cfg.distill.type, cfg.distill.alpha,
                                              cfg.distill.tau)

    def loss(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        if self.cfg.model.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        outputs = model(images)
        if isinstance(self.criterion, DistillationLoss):
            return self.criterion(images, outputs, targets)
        if isinstance(outputs, (tuple, list)):
            outputs = outputs[0]
        return self.criterion(outputs, targets)

    def evaluate(self, model: nn.Module, loader: Iterable, info: DistInfo, *, ema: bool = False,
                 dtype: torch.dtype | None = None, channels_last: bool = False,
                 progress: bool = False) -> tuple[dict[str, float], list[str]]:
        m = evaluate_model(model, loader, info, dtype=dtype, channels_last=channels_last, progress=progress,
                           desc="val ema" if ema else "val")
        if ema:
            return dict(ema_top1=m["top1"], ema_top5=m["top5"]), m["skipped"]
        return dict(val_loss=m["loss"], top1=m["top1"], top5=m["top5"]), m["skipped"]

    def checkpoint_meta(self) -> dict[str, Any]:
        return dict(super().checkpoint_meta(), family=self.spec.family, img_size=self.spec.img_size)

    def resolved(self) -> dict[str, Any]:
        return dict(super().resolved(), img_size=self.spec.img_size, crop_pct=self.spec.crop_pct)


register_task(ClassificationTask.name, ClassificationTask)
