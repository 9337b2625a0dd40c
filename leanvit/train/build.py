"""Builders: the student (with fine-tuning and freezing), the teacher, optimizer, schedule and Mixup.

Everything here is family-agnostic: it relies only on ``leanvit.create_model``, the model's
``no_weight_decay()`` / ``leanvit_cfg`` / distillation head, and ``leanvit.load_checkpoint``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from ..models.checkpoint import load_checkpoint, read_state_dict
from ..errors import InvalidValueError
from ..models import create_model, get_config
from .config import TrainConfig

__all__ = ["InputSpec", "input_spec", "build_student", "freeze_early_stages", "build_teacher", "build_optimizer", "name_rule_param_groups",
           "effective_lr", "build_scheduler", "build_mixup", "updates_per_epoch"]

log = logging.getLogger("leanvit.train")


@dataclass
class InputSpec:
    """Resolved input geometry and normalisation of the model being trained (``leanvit.zoo.ModelSpec`` is what a
    model name means)."""

    name: str
    family: str
    img_size: int
    crop_pct: float
    mean: tuple[float, ...]
    std: tuple[float, ...]


def input_spec(cfg: TrainConfig) -> InputSpec:
    """Image size, crop and mean/std from the config, falling back to the variant's defaults."""
    mc = get_config(cfg.model.name)
    return InputSpec(
        name=mc.name, family=mc.family, img_size=cfg.model.img_size or mc.img_size,
        crop_pct=cfg.data.crop_pct or mc.crop_pct, mean=tuple(mc.mean), std=tuple(mc.std),
    )


def build_student(cfg: TrainConfig, num_classes: int, img_size: int) -> nn.Module:
    """``leanvit.create_model`` with the config's options (``model.drop_path`` / ``model.kwargs`` a family does not
    take are refused by it); loads ``finetune.checkpoint`` when set."""
    kwargs: dict[str, Any] = dict(cfg.model.kwargs)
    if cfg.model.drop_path > 0:
        kwargs["drop_path_rate"] = cfg.model.drop_path
    distill = cfg.distill.type != "none"
    model = create_model(cfg.model.name, num_classes=num_classes, img_size=img_size, distillation=distill, **kwargs)
    if cfg.finetune.checkpoint:
        # drop_head=True keeps a fitting head and re-initialises one with another class count; a
        # distillation head present on one side only is the one mismatch allowed (strict=False + check).
        report = load_checkpoint(model, cfg.finetune.checkpoint, strict=False, drop_head=True,
                                 prefer_ema=cfg.finetune.use_ema)
        for what in ("missing", "unexpected"):
            bad = [k for k in report[what] if not k.startswith("head_dist.")]
            if bad:
                raise InvalidValueError(f"fine-tune checkpoint {cfg.finetune.checkpoint} does not fit {cfg.model.name}: "
                                        f"{len(bad)} {what} tensors (first: {bad[:3]})")
        log.info("fine-tuning from %s (%s layout%s)", cfg.finetune.checkpoint, report["layout"],
                 ", new classifier head" if report["dropped_head"] else "")
    if cfg.model.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if hasattr(model, "set_recompute_norm_activations"):
        model.set_recompute_norm_activations(cfg.model.recompute_activations)
    return model


def freeze_early_stages(model: nn.Module, n: int) -> list[nn.Module]:
    """Freeze the stem and the first ``n`` stages (weights and BN statistics); returns the frozen modules."""
    if n <= 0:
        return []
    stages = list(model.stages)
    if n > len(stages):
        raise InvalidValueError(f"finetune.freeze_stages={n} but {model.leanvit_cfg.name} has {len(stages)} stages")
    frozen = [model.patch_embed] + stages[:n]
    for m in frozen:
        m.requires_grad_(False)
        m.eval()
    return frozen


def build_teacher(cfg: TrainConfig, num_classes: int, img_size: int) -> nn.Module:
    """The distillation teacher: a leanvit or timm model with local weights (its EMA weights when the checkpoint
    holds them), frozen, in eval mode."""
    d = cfg.distill
    weights, _ = read_state_dict(d.teacher_checkpoint, prefer_ema=True)
    teacher = create_model(d.teacher, num_classes=num_classes, img_size=img_size, checkpoint=weights)
    teacher.requires_grad_(False)
    return teacher.eval()


