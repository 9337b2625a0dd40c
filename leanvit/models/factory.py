"""The model factory: ``create_model(name, pretrained=..., checkpoint=..., **kwargs)``, the one way a model is
built from a name.

The importable builders (``from leanvit.models.shvit import shvit_s1; shvit_s1(pretrained=True)``) are
:func:`create_model` with the name filled in (:func:`register_variant` makes them), and ``leanvit.create_model``,
the commands, training, deployment and the analyses all call it. A name is looked up in leanvit's registry
first, then timm's: leanvit reuses the papers' names (``shvit_s1``, ``efficientvit_m0``), which timm also
has; write ``timm:shvit_s1`` for timm's port and ``leanvit:shvit_s1`` to be explicit.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import timm
from timm.models import get_pretrained_cfg
from torch import nn

from .._text import did_you_mean
from ..errors import InvalidValueError, UnknownNameError
from ._registry import ModelConfig, add_variant, build_variant, is_model, list_models
from .checkpoint import checkpoint_shape, load_checkpoint, load_weights, read_state_dict
from .weights import fetch

__all__ = ["create_model", "register_variant", "split_name", "REGISTRIES"]

# The registries a name can be prefixed with, in lookup order.
REGISTRIES = ("leanvit", "timm")

CheckpointSource = str | os.PathLike | Mapping[str, Any]


def register_variant(cls: type[nn.Module], cfg: ModelConfig) -> Callable[..., nn.Module]:
    """Register ``cfg.name`` as built by ``cls`` and return its importable builder:
    ``shvit_s1(pretrained=True, num_classes=10)`` is ``create_model("shvit_s1", pretrained=True, num_classes=10)``."""
    cfg = add_variant(cls, cfg)

    def build(pretrained: bool | str = False, **kwargs: Any) -> nn.Module:
        return create_model(cfg.name, pretrained, **kwargs)

    build.__name__ = build.__qualname__ = cfg.name
    build.__module__ = cls.__module__
    top1 = f", {cfg.top1} % ImageNet-1k top-1 in the paper" if cfg.top1 is not None else ""
    build.__doc__ = (f"{cfg.name}: {cls.__name__}({cfg.arch}) at {cfg.img_size} px{top1}. ``pretrained`` and the "
                     f"keyword arguments are leanvit.create_model's (num_classes, img_size, distillation, checkpoint, "
                     f"...; family arguments go to {cls.__name__}).")
    return build


def _unknown(name: str) -> UnknownNameError:
    candidates = list(dict.fromkeys(list_models() + timm.list_models()))  # shared names once
    hint = did_you_mean(name.split(":", 1)[-1], candidates, n=5)
    return UnknownNameError(
        f"unknown model {name!r}. It is not a leanvit model (leanvit.list_models()) nor a timm model "
        f"(timm.list_models()).{hint}"
    )


def split_name(name: str) -> tuple[str, str]:
    """``(registry, bare name)`` of ``name``, ``leanvit:NAME`` or ``timm:NAME``: leanvit's registry first, then
    timm's. Unknown names raise :class:`UnknownNameError` with close matches from both."""
    source, _, bare = name.rpartition(":")
    if source not in ("", *REGISTRIES):
        raise UnknownNameError(f"unknown registry prefix {source!r} in {name!r}: use 'leanvit:NAME' or 'timm:NAME'")
    if source in ("", "leanvit") and is_model(bare):
        return "leanvit", bare
    if source in ("", "timm") and bare in timm.list_models():
        return "timm", bare
    raise _unknown(name)


