"""Memory-efficient training: rebuild cheap activations in backward instead of storing them.

In ``conv -> BN -> ReLU -> conv`` autograd keeps the conv output ``y`` (for BN's backward) and the
ReLU output ``relu(BN(y))`` (for ReLU's backward and the next conv's weight gradient). Two kinds of
saved tensors are rebuilt instead of stored:

* **BN outputs and their ReLUs**: one per-channel multiply-add (and a max) of ``y``; batch statistics
  are those of the forward pass (the idea of In-Place Activated BatchNorm, Rota Bulo et al., CVPR
  2018, without its invertibility requirement).
* **Outputs of cheap convolutions** (at most ``CHEAP_CONV_MACS`` multiply-adds per output value:
  depthwise convs, the first stem conv on the RGB image when it reads and writes one memory format):
  one conv of an input that is kept anyway for the conv's own weight gradient.

Every rebuild runs the kernel of the forward pass on the same values, so gradients and BN running
statistics are bit-identical (tested on CPU, fp32 and bf16 autocast). ``ConvNorm`` registers what it
produces while a :class:`RecomputeNormActivations` context is active; the context's saved-tensor
hooks replace each saved tensor that is registered, or the ReLU of one, by a recipe. ``LeanViTModel``
enters the context for its own training forward passes.

Independently of the context, :func:`grad_in_own_layout` gives each conv-BN output's incoming gradient the
output's memory format (batch-norm backward on mixed NCHW / NHWC operands is several times slower).
"""
from __future__ import annotations

import contextvars
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from ..errors import OperationError

__all__ = ["RecomputeNormActivations", "conv_norm_recomputable", "grad_in_own_layout", "CHEAP_CONV_MACS"]

# Multiply-adds per output value up to which a conv output is rebuilt rather than stored: depthwise
# 3x3 (9), the stem's first conv on RGB (27), EfficientViT-M's per-head qkv convs (16-32). Measured
# (batch 64, 224, CPU): 160 also rebuilds 1x1 convs of <= 160 channels and saves ~10% more peak
# memory, but costs ~12% of efficientvit_m0's training throughput; 32 costs ~1-2%.
CHEAP_CONV_MACS = 32
# Smaller conv outputs are stored: rebuilding them costs a fixed per-call overhead for little memory
# (efficientvit_m0's 24 per-head 5x5 depthwise q convs hold 5 MB in all at batch 64).
MIN_REBUILT_CONV_VALUES = 1 << 18

_ACTIVE: contextvars.ContextVar["RecomputeNormActivations | None"] = contextvars.ContextVar(
    "leanvit_recompute", default=None
)


def _unpack(packed: Any) -> torch.Tensor:
    if not isinstance(packed, _Recipe):
        return packed
    if torch.is_grad_enabled():  # backward(create_graph=True): a rebuilt tensor has no history
        raise OperationError(
            "double backward (create_graph=True) through activations that leanvit rebuilds in backward is "
            "not supported: call model.set_recompute_norm_activations(False) (or --set "
            "model.recompute_activations=false) for higher-order gradients"
        )
    return packed.rebuild()


