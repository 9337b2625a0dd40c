"""Parameter and MAC counting, the papers' convention: fused eval model, batch 1, MACs = FLOPs / 2.

``torch.utils.flop_counter.FlopCounterMode`` counts matmuls, convolutions and attention (SDPA);
norms, softmax and element-wise ops are excluded, which is why SHViT comes out ~0.1M MACs under fvcore.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from .fusion import fuse

__all__ = ["count_params", "count_macs", "flop_formulas"]


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:  # type: ignore[no-untyped-def]
    return flop_counter.sdpa_flop_count(query, key, value)  # shapes: FlopCounterMode passes shapes, not tensors


def flop_formulas() -> dict:
    """Formulas ``FlopCounterMode(custom_mapping=...)`` needs beyond torch's own: on CPU, SDPA dispatches
    to a fused kernel the counter does not know, counted like SDPA. Passed per count, never registered
    globally (importing leanvit leaves torch's flop registry alone)."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or op in flop_counter.flop_registry:
        return {}
    return {op: _cpu_sdpa_flops}


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BN running statistics are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _img_hw(img_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(img_size, int):
        return img_size, img_size
    return int(img_size[0]), int(img_size[1])


@torch.no_grad()
def count_macs(model: nn.Module, img_size: int | tuple[int, int] | None = None, fuse_first: bool = True) -> int:
    """Multiply-accumulates of one forward at batch 1 on the (BN-fused) eval model.

    ``img_size`` defaults to the model's native resolution (e.g. 256 for shvit_s4).
    """
    if img_size is None:
        cfg = getattr(model, "leanvit_cfg", None)
        img_size = cfg.img_size if cfg is not None else 224
    if fuse_first:
        model = fuse(model)
    was_training = model.training
    model.eval()
    h, w = _img_hw(img_size)
    param = next(model.parameters())
    x = torch.zeros(1, getattr(model, "in_chans", 3), h, w, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False, custom_mapping=flop_formulas())
    with counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2