def create_model(
    name: str,
    pretrained: bool | str = False,
    *,
    checkpoint: CheckpointSource | None = None,
    pretrained_file: str | os.PathLike | None = None,
    weights_url: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    distillation: bool | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the model ``name`` (a leanvit variant, or a timm model: see :func:`split_name`), optionally with
    weights. Keyword arguments go to the model (leanvit: ``channels_last``, ``global_pool``, ``drop_rate`` and
    family arguments such as SepViT's ``window_token``).

    - ``pretrained=True`` (the default weight set) or ``pretrained="<tag>"`` (e.g. ``"in1k"``): the
      published weights, from ``LEANVIT_WEIGHTS_DIR``, the cache or a download
      (:func:`leanvit.models.weights.fetch`; ``weights_url`` is a mirror base URL, ``cache_dir`` the download
      folder). With another ``num_classes`` the body is loaded and the head stays fresh.
    - ``pretrained_file=PATH``: local weights in any supported layout, loaded the same way.
    - ``checkpoint``: a path or state dict loaded strictly (:func:`leanvit.load_checkpoint`); ``num_classes``
      and ``distillation`` left as None are taken from it (a fine-tuned checkpoint needs no other argument).
    - ``num_classes`` defaults to 1000, ``img_size`` to the native resolution (for timm models it is passed only
      to fixed-size models at another size: the others run at any size), ``distillation`` to False.

    The model is returned in training mode, as timm's are.
    """
    if (pretrained or pretrained_file is not None) and checkpoint is not None:
        raise InvalidValueError("pass either pretrained/pretrained_file (published weights) or checkpoint, not both")
    if (weights_url is not None or cache_dir is not None) and not pretrained:
        raise InvalidValueError("weights_url and cache_dir only apply to pretrained=True / pretrained='<tag>'")
    source, bare = split_name(name)
    if source == "timm":
        if distillation or weights_url is not None:
            raise InvalidValueError(f"distillation and weights_url are leanvit options; timm model {bare} has neither")
        pcfg = get_pretrained_cfg(bare)
        native = int(pcfg.input_size[-1]) if pcfg is not None and pcfg.input_size else 224
        # Fixed-size timm models (LeViT, EfficientFormerV2, EfficientViT-M) bake the size into position / bias
        # tables: they must be built for a non-native size.
        if img_size is not None and img_size != native and pcfg is not None and pcfg.fixed_input_size:
            kwargs["img_size"] = img_size
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        if pretrained_file is not None:  # timm's own file override
            overlay = kwargs.get("pretrained_cfg_overlay") or {}
            kwargs["pretrained_cfg_overlay"] = dict(overlay, file=str(pretrained_file))
        try:
            model = timm.create_model(f"{bare}.{pretrained}" if isinstance(pretrained, str) else bare,
                                      pretrained=bool(pretrained) or pretrained_file is not None, cache_dir=cache_dir,
                                      **kwargs)
        except TypeError as e:
            if "unexpected keyword argument" not in str(e):
                raise
            raise InvalidValueError(f"timm model {bare} does not accept {sorted(kwargs)}: {e}") from e
        if checkpoint is not None:
            load_weights(model, checkpoint)  # strictly, in the model's own layout, read safely
        return model

    tag = pretrained if isinstance(pretrained, str) else None
    state_dict = None
    if checkpoint is not None:
        state_dict, _ = read_state_dict(checkpoint)
        shape = checkpoint_shape(bare, state_dict)
        num_classes = shape["num_classes"] if num_classes is None else num_classes
        distillation = shape["distillation"] if distillation is None else distillation
    model = build_variant(bare, num_classes=1000 if num_classes is None else num_classes, img_size=img_size,
                          distillation=bool(distillation), pretrained_tag=tag if pretrained else None, **kwargs)
    if state_dict is not None:
        load_checkpoint(model, state_dict)
    elif pretrained or pretrained_file is not None:
        path = pretrained_file if pretrained_file is not None else fetch(
            bare, tag, base_url=weights_url, cache_dir=cache_dir)
        load_checkpoint(model, path, drop_head=True)
        model.pretrained_cfg = dict(model.pretrained_cfg, file=str(path))
        model.default_cfg = model.pretrained_cfg
    return model

