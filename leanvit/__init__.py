"""leanvit: memory-efficient vision transformers (SHViT, EfficientViT-M, SepViT).

Paper-exact models that load official and timm checkpoints, fold into fast inference graphs,
export to ONNX / OpenVINO / TorchScript, and train from one CPU to many GPUs.

The names below are imported on first use (PEP 562), so ``import leanvit`` and the command line's
``--help`` stay fast and importing leanvit has no side effects.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "ModelConfig": "leanvit.models",
    "get_config": "leanvit.models",
    "is_model": "leanvit.models",
    "list_models": "leanvit.models",
    "count_macs": "leanvit.models",
    "count_params": "leanvit.models",
    "fuse": "leanvit.models",
    "create_model": "leanvit.weights",
    "load_checkpoint": "leanvit.checkpoint",
    "save_checkpoint": "leanvit.checkpoint",
    "convert_state_dict": "leanvit.checkpoint",
    "read_state_dict": "leanvit.checkpoint",
    "CheckpointError": "leanvit.checkpoint",
    "register_with_timm": "leanvit.timm_bridge",
    "list_weights": "leanvit.weights",
    "WeightsError": "leanvit.weights",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'leanvit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
