"""Losses and evaluation shared by training and ``leanvit eval``.

- :func:`build_criterion`: SoftTargetCrossEntropy under Mixup/CutMix (smoothing is inside Mixup),
  label-smoothing CE otherwise.
- :class:`DistillationLoss`: DeiT's soft (KL at temperature tau) or hard (teacher argmax) loss on the
  student's distillation head; the class head keeps the base loss.
- :func:`evaluate_model`: top-1 / top-5 / loss over a loader, summed exactly across processes.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn
from tqdm import tqdm

from ..errors import InvalidValueError, OperationError
from .distributed import DistInfo, all_reduce_sum

__all__ = ["NonFiniteLossError", "build_criterion", "DistillationLoss", "autocast", "amp_dtype", "evaluate_model"]


class NonFiniteLossError(OperationError):
    """The loss became NaN or infinite; training stops before the bad update is applied."""


def build_criterion(mixup_active: bool, smoothing: float) -> nn.Module:
    """The classification loss matching the target format (soft targets under Mixup)."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()


class DistillationLoss(nn.Module):
    """DeiT distillation: ``(1 - alpha) * base(cls) + alpha * distill(dist, teacher)``.

    The student must return ``(cls_logits, dist_logits)`` in training (``create_model(...,
    distillation=True)``). ``soft``: KL divergence at temperature ``tau`` scaled by tau^2; ``hard``:
    cross-entropy against the teacher's argmax.
    """

    def __init__(self, base: nn.Module, teacher: nn.Module, kind: str, alpha: float, tau: float) -> None:
        super().__init__()
        if kind not in ("soft", "hard"):
            raise InvalidValueError(f"distillation type must be soft or hard, got {kind!r}")
        self.base = base
        self.teacher = teacher
        self.kind = kind
        self.alpha = alpha
        self.tau = tau

    def forward(self, inputs: torch.Tensor, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        if not isinstance(outputs, (tuple, list)):
            raise InvalidValueError("distillation needs a student built with distillation=True that returns "
                                    "(class_logits, dist_logits) in train mode")
        cls_out, dist_out = outputs
        base = self.base(cls_out, targets)
        with torch.no_grad():
            teacher_out = self.teacher(inputs)
            if isinstance(teacher_out, (tuple, list)):
                teacher_out = teacher_out[0]
        if self.kind == "soft":
            t = self.tau
            student = F.log_softmax(dist_out.float() / t, dim=1)
            target = F.log_softmax(teacher_out.float() / t, dim=1)
            distill = F.kl_div(student, target, reduction="sum", log_target=True) * (t * t) / dist_out.numel()
        else:
            distill = F.cross_entropy(dist_out, teacher_out.argmax(dim=1))
        return base * (1 - self.alpha) + distill * self.alpha


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``amp`` (none | bf16 | fp16 | auto) on ``device``; None means fp32."""
    if amp == "none":
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None  # CPUs without bf16 units run autocast slower than fp32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise InvalidValueError("train.amp=fp16 needs a CUDA device; use bf16 on CPU")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast for ``dtype`` or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader: Iterable,
    info: DistInfo,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, float]:
    """top1 / top5 (percent), mean CE loss, image count and model images/s over ``loader`` (all processes)."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = loss_sum = n = 0.0
    model_time = 0.0
    skipped: list[str] = []
    bar = tqdm(loader, desc=desc, disable=None if progress and info.is_main else True, leave=False, dynamic_ncols=True)
    for images, targets, bad in bar:
        skipped += bad
        images = images.to(info.device, non_blocking=True)
        targets = targets.to(info.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        with autocast(info.device, dtype):
            logits = model(images)
        if info.device.type == "cuda":
            torch.cuda.synchronize(info.device)
        model_time += time.perf_counter() - t0
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(targets[:, None])
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        n += targets.numel()
    model.train(was_training)
    correct1, correct5, loss_sum, n, model_time = all_reduce_sum([correct1, correct5, loss_sum, n, model_time], info)
    if n == 0:
        raise InvalidValueError("the evaluation split has no images")
    return dict(
        top1=100.0 * correct1 / n, top5=100.0 * correct5 / n, loss=loss_sum / n, images=int(n),
        # model time is summed over processes, which run concurrently: per-process mean x world size.
        images_per_s=n / max(model_time / info.world_size, 1e-9), skipped=skipped,
    )
