"""Dataset-level segmentation metrics from one accumulated confusion matrix (mmseg 0.x ``mean_iou``: nanmean over classes).

IoU_c = TP / (TP + FP + FN) summed over the whole set (not averaged per image); mIoU and mAcc are the
means over classes that occur (nanmean, as mmseg); aAcc is the overall pixel accuracy. Pixels whose
label is ``ignore_index`` count for nothing. Across processes the matrices are summed before scoring.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from ..errors import InvalidValueError

__all__ = ["SegConfusion"]


class SegConfusion:
    """Accumulates a ``num_classes x num_classes`` int64 confusion matrix (rows = label, cols = prediction)."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise InvalidValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.matrix.zero_()

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Add one batch: ``pred`` class indices (or logits with classes on dim 1) and ``label``, same size."""
        if pred.dim() == label.dim() + 1:
            pred = pred.argmax(dim=1)
        if pred.shape != label.shape:
            raise InvalidValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in size; "
                                    "resize the logits to the label size before scoring")
        pred, label = pred.reshape(-1).long().cpu(), label.reshape(-1).long().cpu()
        valid = label != self.ignore_index
        pred, label = pred[valid], label[valid]
        bad = (label < 0) | (label >= self.num_classes)
        if bad.any():
            raise InvalidValueError(f"label value(s) {sorted(set(label[bad].tolist()))[:5]} outside 0..{self.num_classes - 1} "
                                    f"(and not the ignore index {self.ignore_index}); check num_classes / reduce_zero_label")
        if pred.numel() and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise InvalidValueError(f"predicted class outside 0..{self.num_classes - 1}")
        counts = torch.bincount(label * self.num_classes + pred, minlength=self.num_classes ** 2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes)

    def all_reduce(self) -> None:
        """Sum the matrices of all processes (no-op without an initialised process group)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            backend = torch.distributed.get_backend()
            device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
            m = self.matrix.to(device)
            torch.distributed.all_reduce(m)
            self.matrix = m.cpu()

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, object]:
        """mIoU, mAcc, aAcc (fractions in [0, 1]) and the per-class IoU / accuracy (NaN: class absent)."""
        m = self.matrix.double()
        tp = m.diag()
        label_count, pred_count = m.sum(1), m.sum(0)
        union = label_count + pred_count - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        acc = torch.where(label_count > 0, tp / label_count.clamp(min=1), torch.full_like(tp, math.nan))
        total = label_count.sum().item()
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        return {
            "mIoU": _nanmean(iou), "mAcc": _nanmean(acc), "aAcc": tp.sum().item() / total if total else math.nan,
            "IoU": dict(zip(names, iou.tolist())), "Acc": dict(zip(names, acc.tolist())), "pixels": int(total),
        }


def _nanmean(values: torch.Tensor) -> float:
    keep = ~values.isnan()
    return values[keep].mean().item() if keep.any() else math.nan