class _Recipe:
    """A saved activation rebuilt on demand; the result is kept until every save that refers to it
    has been unpacked (a second backward with ``retain_graph`` rebuilds it again)."""

    __slots__ = ("pending", "value")

    def __init__(self) -> None:
        self.pending = 0
        self.value: torch.Tensor | None = None

    def compute(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def rebuild(self) -> torch.Tensor:
        if self.value is None:
            self.value = self.compute()
        value = self.value
        self.pending -= 1
        if self.pending <= 0:
            self.value = None
        return value


class _NormRecipe(_Recipe):
    """``act(y * alpha + beta)`` with the forward pass's per-channel terms."""

    __slots__ = ("source", "alpha", "beta", "relu", "dtype")

    def __init__(self, source: Any, alpha: torch.Tensor, beta: torch.Tensor, relu: bool, dtype: torch.dtype):
        super().__init__()
        self.source, self.alpha, self.beta, self.relu, self.dtype = source, alpha, beta, relu, dtype

    def compute(self) -> torch.Tensor:
        # An eval-mode batch norm with mean 0, var 1, eps 0 is exactly ``y * alpha + beta`` in the
        # kernel the training pass used (one fused multiply-add per value).
        alpha = self.alpha
        out = torch.batch_norm(
            _unpack(self.source), alpha, self.beta, torch.zeros_like(alpha), torch.ones_like(alpha),
            False, 0.0, 0.0, False,
        )
        return (out.relu_() if self.relu else out).to(self.dtype)


def _conv(conv: nn.Conv2d, x: torch.Tensor, channels_last: bool, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``conv(x)``; NHWC weights when ``channels_last`` (the output follows them); weight and input
    cast to ``dtype`` when given (autocast is off in backward: cast as it did in forward)."""
    weight = conv.weight if dtype is None else conv.weight.to(dtype)
    if channels_last:
        weight = weight.contiguous(memory_format=torch.channels_last)
    if dtype is not None:
        x = x.to(dtype)
    return conv._conv_forward(x, weight, conv.bias)


class _ConvRecipe(_Recipe):
    """``conv(x)`` (no bias) in the forward pass's dtype and layout."""

    __slots__ = ("source", "conv", "channels_last", "dtype")

    def __init__(self, source: Any, conv: nn.Conv2d, channels_last: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.source, self.conv, self.channels_last, self.dtype = source, conv, channels_last, dtype

    def compute(self) -> torch.Tensor:
        with torch.no_grad():
            return _conv(self.conv, _unpack(self.source), self.channels_last, self.dtype)


class RecomputeNormActivations:
    """Context manager: activations registered inside it are rebuilt in backward instead of stored.
    Re-entrant uses are no-ops. Registries hold only what autograd keeps anyway (or recipes)."""

    def __init__(self) -> None:
        self._norms: dict[Any, tuple[Any, nn.BatchNorm2d, torch.Tensor, torch.Tensor]] = {}
        self._convs: dict[Any, _ConvRecipe] = {}
        self._recipes: dict[tuple[Any, bool], _Recipe] = {}
        self._hooks: Any = None
        self._token: contextvars.Token | None = None

    def register_conv(self, y: torch.Tensor, x: torch.Tensor, conv: nn.Conv2d, channels_last: bool) -> None:
        """``y == conv(x)`` (no bias); call before anything saves ``y``."""
        if y.grad_fn is not None:
            self._convs[y.grad_fn] = _ConvRecipe(self._pack(x), conv, channels_last, y.dtype)

    def register_norm(self, out: torch.Tensor, y: torch.Tensor, bn: nn.BatchNorm2d, mean: torch.Tensor,
                      invstd: torch.Tensor) -> None:
        """``out == bn(y)`` in training mode with batch statistics ``mean`` / ``invstd``."""
        if out.grad_fn is not None:
            # not counted as a read here: each recipe made from this entry counts itself
            self._norms[out.grad_fn] = (self._recipe_for(y) or y, bn, mean, invstd)

    def _recipe_for(self, t: torch.Tensor) -> _Recipe | None:
        fn = t.grad_fn
        if fn is None:
            return None
        conv = self._convs.get(fn)
        if conv is not None:
            return conv
        relu = False
        entry = self._norms.get(fn)
        if entry is None:
            if fn.name() != "ReluBackward0":
                return None
            fn = fn.next_functions[0][0]
            entry = self._norms.get(fn)
            if entry is None:
                return None
            relu = True
        key = (fn, relu)
        recipe = self._recipes.get(key)
        if recipe is None:
            source, bn, mean, invstd = entry
            alpha, beta = _affine_terms(bn, mean, invstd)  # only for outputs that are saved
            if isinstance(source, _Recipe):
                source.pending += 1  # one more reader of y's rebuild
            recipe = self._recipes[key] = _NormRecipe(source, alpha, beta, relu, t.dtype)
        return recipe

    def _pack(self, t: torch.Tensor) -> Any:
        recipe = self._recipe_for(t)
        if recipe is None:
            return t
        recipe.pending += 1
        return recipe

    def __enter__(self) -> "RecomputeNormActivations":
        if _ACTIVE.get() is not None:
            return self
        self._token = _ACTIVE.set(self)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._token is None:
            return
        self._hooks.__exit__(*exc)
        _ACTIVE.reset(self._token)
        self._token = None
        self._norms.clear()  # packed recipes keep what they need
        self._convs.clear()
        self._recipes.clear()


def _cheap_to_rebuild(conv: nn.Conv2d, x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether ``y == conv(x)`` is rebuilt in backward rather than stored: at most ``CHEAP_CONV_MACS`` per output
    value, at least ``MIN_REBUILT_CONV_VALUES`` values, and ``x`` in the memory format of ``y``. The stem's first
    conv of an NHWC model reads the caller's NCHW image batch, and that conv is not cheap (measured at batch 64 @
    224, 1 thread, AVX2 and AVX-512 kernels alike: 34-36 ms against 7-8 ms from an NHWC batch), so its output is
    stored (+0.4 MB per image for efficientvit_m0; its training step 4-5 % faster on AVX2, NOTES.md entry 18)."""
    kh, kw = conv.kernel_size
    channels_last = torch.channels_last
    return (conv.bias is None and conv.in_channels // conv.groups * kh * kw <= CHEAP_CONV_MACS
            and y.numel() >= MIN_REBUILT_CONV_VALUES
            and x.is_contiguous(memory_format=channels_last) == y.is_contiguous(memory_format=channels_last))


def _layout_of(t: torch.Tensor) -> torch.memory_format | None:
    """The one dense memory format ``t`` is in, or None (neither, or both: a 1x1 map or a single channel)."""
    nchw, nhwc = t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last)
    return None if nchw == nhwc else torch.contiguous_format if nchw else torch.channels_last


def grad_in_own_layout(out: torch.Tensor) -> torch.Tensor:
    """``out``, whose incoming gradient is given ``out``'s memory format before anything uses it.

    Gradients reach a BatchNorm in the layout of whatever consumed its output: a channel slice's backward (an
    EfficientViT-M head split) or a view builds an NCHW gradient for an NHWC activation. ATen's batch-norm backward
    on mixed layouts runs a strided fallback 5-10x slower than either layout alone (batch 64, 1 thread, AVX2 and
    AVX-512 alike: 0.7-0.9 ms against 0.11 ms at 192 x 4 x 4); one copy of the gradient costs a fraction of that.
    Values are unchanged; a gradient already in the layout is passed through without a copy. Traced and compiled
    graphs are left alone (a trace does not record hooks; inductor chooses layouts itself)."""
    eager = isinstance(out, torch.Tensor) and not (torch.jit.is_tracing() or torch.compiler.is_compiling())  # not FX
    layout = _layout_of(out) if eager and out.requires_grad and out.dim() == 4 else None
    if layout is not None:
        out.register_hook(lambda grad: grad.contiguous(memory_format=layout))
    return out


def conv_norm_recomputable(conv: nn.Conv2d, bn: nn.Module, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """``bn(conv(x))`` (NHWC output when ``channels_last``). Inside an active :class:`RecomputeNormActivations`, a training-mode plain
    BatchNorm runs through ``torch.native_batch_norm`` (the kernel and running-statistics update of
    ``nn.BatchNorm2d``) so that its batch statistics are known, and its output (and a cheap conv's
    output) is registered for rebuilding."""
    ctx = _ACTIVE.get()
    if (
        ctx is None
        or type(bn) is not nn.BatchNorm2d  # SyncBatchNorm and friends keep their own path
        or not (bn.training and bn.track_running_stats and bn.affine)
        or not torch.is_grad_enabled()
    ):
        return grad_in_own_layout(bn(_conv(conv, x, channels_last)))
    y = _conv(conv, x, channels_last)
    if _cheap_to_rebuild(conv, x, y):
        ctx.register_conv(y, x, conv, channels_last)
    bn.num_batches_tracked.add_(1)
    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    out, mean, invstd = torch.native_batch_norm(
        y, bn.weight, bn.bias, bn.running_mean, bn.running_var, True, momentum, bn.eps
    )
    ctx.register_norm(out, y, bn, mean, invstd)
    return grad_in_own_layout(out)


@torch.no_grad()
def _affine_terms(bn: nn.BatchNorm2d, mean: torch.Tensor, invstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The CPU kernel's per-channel terms: alpha = invstd * w, beta = fma(-mean, alpha, b) (a float64
    product is exact, so one rounding, as in the fused multiply-add)."""
    alpha = invstd * bn.weight
    beta = (bn.bias.double() - mean.double() * alpha.double()).to(alpha.dtype)
    return alpha, beta