def effective_lr(cfg: TrainConfig, global_batch: int) -> float:
    """``optim.lr`` if set, else ``lr_base x global_batch / lr_base_size`` (the papers' linear scaling)."""
    o = cfg.optim
    return o.lr if o.lr is not None else o.lr_base * global_batch / o.lr_base_size


def name_rule_param_groups(model: nn.Module, weight_decay: float, no_decay_names: list[str]) -> list[dict[str, Any]]:
    """Two groups: parameters whose name contains one of ``no_decay_names`` get no weight decay, all others
    (norms and biases included) get ``weight_decay`` -- mmcv 1.x ``DefaultOptimizerConstructor``'s paramwise ``custom_keys`` rule."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if any(k in name for k in no_decay_names) else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def build_optimizer(cfg: TrainConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """timm's optimizer factory: no weight decay on 1-D tensors and on ``model.no_weight_decay()``, or, with
    ``optim.no_decay_names``, on the parameters those names match (:func:`name_rule_param_groups`)."""
    o = cfg.optim
    extra: dict[str, Any] = {}
    if o.opt.lower() in ("adamw", "adam", "lamb", "nadamw", "lion", "adan"):
        extra["eps"] = o.eps
        if o.betas:
            extra["betas"] = tuple(o.betas)
    if o.no_decay_names is not None:
        if o.layer_decay is not None:
            raise InvalidValueError("optim.no_decay_names and optim.layer_decay cannot be combined; unset one of them")
        groups = name_rule_param_groups(model, o.weight_decay, o.no_decay_names)
        return create_optimizer_v2(groups, opt=o.opt, lr=lr, weight_decay=o.weight_decay, momentum=o.momentum,
                                   **extra)
    return create_optimizer_v2(model, opt=o.opt, lr=lr, weight_decay=o.weight_decay, momentum=o.momentum,
                               layer_decay=o.layer_decay, **extra)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, updates_per_epoch: int,
                    lr: float | None = None) -> Any:
    """Warm-up + cosine (or any timm schedule, e.g. the dense 1x ``multistep``), per epoch or per update.

    ``sched.warmup_steps`` gives the warm-up in updates and ``sched.warmup_ratio`` its start as a fraction
    of ``lr`` (mmdet's linear warm-up: 500 updates from 0.001 x lr).
    """
    s = cfg.sched
    warmup_epochs: float = s.warmup_epochs
    if s.warmup_steps is not None:
        if s.step_on != "update":
            raise InvalidValueError("sched.warmup_steps counts optimizer updates: it needs sched.step_on=update")
        warmup_epochs = s.warmup_steps / updates_per_epoch
    warmup_lr = s.warmup_lr if s.warmup_ratio is None or lr is None else s.warmup_ratio * lr
    # timm's multistep applies milestone m one schedule index early (t == m - 1); shift by one index so that
    # "decay after epoch 8" decays exactly from the first update of epoch 9, as mmdet's step policy does.
    one_index = 1.0 if s.step_on == "epoch" else 1.0 / updates_per_epoch
    sched, _ = create_scheduler_v2(
        optimizer, sched=s.sched, num_epochs=cfg.train.epochs, warmup_epochs=warmup_epochs, warmup_lr=warmup_lr,
        min_lr=s.min_lr, step_on_epochs=s.step_on == "epoch", updates_per_epoch=updates_per_epoch,
        decay_milestones=[m + one_index for m in s.decay_milestones], decay_rate=s.decay_rate,
    )
    return sched


def build_mixup(cfg: TrainConfig, num_classes: int) -> Any:
    """timm Mixup/CutMix with label smoothing, or None when both are off."""
    a = cfg.aug
    if not (a.mixup > 0 or a.cutmix > 0 or a.cutmix_minmax):
        return None
    if cfg.train.batch_size % 2:
        raise InvalidValueError(f"Mixup/CutMix pair images within a batch: train.batch_size must be even, got "
                                f"{cfg.train.batch_size} (or set aug.mixup=0 aug.cutmix=0)")
    return Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, cutmix_minmax=a.cutmix_minmax, prob=a.mixup_prob,
                 switch_prob=a.switch_prob, mode=a.mixup_mode, label_smoothing=a.smoothing, num_classes=num_classes)


def updates_per_epoch(batches: int, accum: int) -> int:
    """Optimizer updates in an epoch of ``batches`` micro-batches (a trailing partial group still updates)."""
    return max(1, math.ceil(batches / accum))
