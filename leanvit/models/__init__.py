"""Model families and the registry."""
from ._registry import ModelConfig, create_model, get_config, is_model, list_models, register_with_timm

__all__ = ["ModelConfig", "create_model", "get_config", "is_model", "list_models", "register_with_timm"]
