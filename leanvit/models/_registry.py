"""Model registry: the registered variants, their typed configs and their family classes.

A family module declares its variants with :func:`leanvit.models.factory.register_variant`, which records
them here and returns an importable builder (``from leanvit.models.shvit import shvit_s1``). leanvit keeps
its own registry, so importing it never touches timm's (timm already registers ``shvit_s*`` /
``efficientvit_m*``); ``leanvit.timm_bridge`` is the opt-in bridge.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn

from .._text import did_you_mean
from ..errors import InvalidValueError, UnknownNameError
from ._pretrained import PretrainedWeights

__all__ = ["ModelConfig", "add_variant", "list_models", "get_config", "is_model", "family_class", "build_variant",
           "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """Everything a user or tool needs to know about a registered variant.

    ``family`` is filled in from the family class's ``family`` attribute at registration.
    ``arch`` is the family's typed architecture config (e.g. ``SHViTArch``): its fields are the
    constructor arguments that define the variant. ``params``, ``params_fused`` and ``macs`` (at
    ``img_size``, batch 1, fused) are counts recorded for the variant and verified against a fresh count
    by the tests, so tables print without building anything; ``macs_m`` is the paper's MACs (millions).
    """

    name: str
    family: str = ""
    arch: Any = None
    img_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000
    top1: float | None = None
    paper: str = ""
    params: int | None = None
    params_fused: int | None = None
    macs_m: float | None = None
    macs: int | None = None
    fixed_input_size: bool = False
    first_conv: str = ""
    classifier: str = "head"
    # Total stride of the last feature map (pretrained_cfg's pool_size is input_size / output_stride, ceiled).
    output_stride: int = 32
    crop_mode: str = "center"
    license: str = ""
    paper_ids: str = ""
    origin_url: str = ""
    # Published weight sets, the default first; weights_note says why there are none.
    weights: tuple[PretrainedWeights, ...] = ()
    weights_note: str = ""

    @property
    def pretrained_tags(self) -> list[str]:
        """Tags of the published weight sets (``shvit_s1.in1k`` has tag ``in1k``), the default first."""
        return [w.tag for w in self.weights]

    def weight_set(self, tag: str | None = None) -> PretrainedWeights:
        """The weight set ``tag`` (default: the first); a clear error when there is none."""
        if not self.weights:
            raise InvalidValueError(f"{self.name} has no published weights. {self.weights_note}".strip())
        if tag is None:
            return self.weights[0]
        tag = tag.removeprefix(self.name + ".")
        for w in self.weights:
            if w.tag == tag:
                return w
        raise InvalidValueError(f"{self.name} has no weight set {tag!r}; known tags: {', '.join(self.pretrained_tags)}")

    def to_pretrained_cfg(self, tag: str | None = None) -> dict[str, Any]:
        """timm-style ``pretrained_cfg`` for weight set ``tag`` (the first by default; a weightless config for
        a model without published weights) with every key timm's own models carry."""
        weights = self.weight_set(tag) if (tag or self.weights) else None
        img_size = weights.img_size if weights else self.img_size
        side = math.ceil(img_size / self.output_stride)
        official = next((f for f in weights.files if f.origin == "official release"), None) if weights else None
        return dict(
            url=official.url if official else "",
            hf_hub_id=weights.hf_hub_id if weights else "",
            file=None,
            architecture=self.name,
            tag=weights.tag if weights else "",
            num_classes=weights.num_classes if weights else self.num_classes,
            input_size=(3, img_size, img_size),
            test_input_size=(3, img_size, img_size),
            fixed_input_size=self.fixed_input_size,
            pool_size=(side, side),
            crop_pct=self.crop_pct,
            crop_mode=self.crop_mode,
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
            first_conv=self.first_conv,
            classifier=self.classifier,
            license=(weights.license if weights else self.license),
            paper_ids=self.paper_ids,
            paper_name=self.paper,
            origin_url=self.origin_url,
            notes=() if weights else (self.weights_note,) if self.weights_note else (),
        )


