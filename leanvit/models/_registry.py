"""Model registry: names, default configs and ``create_model``.

leanvit keeps its own registry so that importing it never touches timm's (timm already registers
``shvit_s*`` / ``efficientvit_m*``); :func:`register_with_timm` is the opt-in bridge.
"""
from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from torch import nn

__all__ = ["ModelConfig", "register_model", "list_models", "get_config", "create_model", "register_with_timm"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """Everything a user or tool needs to know about a registered variant."""

    name: str
    family: str
    img_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000
    top1: float | None = None
    paper: str = ""
    params: int | None = None
    macs_m: float | None = None
    timm_name: str | None = None
    fixed_input_size: bool = False
    first_conv: str = ""
    classifier: str = "head"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_pretrained_cfg(self) -> dict[str, Any]:
        """timm-style ``pretrained_cfg`` dict (what timm's data helpers read)."""
        cfg = asdict(self)
        cfg.update(
            input_size=(3, self.img_size, self.img_size),
            architecture=self.name,
            test_input_size=(3, self.img_size, self.img_size),
        )
        return cfg


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], ModelConfig]] = {}


def register_model(cfg: ModelConfig) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``fn(**kwargs) -> nn.Module`` under ``cfg.name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if cfg.name in _REGISTRY:
            raise ValueError(f"model name {cfg.name!r} is registered twice")
        _REGISTRY[cfg.name] = (fn, cfg)
        return fn

    return wrap


def _ensure_loaded() -> None:
    # Importing the family modules runs their @register_model decorators.
    from . import efficientvit_m, shvit  # noqa: F401

    try:
        from . import sepvit  # noqa: F401
    except ImportError:  # pragma: no cover - SepViT lands separately
        pass


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a glob ``pattern`` or ``family``."""
    import fnmatch

    _ensure_loaded()
    return sorted(
        n for n, (_, c) in _REGISTRY.items()
        if fnmatch.fnmatch(n, pattern) and (family is None or c.family == family)
    )


def _unknown(name: str) -> KeyError:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return KeyError(f"unknown model {name!r}.{hint} See leanvit.list_models() for all {len(_REGISTRY)} names.")


def is_model(name: str) -> bool:
    """True when ``name`` is a registered leanvit model."""
    _ensure_loaded()
    return name in _REGISTRY


def get_config(name: str) -> ModelConfig:
    """Default config (resolution, crop, mean/std, paper numbers) of a registered model."""
    _ensure_loaded()
    if name not in _REGISTRY:
        raise _unknown(name)
    return _REGISTRY[name][1]


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    img_size: int | tuple[int, int] | None = None,
    distillation: bool = False,
    checkpoint: Any = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model; optionally load ``checkpoint`` (path or state dict, any known layout).

    ``img_size`` defaults to the variant's native resolution; it only matters for models whose
    parameters depend on it (EfficientViT-M window clamp and biases, SepViT per-window tokens).
    """
    _ensure_loaded()
    if name not in _REGISTRY:
        raise _unknown(name)
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0 (0 removes the head), got {num_classes!r}")
    fn, cfg = _REGISTRY[name]
    model = fn(num_classes=num_classes, img_size=img_size or cfg.img_size, distillation=distillation, **kwargs)
    model.leanvit_cfg = cfg
    model.pretrained_cfg = cfg.to_pretrained_cfg()
    model.default_cfg = model.pretrained_cfg
    if checkpoint is not None:
        from ..checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint)
    return model


def register_with_timm(prefix: str = "leanvit_") -> list[str]:
    """Opt-in: register every leanvit model in timm's registry as ``<prefix><name>``.

    After this, ``timm.create_model('leanvit_shvit_s1')`` and timm's scripts work on leanvit models.
    Returns the registered timm names. Calling it twice is harmless.
    """
    import sys
    import types

    import timm.models._registry as timm_registry

    done = []
    module = sys.modules.get("leanvit.timm_models")
    if module is None:
        module = types.ModuleType("leanvit.timm_models")
        module.default_cfgs = {}
        sys.modules["leanvit.timm_models"] = module
    for name in list_models():
        tname = prefix + name
        done.append(tname)
        if tname in timm_registry._model_entrypoints:
            continue
        cfg = get_config(name)

        def entry(pretrained: bool = False, _name: str = name, **kw: Any) -> nn.Module:
            if pretrained:
                raise ValueError("leanvit has no hosted weights; pass checkpoint=PATH or use leanvit.load_checkpoint")
            for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
                kw.pop(k, None)
            features_only = kw.pop("features_only", False)
            feature_cls = kw.pop("feature_cls", "getter")
            out_indices = kw.pop("out_indices", None)
            model = create_model(_name, **kw)
            if not features_only:
                return model
            if feature_cls not in ("getter", None):
                raise ValueError(f"leanvit models support feature_cls='getter' only, got {feature_cls!r}")
            from timm.models._features import FeatureGetterNet

            indices = out_indices if out_indices is not None else tuple(range(len(model.feature_info)))
            return FeatureGetterNet(model, out_indices=indices)

        entry.__name__ = tname
        entry.__module__ = "leanvit.timm_models"
        setattr(module, tname, entry)
        tcfg = {k: v for k, v in cfg.to_pretrained_cfg().items() if k in _TIMM_CFG_KEYS}
        module.default_cfgs[tname] = _timm_default_cfg(tname, tcfg)
        timm_registry.register_model(entry)
    return done


_TIMM_CFG_KEYS = {
    "input_size", "test_input_size", "crop_pct", "interpolation", "mean", "std", "num_classes",
    "first_conv", "classifier", "fixed_input_size",
}


def _timm_default_cfg(name: str, cfg: dict[str, Any]) -> Any:
    from timm.models._registry import generate_default_cfgs

    return generate_default_cfgs({name: cfg})[name]
