"""DeiT distillation: the loss's limiting cases, and training with leanvit and timm teachers."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import leanvit
from leanvit.train import evaluate, load_config, read_checkpoint, train
from leanvit.train.engine import DistillationLoss

from helpers.training import TINY


class _Fixed(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_distillation_loss_limits() -> None:
    g = torch.Generator().manual_seed(0)
    cls, dist, teacher = (torch.randn(6, 5, generator=g) for _ in range(3))
    y = torch.randint(0, 5, (6,), generator=g)
    ce = nn.CrossEntropyLoss()
    x = torch.zeros(6, 3, 8, 8)
    # alpha = 0: only the class head's loss
    only_base = DistillationLoss(ce, _Fixed(teacher), "hard", 0.0, 1.0)(x, (cls, dist), y)
    assert only_base.item() == pytest.approx(ce(cls, y).item())
    # hard, alpha = 1: cross-entropy of the distillation head against the teacher's argmax
    hard = DistillationLoss(ce, _Fixed(teacher), "hard", 1.0, 1.0)(x, (cls, dist), y)
    assert hard.item() == pytest.approx(F.cross_entropy(dist, teacher.argmax(1)).item())
    # soft: zero when the distillation head equals the teacher, positive otherwise, scaled by tau^2
    assert DistillationLoss(ce, _Fixed(dist), "soft", 1.0, 3.0)(x, (cls, dist), y).item() == pytest.approx(0, abs=1e-6)
    assert DistillationLoss(ce, _Fixed(teacher), "soft", 1.0, 2.0)(x, (cls, dist), y).item() > 0
    with pytest.raises(ValueError, match="distillation=True"):
        DistillationLoss(ce, _Fixed(teacher), "soft", 0.5, 1.0)(x, cls, y)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_distilled_training_with_leanvit_teacher(kind: str, tmp_path: Path) -> None:
    teacher = tmp_path / "teacher.safetensors"
    leanvit.save_checkpoint(leanvit.create_model("efficientvit_m0", num_classes=4, img_size=32), teacher)
    sets = dict(TINY, output=str(tmp_path / "run"), **{
        "model.name": "shvit_s1", "distill.type": kind, "distill.teacher": "efficientvit_m0",
        "distill.teacher_checkpoint": str(teacher), "train.max_steps": 2})
    summary = train(load_config("quick", sets))
    assert summary["global_step"] == 2
    ck = read_checkpoint(tmp_path / "run" / "last.ckpt")
    assert "head_dist.linear.weight" in ck["model"]
    # evaluation builds the distilled model and averages its two heads
    res = evaluate("shvit_s1", tmp_path / "run" / "last.ckpt", "fake", workers=0, progress=False)
    assert res["images"] == TINY["data.fake_val_size"]


@pytest.mark.slow
def test_distilled_training_with_timm_teacher(tmp_path: Path) -> None:
    teacher = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet10t", num_classes=4).state_dict(), teacher)
    sets = dict(TINY, output=str(tmp_path / "run"), **{
        "distill.type": "hard", "distill.teacher": "resnet10t", "distill.teacher_checkpoint": str(teacher),
        "train.max_steps": 2})
    assert train(load_config("quick+distill", sets))["global_step"] == 2