@dataclass(frozen=True)
class _Entry:
    cls: type[nn.Module]
    cfg: ModelConfig


_REGISTRY: dict[str, _Entry] = {}
_FAMILIES: dict[str, type[nn.Module]] = {}


def add_variant(cls: type[nn.Module], cfg: ModelConfig) -> ModelConfig:
    """Record ``cfg.name`` as built by ``cls``; returns the config with ``family`` taken from the class
    (``cls.family``, the one place a family's name is declared)."""
    family = getattr(cls, "family", "")
    if not family:
        raise InvalidValueError(f"{cls.__name__} needs a `family` class attribute to register {cfg.name!r}")
    if cfg.family not in ("", family):
        raise InvalidValueError(f"{cfg.name!r} says family {cfg.family!r} but {cls.__name__}.family is {family!r}")
    if cfg.name in _REGISTRY:
        raise InvalidValueError(f"model name {cfg.name!r} is registered twice")
    if _FAMILIES.setdefault(family, cls) is not cls:
        raise InvalidValueError(f"family {family!r} is already implemented by {_FAMILIES[family].__name__}")
    cfg = replace(cfg, family=family)
    _REGISTRY[cfg.name] = _Entry(cls, cfg)
    return cfg


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a glob ``pattern`` or ``family``."""
    return sorted(
        n for n, e in _REGISTRY.items()
        if fnmatch.fnmatch(n, pattern) and (family is None or e.cfg.family == family)
    )


def _unknown(name: str) -> UnknownNameError:
    hint = did_you_mean(name, _REGISTRY, cutoff=0.5)
    return UnknownNameError(f"unknown model {name!r}.{hint} See leanvit.list_models() for all {len(_REGISTRY)} names.")


def is_model(name: str) -> bool:
    """True when ``name`` is a registered leanvit model."""
    return name in _REGISTRY


def get_config(name: str) -> ModelConfig:
    """Default config (architecture, resolution, crop, mean/std, paper numbers) of a registered model."""
    if name not in _REGISTRY:
        raise _unknown(name)
    return _REGISTRY[name].cfg


def family_class(family: str) -> type[nn.Module]:
    """The model class that implements ``family`` (its checkpoint layouts are class attributes)."""
    if family not in _FAMILIES:
        raise UnknownNameError(f"unknown model family {family!r}; known: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[family]


def build_variant(
    name: str,
    *,
    num_classes: int = 1000,
    img_size: int | tuple[int, int] | None = None,
    distillation: bool = False,
    channels_last: bool | str = "auto",
    pretrained_tag: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A registered variant with random weights: the internal step of :func:`leanvit.create_model` (which adds
    weights, timm names and arguments taken from a checkpoint); the checkpoint loader builds with it too.

    ``img_size`` defaults to the variant's native resolution; it only matters for models whose
    parameters depend on it (EfficientViT-M window clamp and biases, SepViT per-window tokens).
    ``channels_last`` is the memory-format policy (see ``LeanViTModel.set_channels_last``).
    ``pretrained_tag`` picks the weight set whose ``pretrained_cfg`` the model carries.
    """
    if name not in _REGISTRY:
        raise _unknown(name)
    if not isinstance(num_classes, int) or num_classes < 0:
        raise InvalidValueError(f"num_classes must be an int >= 0 (0 removes the head), got {num_classes!r}")
    entry = _REGISTRY[name]
    cfg = entry.cfg
    try:
        model = entry.cls(**asdict(cfg.arch), num_classes=num_classes, img_size=img_size or cfg.img_size,
                          distillation=distillation, **kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise InvalidValueError(f"{name} ({entry.cls.__name__}) does not accept {sorted(kwargs)}: {e}") from e
    model.set_channels_last(channels_last)
    model.leanvit_cfg = cfg
    model.pretrained_cfg = cfg.to_pretrained_cfg(pretrained_tag)
    model.default_cfg = model.pretrained_cfg
    return model
