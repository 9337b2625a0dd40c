"""Image classification as a :class:`leanvit.train.task.Task`: the trainer's default task.

Data from :func:`leanvit.train.data.open_source` (ImageFolder, ``digits``, ``fake``) through timm's
transforms, the student from ``create_model`` (fine-tuning, frozen stages), Mixup/CutMix with label
smoothing, DeiT distillation, and top-1/top-5 evaluation; ``leanvit eval`` evaluates its checkpoints and any
weights file :func:`leanvit.load_checkpoint` understands (official repositories, timm, leanvit safetensors).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from . import build
from ..errors import InvalidValueError, MissingFileError
from ..models import create_model, get_config
from ..models.checkpoint import checkpoint_shape, convert_state_dict, read_state_dict, trained_img_size
from ..zoo import fuse_model
from .config import TrainConfig, config_from_dict
from .data import (OnImage, SampleDataset, build_transforms, collate, eval_transform, open_source,
                   repeated_aug_sampler, resumable_train_loader, sharded_eval_loader)
from .distributed import DistInfo
from .engine import DistillationLoss, build_criterion, evaluate_model
from .options import ClassificationEvalOptions
from .qat import FakeQuantModel
from .state import is_training_checkpoint
from .task import TRAINER_CSV_FIELDS, Task, task_class

__all__ = ["ClassificationTask", "CSV_FIELDS", "evaluate"]

log = logging.getLogger("leanvit.train")

CSV_FIELDS = TRAINER_CSV_FIELDS + ["val_loss", "top1", "top5", "ema_top1", "ema_top5", "skipped_files"]


class ClassificationTask(Task):
    """Classification of whole images into ``cfg.model.num_classes`` (or the data's) classes."""

    name = "classification"
    eval_command = "leanvit eval MODEL"
    metric_names = ("top1", "ema_top1")
    default_metric = "top1"
    csv_fields = CSV_FIELDS[len(TRAINER_CSV_FIELDS):]
    eval_batch_factor = 1.5  # DeiT's and timm's validation loaders

    def __init__(self, cfg: TrainConfig, need_train: bool = True) -> None:
        super().__init__(cfg, need_train)
        self.spec = build.input_spec(cfg)
        self.mixup: Any = None
        self.criterion: nn.Module | None = None
        self.trained_on: dict[str, Any] = {}  # a training checkpoint's facts, when evaluating one

    def open_data(self, info: DistInfo) -> None:
        cfg = self.cfg
        self.bundle = open_source(cfg.data.path, cfg, self.spec.img_size, need_train=self.need_train)
        self.classes = list(self.bundle.classes)
        self.description = self.bundle.description
        self.train_size = len(self.bundle.train) if self.need_train else 0
        self.val_size = len(self.bundle.val)
        self.num_classes = cfg.model.num_classes or len(self.classes)
        if self.evaluation is not None:
            return  # check_checkpoint_data explains a mismatch in the checkpoint's terms
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

    def train_loader(self, info: DistInfo) -> tuple[Iterable, Any]:
        s, cfg = self.spec, self.cfg
        train_tf, _ = build_transforms(cfg, s.img_size, s.mean, s.std, s.crop_pct)
        dataset = SampleDataset(self.bundle.train, OnImage(train_tf), seed=cfg.train.seed)
        base = repeated_aug_sampler(dataset, cfg, info.rank, info.world_size) if cfg.data.repeated_aug else None
        return resumable_train_loader(dataset, collate_fn=collate, base_sampler=base,
                                      **self.train_loader_settings(info))

    def eval_loader(self, info: DistInfo, batch_size: int) -> Iterable:
        s = self.spec
        transform = eval_transform(s.img_size, s.mean, s.std, s.crop_pct, self.cfg.data.interpolation)
        return sharded_eval_loader(SampleDataset(self.bundle.val, OnImage(transform)), batch_size=batch_size,
                                   collate_fn=collate, **self.loader_settings(info))

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

    def measure(self, model: nn.Module, loader: Iterable, info: DistInfo, *, dtype: torch.dtype | None = None,
                channels_last: bool = False, progress: bool = False,
                desc: str = "val") -> tuple[dict[str, Any], list[str]]:
        scores = evaluate_model(model, loader, info, dtype=dtype, channels_last=channels_last, progress=progress,
                                desc=desc)
        return scores, scores.pop("skipped")

    def epoch_metrics(self, scores: dict[str, Any]) -> dict[str, float]:
        return dict(val_loss=scores["loss"], top1=scores["top1"], top5=scores["top5"])

    # --- evaluating a checkpoint (leanvit eval)
    @classmethod
    def for_checkpoint(cls, options: ClassificationEvalOptions) -> tuple["ClassificationTask", nn.Module]:
        mc = get_config(options.model)
        sd, facts = _read_weights(options.model, options.checkpoint, options.ema)
        num_classes = options.num_classes or facts.get("num_classes") or checkpoint_shape(options.model, sd)["num_classes"]
        if not num_classes:
            raise InvalidValueError(f"cannot tell the class count of {options.checkpoint}; pass --num-classes")
        # The training run's data settings (split names, fake-data sizes) unless overridden here.
        cfg = config_from_dict({"data": facts["data"]}) if facts.get("data") else TrainConfig()
        cfg.model.name, cfg.model.num_classes = options.model, num_classes
        cfg.model.img_size = options.img_size or facts.get("img_size") or mc.img_size
        cfg.model.channels_last = options.channels_last
        cfg.data.path, cfg.data.workers = options.data, options.workers
        cfg.data.val_split = options.split or cfg.data.val_split
        cfg.data.crop_pct = options.crop_pct or mc.crop_pct
        cfg.data.interpolation = mc.interpolation
        cfg.train.amp, cfg.train.device = options.amp, options.device
        task = cls(cfg, need_train=False)
        task.trained_on = facts
        model = create_model(options.model, checkpoint=sd, num_classes=num_classes, img_size=cfg.model.img_size)
        if options.fuse:
            model = fuse_model(model)
        model.eval()
        if options.channels_last:
            model.to(memory_format=torch.channels_last)
        return task, model

    def check_checkpoint_data(self) -> None:
        data, classes = self.cfg.data.path, self.trained_on.get("classes")
        if classes and data not in ("fake",) and list(classes) != self.classes:
            raise InvalidValueError(f"the classes of {data} ({self.classes[:5]}...) differ from the ones "
                                    f"{self.evaluation.checkpoint} was trained on ({list(classes)[:5]}...); "
                                    "accuracy would be meaningless")
        if len(self.classes) > self.num_classes:
            raise InvalidValueError(f"{data} has {len(self.classes)} classes but the model predicts {self.num_classes}")

    def checkpoint_report(self, scores: dict[str, Any], skipped: list[str], info: DistInfo,
                          seconds: float) -> dict[str, Any]:
        o = self.evaluation
        if skipped:
            log.warning("skipped %d unreadable image(s), e.g. %s", len(skipped), skipped[0])
        return dict(
            model=o.model, checkpoint=str(o.checkpoint), data=self.description, split=o.split or "val",
            top1=scores["top1"], top5=scores["top5"], loss=scores["loss"], images=scores["images"],
            images_per_s=round(scores["images_per_s"], 1), wall_images_per_s=round(scores["images"] / seconds, 1),
            img_size=self.spec.img_size, crop_pct=self.spec.crop_pct, num_classes=self.num_classes, ema=o.ema,
            fused=o.fuse, amp=o.amp, batch_size=o.batch_size, device=str(info.device), processes=info.world_size,
            skipped_files=len(skipped),
        )

    def checkpoint_meta(self) -> dict[str, Any]:
        return dict(super().checkpoint_meta(), family=self.spec.family, img_size=self.spec.img_size)

    def resolved(self) -> dict[str, Any]:
        return dict(super().resolved(), img_size=self.spec.img_size, crop_pct=self.spec.crop_pct)


def evaluate(model_name: str, checkpoint: str | os.PathLike, data: str, **options: Any) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (a ``model_name`` model) on ``data``'s validation split (``leanvit eval``).

    ``options``: the fields of :class:`~leanvit.train.options.ClassificationEvalOptions` (``split``,
    ``img_size``, ``batch_size``, ``ema``, ``fuse``, ``amp``, ``out`` ...). Returns (and writes to ``out`` as
    JSON) top1, top5 (percent), loss, images, images_per_s (model forward only) and the settings used.
    """
    return ClassificationTask.evaluate_checkpoint(
        ClassificationEvalOptions(model=model_name, checkpoint=checkpoint, data=data, **options))


def _read_weights(model_name: str, checkpoint: str | os.PathLike, ema: bool) -> tuple[dict[str, torch.Tensor], dict]:
    """(leanvit-layout state dict, facts from a training checkpoint or {})."""
    path = Path(checkpoint)
    if not path.is_file():
        raise MissingFileError(f"checkpoint file not found: {path}")
    try:  # a leanvit training checkpoint carries its class count, resolution and class names
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - safetensors or another format: read_state_dict explains failures
        obj = None
    if is_training_checkpoint(obj):
        task = obj.get("task", ClassificationTask.name)
        if task != ClassificationTask.name:
            raise InvalidValueError(f"{path} is a {task} checkpoint, not a classification one; "
                                    f"use {task_class(task).eval_command}")
        if obj["model_name"] != model_name:
            raise InvalidValueError(f"{path} holds {obj['model_name']} weights, not {model_name}; "
                                    f"run: leanvit eval {obj['model_name']} --checkpoint {path} ...")
        if ema and obj.get("ema") is None:
            raise InvalidValueError(f"{path} has no EMA weights (the run had ema.enable=false); drop --ema")
        facts = dict(num_classes=obj["num_classes"], img_size=trained_img_size(obj), classes=obj.get("classes"),
                     data=obj["config"]["data"])
        return obj["ema"] if ema else obj["model"], facts
    sd, _ = read_state_dict(obj if isinstance(obj, dict) else path, prefer_ema=ema)  # no second read
    return convert_state_dict(sd, get_config(model_name).family), {}
