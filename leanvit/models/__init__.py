"""Model families, their registry, fusion and counting.

Importing this package registers every variant (the family modules declare them); each variant is
also an importable builder, e.g. ``from leanvit.models.shvit import shvit_s1``.
"""
from . import efficientvit_m, sepvit, shvit
from ._base import LeanViTModel
from ._layouts import Layout
from ._pretrained import PretrainedWeights, WeightFile
from ._registry import ModelConfig, create_model, family_class, get_config, is_model, list_models
from .counting import count_macs, count_params
from .fusion import fuse
from .signal import logit_agreement, signal_images, signal_weights_

__all__ = [
    "LeanViTModel", "Layout", "ModelConfig", "PretrainedWeights", "WeightFile", "create_model", "family_class",
    "get_config", "is_model", "list_models", "count_macs", "count_params", "fuse", "signal_weights_", "signal_images",
    "logit_agreement",
    "shvit", "efficientvit_m", "sepvit",
]
