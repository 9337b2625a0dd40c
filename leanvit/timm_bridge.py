"""Opt-in bridge to timm's registry: every leanvit model as ``leanvit_<name>`` in timm.

Importing leanvit never touches timm's registry (timm already owns ``shvit_s1`` etc.);
:func:`register_with_timm` adds the entries on request.
"""
from __future__ import annotations

import sys
import types
from typing import Any

import timm.models._registry as timm_registry
from timm.models._features import FeatureGetterNet
from timm.models._registry import generate_default_cfgs
from torch import nn

from .models import get_config, list_models
from .weights import create_model

__all__ = ["register_with_timm"]

def register_with_timm(prefix: str = "leanvit_") -> list[str]:
    """Opt-in: register every leanvit model in timm's registry as ``<prefix><name>``.

    After this, ``timm.create_model('leanvit_shvit_s1')`` and timm's scripts work on leanvit models.
    Returns the registered timm names. Calling it twice is harmless.
    """

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

    return generate_default_cfgs({name: cfg})[name]
