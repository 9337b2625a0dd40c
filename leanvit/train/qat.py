"""Quantisation-aware fine-tuning (``finetune.qat``): the trainer fine-tunes a PT2E fake-quantised graph.

The model is exported in training mode and prepared by ``prepare_qat_pt2e`` with the int8 scheme of the
deployment (``xnnpack``: ExecuTorch's symmetric per-channel int8): every conv / linear sees its BN-folded
weights and its inputs rounded to int8 while the float weights learn. Everything else is the ordinary
trainer (data, recipe, loss, checkpoints, resume).

The checkpoint holds the float model's tensors under their usual names plus the fake-quant state
(``activation_post_process_*``), which float loads skip (``leanvit.models.checkpoint``). ``leanvit quantize
--checkpoint best.ckpt`` converts the learned int8 graph for the scheme's own runtime (xnnpack:
``executorch``) and post-training-quantises the fine-tuned weights for the others.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..models.checkpoint import QAT_STATE_PREFIX
from ..deploy.capabilities import require
from ..deploy.pt2e import QAT_QUANTIZERS, prepare_qat_graph
from ..errors import InvalidValueError, OperationError

__all__ = ["FakeQuantModel"]


def _check_norms(model: nn.Module) -> None:
    # PT2E's conv-BN folding divides by gamma / std: a zero gamma (an untrained, zero-initialised residual
    # branch) turns the whole output into NaN.
    zero = [name for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and bool((m.weight == 0).any())]
    if zero:
        raise InvalidValueError(f"quantisation-aware fine-tuning needs trained BatchNorm scales; {len(zero)} norm(s) have "
                                f"zero gamma (first: {zero[0]}): start from a trained checkpoint (finetune.checkpoint)")


class FakeQuantModel(nn.Module):
    """``model`` exported for training and prepared for QAT; its state dict is the float model's plus the
    fake-quant state, so checkpoints keep leanvit's key names."""

    def __init__(self, model: nn.Module, img_size: int, scheme: str) -> None:
        super().__init__()
        if scheme not in QAT_QUANTIZERS:
            raise InvalidValueError(f"finetune.qat must be one of {', '.join(QAT_QUANTIZERS)}, got {scheme!r}")
        _check_norms(model)
        self.float_keys = tuple(model.state_dict())
        self.num_classes = getattr(model, "num_classes", None)
        self.scheme = scheme
        self.graph = prepare_qat_graph(model, img_size, scheme)  # in training mode, as self.training says

    def forward(self, x: torch.Tensor) -> Any:
        """The fake-quantised model's output (in training mode: with a distillation head, both heads')."""
        return self.graph(x)

    def train(self, mode: bool = True) -> FakeQuantModel:
        """Switch the exported graph's BatchNorm / dropout ops (graphs have no module modes of their own)."""
        if mode == self.training:  # each switch rewrites the graph (~2 s): skip the no-ops
            return self
        pt2e = require("torchao.quantization.pt2e", "quantize", "quantisation-aware fine-tuning")
        self.training = mode
        (pt2e.move_exported_model_to_train if mode else pt2e.move_exported_model_to_eval)(self.graph)
        return self

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The float model's tensors and the fake-quant state (not the graph's re-creatable constants)."""
        full = self.graph.state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        keep = set(self.float_keys)
        return {k: v for k, v in full.items()
                if k[len(prefix):] in keep or k[len(prefix):].startswith(QAT_STATE_PREFIX)}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load what :meth:`state_dict` wrote; strict about the float tensors and the fake-quant state."""
        result = self.graph.load_state_dict(state_dict, strict=False, assign=assign)
        saved = set(self.state_dict())
        missing = [k for k in result.missing_keys if k in saved]
        if strict and (missing or result.unexpected_keys):
            raise OperationError(f"QAT state does not fit this model: {len(missing)} missing (first: {missing[:3]}), "
                                 f"{len(result.unexpected_keys)} unexpected (first: {result.unexpected_keys[:3]})")
        return result
