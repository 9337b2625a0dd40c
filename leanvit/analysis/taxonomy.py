"""Op categories for the time breakdown: compute (matmul, dense conv, fused attention) vs memory-bound.

By name (EfficientViT Sec. 2.1's reading): reshaping / copies, element-wise arithmetic, normalisation,
softmax, activations, pooling / reductions, concatenation and gathers are memory-bound. Depthwise
convolution is its own category so both readings stay possible (the "roofline" reading, by arithmetic
intensity, calls it memory-bound). Views are listed apart, at ~0 cost. An op not listed here is an error,
never a silent "other": extend :data:`OP_CATEGORIES` instead.
"""
from __future__ import annotations
from ..errors import UnknownNameError

__all__ = ["OP_CATEGORIES", "COMPUTE", "MEMORY_BOUND", "category_of", "UnknownOpError"]

_BY_CATEGORY = {
    "matmul": "linear addmm mm bmm matmul baddbmm addbmm einsum",
    "conv": "conv2d convolution _convolution mkldnn_convolution conv1d _slow_conv2d_forward thnn_conv2d",  # groups == 1 (dense)
    "dwconv": "",  # convolution with groups == channels: decided from the arguments
    "attention_fused": "scaled_dot_product_attention _scaled_dot_product_flash_attention_for_cpu "
                       "_scaled_dot_product_attention_math _scaled_dot_product_efficient_attention "
                       "_scaled_dot_product_flash_attention",
    "copy_reshape": "copy_ clone contiguous reshape to _to_copy roll constant_pad_nd pad flip repeat "
                    "repeat_interleave _unsafe_view expand_as",
    "concat": "cat stack concat",
    "index": "index index_select gather select_scatter slice_scatter index_put_ embedding",
    "elementwise": "add add_ sub sub_ mul mul_ div div_ neg rsub sqrt rsqrt pow exp log clamp clamp_ "
                   "masked_fill masked_fill_ where fill_ zero_ zeros zeros_like ones ones_like full "
                   "full_like fmod remainder abs addcmul lerp floor_divide clamp_min clamp_min_ isneginf",
    "norm": "layer_norm native_layer_norm group_norm native_group_norm batch_norm "
            "_native_batch_norm_legit_no_training native_batch_norm instance_norm rms_norm",
    "softmax": "softmax _softmax _safe_softmax log_softmax",
    "activation": "relu relu_ gelu silu silu_ hardswish hardswish_ hardsigmoid hardsigmoid_ sigmoid sigmoid_ "
                  "tanh leaky_relu threshold",
    "pool_reduce": "mean sum adaptive_avg_pool2d avg_pool2d max_pool2d max_pool2d_with_indices amax amin "
                   "max min argmax norm linalg_vector_norm",
    "view": "view permute transpose t flatten unflatten split split_with_sizes chunk unbind select slice "
            "narrow expand squeeze unsqueeze as_strided alias detach unsafe_split numpy_T _reshape_alias "
            "unfold view_as movedim lift_fresh empty empty_like empty_strided resolve_conj resolve_neg "
            "dropout feature_dropout "
            # bookkeeping (scalars, checks): no data moved
            "_local_scalar_dense item equal is_same_size _nnpack_available all scalar_tensor resize_ as_strided_",
}

OP_CATEGORIES: dict[str, str] = {op: cat for cat, ops in _BY_CATEGORY.items() for op in ops.split()}
COMPUTE = ("matmul", "conv", "attention_fused")
MEMORY_BOUND = ("copy_reshape", "concat", "index", "elementwise", "norm", "softmax", "activation", "pool_reduce")
_DUNDER = {"__add__": "add", "__radd__": "add", "__iadd__": "add_", "__mul__": "mul", "__rmul__": "mul",
           "__imul__": "mul_", "__sub__": "sub", "__rsub__": "rsub", "__truediv__": "div", "__matmul__": "matmul",
           "__getitem__": "slice", "__neg__": "neg", "__pow__": "pow", "__setitem__": "index_put_"}


class UnknownOpError(UnknownNameError):
    """An op the taxonomy does not list."""


def base_name(name: str) -> str:
    """'aten::add.Tensor' / 'add' / '__add__' -> 'add'."""
    name = name.split("::")[-1].split(".")[0]
    return _DUNDER.get(name, name)


def category_of(name: str, groups: int | None = None, channels: int | None = None) -> str:
    """Category of an op; a convolution with ``groups`` equal to its input ``channels`` (> 1) is ``dwconv``."""
    base = base_name(name)
    cat = OP_CATEGORIES.get(base)
    if cat is None:
        raise UnknownOpError(f"op {name!r} is not in leanvit.analysis.taxonomy.OP_CATEGORIES: add it to a category")
    if cat == "conv" and groups is not None and groups > 1 and groups == channels:
        return "dwconv"
    return cat
