"""Published weight sets of the registered variants, and the timm ``pretrained_cfg`` built from them.

Data only: a family declares its weight sets next to its variants (``ModelConfig.weights``);
``leanvit.weights`` downloads, verifies, caches and loads them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from ._registry import ModelConfig

__all__ = ["WeightFile", "PretrainedWeights", "build_pretrained_cfg", "TIMM_CFG_KEYS"]

# The keys of timm's PretrainedCfg that leanvit fills (timm.models.PretrainedCfg accepts all of them).
TIMM_CFG_KEYS = (
    "url", "hf_hub_id", "file", "architecture", "tag", "num_classes", "input_size", "test_input_size",
    "fixed_input_size", "pool_size", "crop_pct", "crop_mode", "interpolation", "mean", "std", "first_conv",
    "classifier", "license", "paper_ids", "paper_name", "origin_url", "notes",
)


@dataclass(frozen=True)
class WeightFile:
    """One downloadable copy of a weight set.

    ``filename`` is the name in the download cache and in ``LEANVIT_WEIGHTS_DIR`` (unique across all
    models); ``sha256`` is checked after every download when known.
    """

    url: str
    filename: str
    origin: str
    sha256: str | None = None

    @property
    def url_path(self) -> str:
        """The URL without scheme and host: what a ``LEANVIT_WEIGHTS_URL`` mirror serves it under."""
        return urlparse(self.url).path.lstrip("/")


@dataclass(frozen=True)
class PretrainedWeights:
    """A trained weight set of one variant: ``<model>.<tag>``, its copies (tried in order) and its numbers.

    ``hf_hub_id`` names timm's Hugging Face copy (also one of ``files``); ``top1`` is the ImageNet-1k
    top-1 the paper reports for these weights at ``img_size``.
    """

    tag: str
    files: tuple[WeightFile, ...]
    img_size: int = 224
    top1: float | None = None
    license: str = ""
    hf_hub_id: str = ""
    num_classes: int = 1000


def official_and_timm(model: str, tag: str, official_url: str, license: str, top1: float | None,
                      img_size: int = 224) -> PretrainedWeights:
    """A weight set published as an official release file and re-hosted by timm on the Hugging Face hub
    (the same trained weights; timm's copy is converted to timm's key layout, read as ``timm``)."""
    hub_id = f"timm/{model}.{tag}"
    return PretrainedWeights(
        tag=tag, img_size=img_size, top1=top1, license=license, hf_hub_id=hub_id,
        files=(
            WeightFile(official_url, official_url.rsplit("/", 1)[-1], "official release"),
            WeightFile(f"https://huggingface.co/{hub_id}/resolve/main/model.safetensors",
                       f"{model}.{tag}.safetensors", "timm hub copy"),
        ),
    )


def build_pretrained_cfg(cfg: ModelConfig, tag: str | None = None) -> dict[str, Any]:
    """timm-style ``pretrained_cfg`` of ``cfg`` for weight set ``tag`` (the first one by default; a
    weightless config for a model without published weights), with every key of :data:`TIMM_CFG_KEYS`."""
    weights = cfg.weight_set(tag) if (tag or cfg.weights) else None
    img_size = weights.img_size if weights else cfg.img_size
    side = math.ceil(img_size / cfg.output_stride)
    official = next((f for f in weights.files if f.origin == "official release"), None) if weights else None
    return dict(
        url=official.url if official else "",
        hf_hub_id=weights.hf_hub_id if weights else "",
        file=None,
        architecture=cfg.name,
        tag=weights.tag if weights else "",
        num_classes=weights.num_classes if weights else cfg.num_classes,
        input_size=(3, img_size, img_size),
        test_input_size=(3, img_size, img_size),
        fixed_input_size=cfg.fixed_input_size,
        pool_size=(side, side),
        crop_pct=cfg.crop_pct,
        crop_mode=cfg.crop_mode,
        interpolation=cfg.interpolation,
        mean=cfg.mean,
        std=cfg.std,
        first_conv=cfg.first_conv,
        classifier=cfg.classifier,
        license=(weights.license if weights else cfg.license),
        paper_ids=cfg.paper_ids,
        paper_name=cfg.paper,
        origin_url=cfg.origin_url,
        notes=() if weights else (cfg.weights_note,) if cfg.weights_note else (),
    )
