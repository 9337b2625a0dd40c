"""What a model name means for tables and plots (its registry, family label, native size, paper top-1), and
how to fuse any model for a runtime.

Names are resolved as :func:`leanvit.create_model` resolves them (``leanvit.models.factory.split_name``:
leanvit's registry first, then timm's; ``timm:NAME`` / ``leanvit:NAME`` force one), which also builds them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from timm.models import get_pretrained_cfg
from timm.utils import reparameterize_model
from torch import nn

from .models import (LeanViTModel, count_macs, count_params, create_model, fuse, get_config, is_model, list_models,
                     split_name)

__all__ = [
    "ModelSpec", "resolve_model", "fuse_model", "count_unfused_norms",
    "TIMM_TOP1", "zoo_table",
]


# ImageNet-1k top-1 of timm baselines (best in1k-only tag at the native resolution), from the
# timm's results/ tables (results-imagenet.csv). name -> (family label, top-1).
TIMM_TOP1: dict[str, tuple[str, float]] = {
    "efficientvit_m0": ("EfficientViT-M (timm)", 63.3),
    "efficientvit_m2": ("EfficientViT-M (timm)", 70.8),
    "efficientvit_m4": ("EfficientViT-M (timm)", 74.3),
    "efficientvit_m5": ("EfficientViT-M (timm)", 77.1),
    "shvit_s1": ("SHViT (timm)", 72.8),
    "shvit_s2": ("SHViT (timm)", 75.2),
    "shvit_s3": ("SHViT (timm)", 77.4),
    "shvit_s4": ("SHViT (timm)", 79.4),
    "levit_128s": ("LeViT", 76.5),
    "levit_128": ("LeViT", 78.5),
    "levit_256": ("LeViT", 81.5),
    "mobilenetv3_large_100": ("MobileNetV3", 76.3),
    "mobilenetv4_conv_small": ("MobileNetV4", 73.8),
    "mobilenetv4_conv_medium": ("MobileNetV4", 79.1),
    "mobilenetv4_hybrid_medium": ("MobileNetV4", 80.4),
    "repvit_m0_9": ("RepViT", 79.1),
    "repvit_m1_1": ("RepViT", 81.3),
    "fastvit_t8": ("FastViT", 77.2),
    "fastvit_t12": ("FastViT", 80.4),
    "efficientformerv2_s0": ("EfficientFormerV2", 76.1),
    "efficientformerv2_s1": ("EfficientFormerV2", 79.7),
    "starnet_s1": ("StarNet", 73.5),
    "starnet_s4": ("StarNet", 78.8),
    "mobilevitv2_050": ("MobileViTv2", 70.2),
    "mobilevitv2_100": ("MobileViTv2", 78.1),
    "mobileone_s0": ("MobileOne", 71.4),
    "mobileone_s1": ("MobileOne", 75.8),
    "swiftformer_xs": ("SwiftFormer", 75.6),
    "fasternet_t0": ("FasterNet", 71.7),
    "efficientvit_b0": ("EfficientViT-B (MIT)", 71.4),
    "efficientvit_b1": ("EfficientViT-B (MIT)", 79.3),
    "tiny_vit_5m_224": ("TinyViT", 79.2),
    "edgenext_xx_small": ("EdgeNeXt", 71.9),
    "ghostnetv3_100": ("GhostNetV3", 76.9),
}

_LEANVIT_FAMILY_LABEL = {
    "shvit": "SHViT (leanvit)", "efficientvit_m": "EfficientViT-M (leanvit)", "sepvit": "SepViT (leanvit)",
}


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model name: where it comes from, its family, native resolution and paper top-1."""

    name: str  # the bare registry name
    source: str  # "leanvit" or "timm"
    family: str  # legend label for plots
    img_size: int  # native (default) input side
    top1: float | None = None

    @property
    def label(self) -> str:
        """Name as shown in tables: timm models that shadow a leanvit name keep their prefix."""
        return f"timm:{self.name}" if self.source == "timm" and is_model(self.name) else self.name

    @property
    def ref(self) -> str:
        """The name with its registry (``leanvit:shvit_s1``, ``timm:shvit_s1``): what ``create_model`` takes to
        build exactly this model."""
        return f"{self.source}:{self.name}"


def resolve_model(name: str) -> ModelSpec:
    """Look ``name`` up (``leanvit:`` / ``timm:`` prefixes force a registry); unknown names raise
    :class:`~leanvit.errors.UnknownNameError` with suggestions. Build it with ``create_model(spec.ref, ...)``."""
    source, bare = split_name(name)
    if source == "leanvit":
        cfg = get_config(bare)
        return ModelSpec(bare, "leanvit", _LEANVIT_FAMILY_LABEL.get(cfg.family, cfg.family), cfg.img_size, cfg.top1)
    pcfg = get_pretrained_cfg(bare)
    side = int(pcfg.input_size[-1]) if pcfg is not None and pcfg.input_size else 224
    family, top1 = TIMM_TOP1.get(bare, (bare.split("_")[0], None))
    return ModelSpec(bare, "timm", family, side, top1)


def fuse_model(model: nn.Module, target: str = "torch") -> nn.Module:
    """Inference form: a deep copy with BatchNorms folded / branches reparameterized.

    leanvit models use ``leanvit.fuse`` with ``target`` (the runtime that will run it:
    "torch", "openvino" or "onnx"; see :func:`leanvit.deploy.routes.target_for`); everything else timm's
    ``reparameterize_model`` (``fuse()`` / ``reparameterize()`` / ``switch_to_deploy()`` per module),
    whatever the target.
    """
    if isinstance(model, LeanViTModel):
        return fuse(model, target=target).eval()
    return reparameterize_model(model.eval()).eval()  # deep-copies by default


def count_unfused_norms(model: nn.Module) -> int:
    """BatchNorm modules left after fusion (0 for fully folded models)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def zoo_table(names: Sequence[str] | None = None, img_size: int | None = None,
              measure: bool = False) -> list[dict[str, Any]]:
    """One row per variant: params (unfused / fused), MACs, resolution, paper MACs and top-1.

    At the native resolution the counts recorded in the registry are used (the tests check them against
    a fresh count); ``measure=True``, or another ``img_size``, builds each model and counts.
    """
    rows = []
    for name in names or list_models():
        cfg = get_config(name)
        size = img_size or cfg.img_size
        row = dict(model=name, family=cfg.family, img_size=size, native=size == cfg.img_size,
                   paper_macs_m=cfg.macs_m, top1=cfg.top1, measured=measure or size != cfg.img_size)
        if row["measured"]:
            model = create_model(name).eval()
            row.update(params_m=count_params(model) / 1e6, params_fused_m=count_params(fuse(model)) / 1e6,
                       macs_m=count_macs(model, size) / 1e6)
        else:
            row.update(params_m=cfg.params / 1e6, params_fused_m=cfg.params_fused / 1e6, macs_m=cfg.macs / 1e6)
        rows.append(row)
    return rows
