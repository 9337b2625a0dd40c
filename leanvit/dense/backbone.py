"""Backbone adapter: any leanvit classifier as a multi-level feature extractor for detection and segmentation.

``create_backbone(name)`` builds the variant the way the official dense code does (ysj9909/SHViT downstream/shvit.py,
microsoft/Cream EfficientViT/downstream/efficientvit.py, liwei109/SepViT detection/sepvit.py);
each family's ``dense_settings`` (a :class:`~leanvit.models._dense.DenseSettings` class attribute in its file)
say what changes. SHViT: nothing (it runs at any input size); EfficientViT-M: built for 448 px, so every stage
has a 7x7 window as in the official detectors; SepViT: the official dense network (``dense_form``: zero window
tokens, pointwise attention in every block, a learnable LayerNorm per level on the main path) with the official
drop-path rates, its classifier's final norm unused.

``DenseBackbone.train()`` keeps every BatchNorm of the body in eval mode when ``norm_eval`` is set (the
official "norm_eval": running statistics stay the ImageNet ones, the affine terms still train).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..models.checkpoint import CheckpointError, load_checkpoint, read_state_dict
from ..errors import InvalidValueError
from ..models import create_model, family_class, get_config

__all__ = ["DenseBackbone", "create_backbone", "dense_model_kwargs", "backbone_state_dict"]


def dense_model_kwargs(name: str) -> dict[str, Any]:
    """The ``create_model`` keyword arguments of the official dense backbone of ``name`` (its family's
    ``dense_settings``)."""
    return family_class(get_config(name).family).dense_settings.kwargs_for(name)


def backbone_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone part of a dense checkpoint, prefix stripped; a classification state dict is returned as is.

    Understands mmdet/mmseg checkpoints (``backbone.*``) and leanvit detectors (``backbone.body.model.*``).
    """
    for prefix in ("backbone.body.model.", "backbone."):
        if any(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return dict(state_dict)


class DenseBackbone(nn.Module):
    """A leanvit model's stage outputs as ``OrderedDict`` ``{"0": finest, "1": ..., ...}`` of contiguous NCHW maps.

    Attributes: ``model`` (the leanvit body, no classifier), ``out_indices``, ``out_channels`` and ``strides``
    (one per output). ``frozen_stages``: -1 freezes nothing, 0 the stem, k the stem and the first k stages
    (mmdet's convention): frozen parts get ``requires_grad=False`` and stay in eval mode.
    """

    def __init__(self, model: nn.Module, out_indices: list[int] | tuple[int, ...] | None = None,
                 norm_eval: bool = True, frozen_stages: int = -1) -> None:
        super().__init__()
        num_stages = len(model.feature_info)
        indices = list(range(num_stages)) if out_indices is None else [int(i) for i in out_indices]
        bad = [i for i in indices if not -num_stages <= i < num_stages]
        if bad or not indices:
            raise InvalidValueError(f"out_indices {out_indices!r} must be non-empty stage indices in [0, {num_stages - 1}]")
        indices = sorted({i % num_stages for i in indices})
        if not -1 <= frozen_stages <= num_stages:
            raise InvalidValueError(f"frozen_stages must be in [-1, {num_stages}] (-1 = nothing frozen), got {frozen_stages}")
        self.model = model
        self.out_indices = indices
        self.out_channels = [int(model.feature_info[i]["num_chs"]) for i in indices]
        self.strides = [int(model.feature_info[i]["reduction"]) for i in indices]
        self.norm_eval = norm_eval
        self.frozen_stages = frozen_stages
        for module in self._frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules: list[nn.Module] = [self.model.patch_embed]
        modules += list(self.model.stages[: self.frozen_stages])
        norms = getattr(self.model, "feature_norms", None)
        if norms is not None:
            modules += list(norms[: self.frozen_stages])
        return modules

    def train(self, mode: bool = True) -> "DenseBackbone":
        """Train mode, except frozen stages and (with ``norm_eval``) every BatchNorm of the body."""
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
            if self.norm_eval:
                for module in self.model.modules():
                    if isinstance(module, _BatchNorm):
                        module.eval()
        return self

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Images (B, 3, H, W) -> the selected stage maps, finest first."""
        maps = self.model.forward_intermediates(x, indices=self.out_indices, intermediates_only=True)
        return OrderedDict((str(i), m.contiguous()) for i, m in enumerate(maps))


def _load_backbone_weights(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any]) -> None:
    raw, _ = read_state_dict(checkpoint)
    sd = backbone_state_dict(raw)
    # Parameters the dense settings add start fresh from a classification checkpoint (mmdet loads non-strictly).
    settings = model.dense_settings
    may_be_fresh = any(settings.is_fresh(k) for k in model.state_dict())
    report = load_checkpoint(model, sd, strict=not may_be_fresh)
    wrong = [k for k in report["missing"] if not settings.is_fresh(k)] + list(report["unexpected"])
    if wrong:
        raise CheckpointError(
            f"the checkpoint does not fit {model.leanvit_cfg.name}: {', '.join(wrong[:4])} ...; pass a checkpoint "
            "of the same variant (ImageNet classification or a dense checkpoint with 'backbone.' keys)"
        )


def create_backbone(
    name: str,
    *,
    out_indices: list[int] | tuple[int, ...] | None = None,
    norm_eval: bool = True,
    frozen_stages: int = -1,
    checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
    **model_kwargs: Any,
) -> DenseBackbone:
    """The official dense backbone of leanvit variant ``name`` (see the module docstring).

    ``checkpoint``: ImageNet weights in any layout ``leanvit.load_checkpoint`` reads, or a dense checkpoint
    (mmdet ``backbone.*`` keys, or a leanvit detector) of which only the backbone is loaded.
    ``model_kwargs`` override the dense settings (e.g. ``drop_path_rate``). Turn ``norm_eval`` off for
    randomly initialised backbones: frozen default statistics (mean 0, var 1) normalise nothing.
    """
    kwargs = {**dense_model_kwargs(name), **model_kwargs}
    model = create_model(name, num_classes=0, **kwargs)
    if checkpoint is not None:
        _load_backbone_weights(model, checkpoint)
    for unused in model.dense_settings.unused_modules:  # they would hold parameters without gradients under DDP
        setattr(model, unused, nn.Identity())
    return DenseBackbone(model, out_indices=out_indices, norm_eval=norm_eval, frozen_stages=frozen_stages)
