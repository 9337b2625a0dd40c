"""The ``leanvit analyze`` tools' options, declared once: one dataclass per tool whose fields generate its flags
(:func:`leanvit._flags.add_dataclass_flags`), and the names the tools accept (head-similarity targets and
reductions, Taylor modes, study names), which the library modules validate against. No torch here, so
``leanvit analyze --help`` is instant.

Field names are the keyword arguments of the tool's ``run_*`` function in :mod:`leanvit.analysis.runs`; the
first positional field and ``out`` are its positional arguments.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .._flags import option

__all__ = [
    "OP_BACKENDS", "OP_PRECISIONS", "TARGETS", "REDUCES", "GRANULARITIES", "DEFINITIONS", "QK_MODES",
    "NORMALIZATIONS", "PRUNABLE_PARTS", "STUDY_NAMES", "SEPVIT_MODELS", "OpBreakdownOptions", "HeadSimilarityOptions",
    "HeadAblationOptions", "TaylorOptions", "DesignSpaceOptions", "BlockComplexityOptions", "TOOL_OPTIONS",
    "run_arguments",
]

OP_BACKENDS = ("eager", "jit", "openvino")
OP_PRECISIONS = ("fp32", "bf16")
# Head similarity: what is compared, how the pairs reduce, over what it is averaged; the papers' definitions.
TARGETS = ("attention_map", "head_output")
REDUCES = ("mean_pairs", "max_max", "mean_of_max")
GRANULARITIES = ("image", "batch")
DEFINITIONS = {
    "shvit": dict(target="attention_map", reduce="mean_pairs"),
    "efficientvit": dict(target="head_output", reduce="max_max"),
}
# Taylor importance: Q/K gates, score normalisation, the channel groups pruning can remove.
QK_MODES = ("joint", "separate")
NORMALIZATIONS = ("mean", "none")
PRUNABLE_PARTS = ("q", "k", "v", "ffn")
# The design-space studies (leanvit.analysis.design_space.STUDIES has one entry per name).
STUDY_NAMES = ("shvit-macro", "shvit-tab6", "evit-fig7", "evit-tab6")
SEPVIT_MODELS = ["sepvit_lite", "sepvit_t", "sepvit_s", "sepvit_b"]


@dataclass(frozen=True)
class _ModelOptions:
    """What every per-model tool takes: where to write, the input side and the weights."""

    out: str = option("analysis_out", "output folder (default: analysis_out)")
    img_size: int | None = option(None, "input side (default: the size --checkpoint was trained at, else the model's "
                                  "native size)", type=int)
    checkpoint: str | None = option(None, "weights to load (leanvit / timm / official layouts)")


@dataclass(frozen=True)
class _LabelledOptions(_ModelOptions):
    """The weight-dependent tools also read labelled images."""

    data: str | None = option(None, "ImageFolder root (train/ and val/), 'digits' or 'fake'", required=True)
    num_classes: int | None = option(None, "classifier width (default 1000)", type=int)
    images: int = option(128, "images drawn from the split (default 128)", type=int)
    batch_size: int = option(32, "images per forward (default 32)", flag="--batch", type=int)
    seed: int = option(0, "seed of the image sample (recorded)", type=int)


@dataclass(frozen=True)
class OpBreakdownOptions(_ModelOptions):
    """``leanvit analyze op-breakdown``: per-op / category / stage time with bytes and intensity."""

    models: list[str] = option([], "leanvit names or timm:NAME", flag="models", nargs="+")
    backend: str = option("eager", "eager, jit (torch.jit.trace) or openvino (per-layer PERF_COUNT)",
                          choices=OP_BACKENDS)
    batch_size: int = option(1, "batch of the profiled forward (default 1)", flag="--batch", type=int)
    iters: int = option(5, "profiled forwards (default 5)", type=int)
    warmup: int = option(3, "forwards before profiling (default 3)", type=int)
    threads: int = option(1, "torch / OpenVINO threads (default 1)", type=int)
    precision: str = option("fp32", "fp32 (default, exact) or bf16: OpenVINO's inference precision; eager and jit "
                            "profile fp32 only", choices=OP_PRECISIONS)


@dataclass(frozen=True)
class HeadSimilarityOptions(_LabelledOptions):
    """``leanvit analyze head-similarity``: per-layer head similarity under one definition."""

    models: list[str] = option([], "leanvit names or timm:NAME", flag="models", nargs="+")
    definition: str | None = option(None, "shvit = attention maps, mean over pairs; efficientvit = head outputs, "
                                    "max over pairs (default shvit unless --target / --reduce)",
                                    choices=tuple(DEFINITIONS))
    target: str | None = option(None, "what is compared (instead of a definition)", choices=TARGETS)
    reduce: str | None = option(None, "how the head pairs reduce (instead of a definition)", choices=REDUCES)
    granularity: str = option("image", "similarity per image or per batch (default image)", choices=GRANULARITIES)
    drop_cls: bool = option(False, "drop CLS rows/columns of the maps (timm ViT/DeiT)")

    def resolved(self) -> "HeadSimilarityOptions":
        """``definition`` as the tool takes it: none when only --target / --reduce are given, else shvit's."""
        explicit = (self.target or self.reduce) and self.definition is None
        return dataclasses.replace(self, definition=None if explicit else (self.definition or "shvit"))


