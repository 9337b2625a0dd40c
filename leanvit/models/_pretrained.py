"""Published weight sets of the registered variants (data types).

Data only: a family declares its weight sets next to its variants (``ModelConfig.weights``);
``leanvit.models.weights`` downloads, verifies and caches them; ``leanvit.create_model`` loads them.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

__all__ = ["WeightFile", "PretrainedWeights", "official_and_timm"]


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
