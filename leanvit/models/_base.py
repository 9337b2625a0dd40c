"""What every leanvit model shares: classifier heads with optional DeiT distillation, the timm
model contract (forward_features / forward_head / forward_intermediates / feature_info / ...).

A family model subclasses :class:`LeanViTModel` and provides ``patch_embed``, ``stages`` and
``_make_head(in_features, num_classes)`` (conv-BN families build both through ``_build_conv_bn_backbone``).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

from ..errors import InvalidValueError
from ..layers import ConvStem, Subsample
from ..layers.recompute import RecomputeNormActivations
from ._dense import DenseSettings
from ._layouts import Adapter, Layout

__all__ = ["LeanViTModel", "Stage", "DistilledLogits"]



def _take_indices(count: int, indices: int | list[int] | None) -> tuple[list[int], int]:
    """timm's ``forward_intermediates`` convention (timm keeps its helper private): ``None`` takes all ``count``
    stages, an int n the last n, a list those indices (negative from the end); returns them and the largest."""
    if indices is None:
        indices = count
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise InvalidValueError(f"indices={indices}: take between 1 and {count} stages")
        take = list(range(count - indices, count))
    else:
        take = [count + i if i < 0 else i for i in indices]
        bad = [i for i, t in zip(indices, take) if not 0 <= t < count]
        if bad:
            raise InvalidValueError(f"stage indices {bad} out of range for {count} stages")
    return take, max(take)

class Stage(nn.Module):
    """``downsample`` (Identity for the first stage) followed by ``blocks``, with grad checkpointing."""

    def __init__(self, downsample: nn.Module, blocks: nn.Sequential) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = blocks
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            return checkpoint_sequential(self.blocks, max(1, len(self.blocks)), x, use_reentrant=False)
        return self.blocks(x)


DistilledLogits = tuple[torch.Tensor, torch.Tensor]

# Smallest input side that runs NHWC under the "auto" memory-format policy. Below it the last maps
# are 1x1, where torch's CPU channels-last depthwise convolution under bf16 autocast sporadically
# returns non-finite weight gradients (seen with torch 2.4-2.14 in tests/test_train_*.py); NCHW is exact.
CHANNELS_LAST_MIN_SIDE = 128

# timm's global_pool values that leanvit's heads support: average pooling, or none ('').
GLOBAL_POOL_TYPES = ("avg", "")


class LeanViTModel(nn.Module):
    """Base class: classifier head(s) and the timm model contract on top of ``stages``."""

    patch_embed: nn.Module
    stages: nn.Sequential
    feature_info: list[dict[str, Any]]
    num_classes: int
    num_features: int
    head_hidden_size: int
    global_pool: str
    distillation: bool
    # The family's name (its registry key, what checkpoints and layouts are looked up by): every family class
    # sets it, so that a model built from its class saves and loads like one built by name.
    family: str = ""
    # The registered variant's ModelConfig when built by name (leanvit.create_model); None when built directly.
    leanvit_cfg: Any = None
    # Conv-dominated families run faster NHWC on CPU (oneDNN, measured 1.2-1.3x): under the "auto"
    # memory-format policy their CPU forward passes make NHWC activations, and leanvit.fuse stores
    # their weights NHWC. See set_channels_last.
    prefers_channels_last: bool = False
    channels_last: bool | str = "auto"
    # Foreign checkpoint layouts and resolution adapters of the family (leanvit.models.checkpoint reads them).
    checkpoint_layouts: tuple[Layout, ...] = ()
    checkpoint_adapters: tuple[Adapter, ...] = ()
    # What the family's official dense backbone changes (leanvit.dense.create_backbone reads it): nothing here.
    dense_settings: DenseSettings = DenseSettings()
    # Feature maps are NCHW everywhere; families with a different internal layout convert in _stage_out.
    # Training forward passes rebuild BN(+ReLU) outputs in backward instead of storing them
    # (leanvit.layers.recompute); only the conv-BN families have such outputs.
    recompute_norm_activations: bool = False

    def _init_heads(self, num_features: int, num_classes: int, distillation: bool, drop_rate: float = 0.0,
                    global_pool: str = "avg") -> None:
        self.num_features = self.head_hidden_size = num_features
        self.drop_rate = drop_rate
        self.distillation = distillation
        self.distilled_training = distillation
        self.head_dist = None
        self.grad_checkpointing = False
        self._set_heads(num_classes, global_pool)

    def _set_heads(self, num_classes: int, global_pool: str) -> None:
        """timm's rules: ``global_pool`` is ``'avg'`` or ``''`` (no pooling, only with 0 classes)."""
        if global_pool not in GLOBAL_POOL_TYPES:
            raise InvalidValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
        if global_pool == "" and num_classes:
            raise InvalidValueError(f"global_pool='' (unpooled feature maps out) needs num_classes=0, got {num_classes}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.head = self._make_head(self.num_features, num_classes)
        if self.distillation:
            self.head_dist = self._make_head(self.num_features, num_classes)

    def _make_head(self, in_features: int, num_classes: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def _build_conv_bn_backbone(
        self, in_chans: int, embed_dim: tuple[int, ...], make_blocks: Callable[[int, int], nn.Sequential]
    ) -> None:
        """Stem + stages of the conv-BN families (SHViT, EfficientViT-M): a stride-16 ConvStem, then per
        stage a Subsample (from the second stage on) and ``make_blocks(stage_index, dim)``."""
        self.in_chans = in_chans
        d0 = embed_dim[0]
        self.patch_embed = ConvStem(in_chans, (d0 // 8, d0 // 4, d0 // 2, d0))
        stages = []
        self.feature_info = []
        for i, dim in enumerate(embed_dim):
            down = Subsample(embed_dim[i - 1], dim) if i > 0 else nn.Identity()
            stages.append(Stage(down, make_blocks(i, dim)))
            self.feature_info.append(dict(num_chs=dim, reduction=16 * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.recompute_norm_activations = True

    def set_recompute_norm_activations(self, enable: bool = True) -> None:
        """Training only: rebuild BatchNorm(+ReLU) outputs in backward from the BN inputs that are kept
        anyway, instead of storing them (less activation memory, same gradients). On by default for
        the conv-BN families; see ``leanvit.layers.recompute``."""
        self.recompute_norm_activations = enable

    def set_channels_last(self, mode: bool | str = "auto") -> None:
        """The memory-format policy of the activations, the same in eager mode and in traced graphs.

        - ``"auto"`` (default): NHWC on CPU for the families that prefer it (SHViT, EfficientViT-M: the
          first conv writes NHWC without copying the input; measured 1.2-1.3x training and inference
          speed, docs/training.md), for inputs of at least ``CHANNELS_LAST_MIN_SIDE`` px; NCHW otherwise.
        - ``True``: NHWC on every device and size (for a family that has NHWC stems); ``False``: NCHW.

        Values are the same either way (only sums are reordered). Feature maps returned by
        ``forward_features`` / ``forward_intermediates`` are contiguous in the format the policy chose:
        ``x.is_contiguous(memory_format=torch.channels_last)`` when NHWC, plain contiguous when NCHW.
        ``.reshape`` always works; call ``.contiguous()`` before a ``.view`` that needs NCHW order.
        """
        if mode not in ("auto", True, False):
            raise InvalidValueError(f"channels_last must be 'auto', True or False, got {mode!r}")
        self.channels_last = mode

    def uses_channels_last(self, x: torch.Tensor) -> bool:
        """Whether this forward pass on ``x`` runs NHWC under the model's memory-format policy."""
        if not self.prefers_channels_last or x.dim() != 4:
            return False
        if self.channels_last == "auto":
            return x.device.type == "cpu" and min(x.shape[-2:]) >= CHANNELS_LAST_MIN_SIDE
        return bool(self.channels_last)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """The stem, in the memory format of :meth:`set_channels_last`'s policy."""
        if self.uses_channels_last(x):
            return self.patch_embed(x, channels_last=True)
        return self.patch_embed(x)

    def _activation_scope(self) -> contextlib.AbstractContextManager:
        if (
            self.recompute_norm_activations
            and self.training
            and torch.is_grad_enabled()
            and not torch.jit.is_scripting()
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()  # inductor's partitioner recomputes on its own
        ):
            return RecomputeNormActivations()
        return contextlib.nullcontext()

    # --- timm contract -------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        """The classification head (the class head; ``head_dist`` when distilled is separate)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head(s) with fresh ones for ``num_classes``, as timm does: 0 = identity head (pooled
        features out); ``global_pool=''`` (with 0 classes) = no pooling (``forward`` returns the last feature
        map); ``None`` keeps the current pooling."""
        dev = next(self.parameters()).device
        self._set_heads(num_classes, self.global_pool if global_pool is None else global_pool)
        self.head.to(dev)
        if self.head_dist is not None:
            self.head_dist.to(dev)

    def set_distilled_training(self, enable: bool = True) -> None:
        """timm's token-distillation hook: in training, return (class, distill) logits."""
        self.distilled_training = enable and self.distillation

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute stage blocks in backward to save activation memory."""
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise lr decay (timm format)."""
        return dict(
            stem=r"^patch_embed",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters that must not be weight-decayed (attention biases, window tokens, ...)."""
        return {n for n, _ in self.named_parameters() if self._is_no_decay(n)}

    def _is_no_decay(self, name: str) -> bool:
        return "attention_biases" in name

    # --- forward -------------------------------------------------------------------------------
    def _stage_out(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Hook: stage ``index``'s output as an NCHW intermediate (families may add a per-level norm)."""
        return x

    def _after_stage(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Hook: what a family applies to stage ``index``'s output on the main path, before the next stage
        reads it (default nothing; SepViT's official dense form: its per-level LayerNorm)."""
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> last feature map (NCHW-shaped, memory format per :meth:`set_channels_last`)."""
        with self._activation_scope():
            return self.stages(self._embed(x))

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        # keepdim + flatten: the mean ExecuTorch's XNNPACK delegate lowers (4-D, over H and W, kept dims)
        return x.mean((2, 3), keepdim=True).flatten(1) if self.global_pool == "avg" else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor | DistilledLogits:
        """Pool (``global_pool``) and classify; ``pre_logits=True`` returns the pooled features. Distilled
        models return (class, distill) in training, their mean in eval."""
        x = self._pool(x)
        if pre_logits:
            return x
        logits = self.head(x)
        if self.head_dist is None:
            return logits
        logits_dist = self.head_dist(x)
        if self.training and self.distilled_training and not torch.jit.is_tracing():
            return logits, logits_dist
        return (logits + logits_dist) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor | DistilledLogits:
        with self._activation_scope():
            return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm-style: the stage outputs selected by ``indices`` (all by default), NCHW-shaped, in the
        memory format of the model's policy (see :meth:`set_channels_last`).

        ``indices`` may be an int n (the last n stages) or a list of stage indices (negative allowed).
        """
        if output_fmt != "NCHW":
            raise InvalidValueError(f"only output_fmt='NCHW' is supported, got {output_fmt!r}")
        take, max_index = _take_indices(len(self.stages), indices)
        intermediates = []
        with self._activation_scope():
            x = self._embed(x)
            stages = self.stages if not stop_early else self.stages[: max_index + 1]
            for i, stage in enumerate(stages):
                x = self._after_stage(stage(x), i)
                if i in take:
                    intermediates.append(self._stage_out(x, i))
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop stages (and the head) not needed to produce ``indices``; returns the kept indices."""
        take, max_index = _take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if prune_head:
            self.reset_classifier(0)
        return take