@dataclass(frozen=True)
class HeadAblationOptions(_LabelledOptions):
    """``leanvit analyze head-ablation``: top-1 change with one head removed / only one head kept."""

    model: str = option("", "leanvit name or timm:NAME", flag="model")
    cascade_mask: bool = option(True, "EfficientViT-M: mask at the projection only", flag="--no-cascade-mask")


@dataclass(frozen=True)
class TaylorOptions(_LabelledOptions):
    """``leanvit analyze taylor``: Taylor importance of Q/K/V/FFN channels and kept ratios under a budget."""

    model: str = option("", "leanvit name or timm:NAME", flag="model")
    keep: float | None = option(None, "fraction of gated channels kept, e.g. 0.5", type=float, required=True)
    qk: str = option("joint", "joint: one gate per Q/K channel pair; separate: one each (default joint)",
                     choices=QK_MODES)
    normalize: str = option("mean", "normalise each layer's scores by their mean, or not (default mean)",
                            choices=NORMALIZATIONS)
    prune: bool = option(False, "remove the dropped channels (exact slicing; see prune_channels for what can be "
                         "removed)")
    parts: str = option(",".join(PRUNABLE_PARTS), "channels --prune removes, comma-separated (default "
                        f"{','.join(PRUNABLE_PARTS)})")
    finetune_epochs: int = option(0, "after --prune, fine-tune this many passes over the Taylor images (default 0)",
                                  type=int)
    lr: float = option(1e-4, "fine-tune learning rate (AdamW, cosine; default 1e-4)", type=float)


@dataclass(frozen=True)
class DesignSpaceOptions:
    """``leanvit analyze design-space``: speed studies from config switches (SHViT Fig. 2 / Tab. 6, EViT Fig. 7)."""

    studies: list[str] = option([], "studies to run", flag="studies", nargs="+", choices=STUDY_NAMES)
    out: str = option("analysis_out", "output folder (default: analysis_out)")
    batch_size: int = option(16, "timed batch (default 16)", flag="--batch", type=int)
    threads: int = option(1, "torch threads (default 1)", type=int)
    duration_s: float = option(2.0, "seconds timed per model per round", flag="--duration", type=float)
    rounds: int = option(3, "interleaved timing rounds (default 3)", type=int)
    measure_speed: bool = option(True, "params and MACs only", flag="--no-speed")
    img_size: int | None = option(None, "override every point's input side (smoke runs)", type=int)


@dataclass(frozen=True)
class BlockComplexityOptions:
    """``leanvit analyze block-complexity``: SepViT MAC formulas vs counted, and one block vs two."""

    models: list[str] = option(SEPVIT_MODELS, "SepViT variants (default: all four)", flag="models", nargs="*")
    out: str = option("analysis_out", "output folder (default: analysis_out)")
    img_size: int | None = option(None, "input side (default: the size --checkpoint was trained at, else the model's "
                                  "native size)", type=int)
    time_s: float = option(0.0, "seconds per round to time a block vs two Swin blocks", flag="--time", type=float)
    rounds: int = option(3, "timing rounds (default 3)", type=int)
    batch_size: int = option(16, "timed batch (default 16)", flag="--batch", type=int)
    threads: int = option(1, "torch threads (default 1)", type=int)


# tool name -> its options
TOOL_OPTIONS: dict[str, type] = {
    "op-breakdown": OpBreakdownOptions,
    "head-similarity": HeadSimilarityOptions,
    "head-ablation": HeadAblationOptions,
    "taylor": TaylorOptions,
    "design-space": DesignSpaceOptions,
    "block-complexity": BlockComplexityOptions,
}


def run_arguments(options: Any) -> tuple[list[Any], dict[str, Any]]:
    """``(positional, keyword)`` arguments of the tool's ``run_*`` function: the first field that is a positional
    flag (the model(s) or studies), then ``out``; every other field by name."""
    fields = dataclasses.fields(options)
    first = next(f.name for f in fields if not (f.metadata.get("flag") or "-").startswith("-"))
    values = dataclasses.asdict(options)
    positional = [values.pop(first), values.pop("out")]
    return positional, values
