"""Model families, their registry, the model factory, checkpoints, published weights, fusion and counting.

Importing this package registers every variant (the family modules declare them); each variant is
also an importable builder, e.g. ``from leanvit.models.shvit import shvit_s1``, which is
:func:`create_model` with its name filled in.
"""
from . import efficientvit_m, sepvit, shvit
from ._base import LeanViTModel
from ._layouts import Layout
from ._pretrained import PretrainedWeights, WeightFile
from ._registry import ModelConfig, family_class, get_config, is_model, list_models
from .checkpoint import (CheckpointError, convert_state_dict, load_checkpoint, load_weights, read_state_dict,
                         save_checkpoint)
from .counting import count_macs, count_params
from .factory import create_model, split_name
from .fusion import fuse
from .signal import logit_agreement, signal_images, signal_weights_
from .weights import WeightsError, fetch, list_weights

__all__ = [
    "LeanViTModel", "Layout", "ModelConfig", "PretrainedWeights", "WeightFile", "create_model", "split_name",
    "family_class", "get_config", "is_model", "list_models", "count_macs", "count_params", "fuse", "signal_weights_",
    "signal_images", "logit_agreement", "CheckpointError", "convert_state_dict", "load_checkpoint", "load_weights",
    "read_state_dict", "save_checkpoint", "WeightsError", "fetch", "list_weights",
    "shvit", "efficientvit_m", "sepvit",
]
