"""leanvit: memory-efficient vision transformers (SHViT, EfficientViT-M, SepViT).

Paper-exact models that load official and timm checkpoints, fold into fast inference graphs,
export to ONNX / OpenVINO / TorchScript, and train from one CPU to many GPUs.

The names below are imported on first use (PEP 562), so ``import leanvit`` and the command line's
``--help`` stay fast and importing leanvit has no side effects.
"""
from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that provides it
_EXPORTS = {
    "ModelConfig": "leanvit.models",
    "get_config": "leanvit.models",
    "is_model": "leanvit.models",
    "list_models": "leanvit.models",
    "count_macs": "leanvit.models",
    "count_params": "leanvit.models",
    "fuse": "leanvit.models",
    "create_model": "leanvit.models",
    "load_checkpoint": "leanvit.models",
    "save_checkpoint": "leanvit.models",
    "convert_state_dict": "leanvit.models",
    "read_state_dict": "leanvit.models",
    "CheckpointError": "leanvit.models",
    "register_with_timm": "leanvit.timm_bridge",
    "list_weights": "leanvit.models",
    "WeightsError": "leanvit.models",
}

__all__ = ["__version__", *_EXPORTS]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
