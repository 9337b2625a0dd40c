"""``create_model``: a registered model, optionally with weights from a checkpoint file.

This is where the registry (``leanvit.models``) and the loader (``leanvit.checkpoint``) meet, so that
neither imports the other.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from torch import nn

from . import models
from .checkpoint import load_checkpoint

__all__ = ["create_model"]


def create_model(
    name: str,
    *,
    checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model (``leanvit.models.create_model``: ``num_classes``, ``img_size``,
    ``distillation``, ``channels_last`` and family arguments) and load ``checkpoint`` (a path or a state
    dict in any supported layout, see :func:`leanvit.load_checkpoint`) into it."""
    model = models.create_model(name, **kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model
