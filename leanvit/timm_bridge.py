"""Opt-in bridge to timm's registry: every leanvit model as ``leanvit_<name>`` in timm.

Importing leanvit never touches timm's registry (timm already owns ``shvit_s1`` etc.);
:func:`register_with_timm` adds the entries on request. They build through timm's own
``build_model_with_cfg`` with one pretrained cfg per published weight set (``leanvit_shvit_s1.in1k``), so
``features_only`` / ``out_indices`` / ``feature_cls``, ``pretrained_cfg_overlay``, ``checkpoint_path`` and
timm's data config behave as for timm's own models. ``pretrained=True`` fetches the weights with
:func:`leanvit.models.weights.fetch` (cache, ``LEANVIT_WEIGHTS_DIR``, mirrors) and timm's loader reads them through
:func:`leanvit.load_checkpoint`, which converts any supported layout.
"""
from __future__ import annotations

import functools
import sys
import types
from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, is_model, register_model, resolve_pretrained_cfg
from torch import nn

from .errors import InvalidValueError
from .models import LeanViTModel, create_model, family_class, fetch, get_config, list_models, load_checkpoint

__all__ = ["register_with_timm", "TIMM_MODULE"]

# The module timm records for the entries (timm.list_models(module=...) filters by its last component).
TIMM_MODULE = "leanvit.timm_models"
_HOOK_FEATURE_CLASSES = ("list", "dict", "hook")


def _converted_state_dict(state_dict: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """timm's ``pretrained_filter_fn``: load any supported layout into ``model`` with leanvit's loader (layout
    detection, resolution adapters, distillation head) and hand timm the model's own state dict."""
    load_checkpoint(model, state_dict, drop_head=True)
    return model.state_dict()


def _check_feature_cls(name: str, feature_cls: Any) -> None:
    # Hook-based wrappers read stage modules' raw outputs; a family that post-processes them in _stage_out
    # (SepViT: NHWC stages, per-level LayerNorm) gives correct maps only through forward_intermediates.
    cls = family_class(get_config(name).family)
    if isinstance(feature_cls, str) and feature_cls.lower() in _HOOK_FEATURE_CLASSES \
            and cls._stage_out is not LeanViTModel._stage_out:
        raise InvalidValueError(f"{name}: feature_cls={feature_cls!r} would return its raw NHWC stage outputs; use "
                                "feature_cls='getter' (the default for leanvit models)")


def _entrypoint(name: str, timm_name: str) -> Any:
    arch = get_config(name).arch
    num_levels = len(getattr(arch, "depth", None) or arch.depths)  # one feature level per stage

    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
        cfg = resolve_pretrained_cfg(timm_name, pretrained_cfg=kwargs.pop("pretrained_cfg", None),
                                     pretrained_cfg_overlay=overlay)
        _check_feature_cls(name, kwargs.get("feature_cls"))
        if pretrained and not (cfg.file or cfg.state_dict):
            cfg.file = str(fetch(name, cfg.tag or None, cache_dir=kwargs.pop("cache_dir", None)))
        kwargs.pop("cache_dir", None)
        # timm builds through leanvit's factory, then sets the pretrained cfg and loads the weights itself
        return build_model_with_cfg(
            functools.partial(create_model, name),
            timm_name,
            pretrained,
            pretrained_cfg=cfg,
            pretrained_filter_fn=_converted_state_dict,
            feature_cfg=dict(out_indices=tuple(range(num_levels)), feature_cls="getter", flatten_sequential=True),
            **kwargs,
        )

    entry.__name__ = entry.__qualname__ = timm_name
    entry.__module__ = TIMM_MODULE
    entry.__doc__ = f"timm entry point of leanvit's {name} (see leanvit.get_config({name!r}))."
    return entry


def _timm_cfgs(name: str, timm_name: str) -> dict[str, dict[str, Any]]:
    cfg = get_config(name)
    tags = cfg.pretrained_tags or [None]
    return {(f"{timm_name}.{tag}" if tag else timm_name): cfg.to_pretrained_cfg(tag) for tag in tags}


def register_with_timm(prefix: str = "leanvit_") -> list[str]:
    """Opt-in: register every leanvit model in timm's registry as ``<prefix><name>``.

    After this, ``timm.create_model('leanvit_shvit_s1', pretrained=True, features_only=True)``, timm's data
    config helpers and timm's train / validate / benchmark scripts (``--model leanvit_shvit_s1``) work on
    leanvit models. Returns the registered timm names. Calling it twice is harmless.
    """
    module = sys.modules.get(TIMM_MODULE)
    if module is None:
        module = types.ModuleType(TIMM_MODULE)
        module.default_cfgs = {}
        sys.modules[TIMM_MODULE] = module
    done = []
    for name in list_models():
        timm_name = prefix + name
        done.append(timm_name)
        if is_model(timm_name):
            continue
        entry = _entrypoint(name, timm_name)
        setattr(module, timm_name, entry)
        # timm's register_model reads the module's default_cfgs (tags, which one has weights).
        module.default_cfgs.update(generate_default_cfgs(_timm_cfgs(name, timm_name)))
        register_model(entry)
    return done
