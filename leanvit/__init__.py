"""leanvit: memory-efficient vision transformers (SHViT, EfficientViT-M, SepViT).

Paper-exact models that load official and timm checkpoints, fold into fast inference graphs,
export to ONNX / OpenVINO / TorchScript, and train from one CPU to many GPUs.
"""
from .bench.flops import count_macs, count_params
from .checkpoint import CheckpointError, convert_state_dict, load_checkpoint, save_checkpoint
from .deploy.fuse import fuse
from .models import ModelConfig, create_model, get_config, is_model, list_models, register_with_timm

__version__ = "0.1.0"

__all__ = [
    "__version__", "ModelConfig", "create_model", "get_config", "is_model", "list_models", "register_with_timm",
    "load_checkpoint", "save_checkpoint", "convert_state_dict", "CheckpointError", "fuse", "count_params", "count_macs",
]
