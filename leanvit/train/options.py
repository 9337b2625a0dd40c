"""The options of the training-task commands, declared once: :class:`TrainCommandOptions` (the flags of
``leanvit train``, ``leanvit detect train`` and ``leanvit segment train``) and :class:`ClassificationEvalOptions`
(what ``ClassificationTask.evaluate_checkpoint`` takes, the ``leanvit eval`` flags). The flags are generated
from the fields (:func:`leanvit._flags.add_dataclass_flags`). No torch here, so that ``--help`` is instant.
"""
from __future__ import annotations

from dataclasses import dataclass

from .._flags import option

__all__ = ["TrainCommandOptions", "ClassificationEvalOptions", "DEVICES", "AMP_MODES"]

DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("none", "bf16", "fp16", "auto")


@dataclass(frozen=True)
class TrainCommandOptions:
    """The flags of every ``train`` command; each command adds its help texts and leaves out those it lacks
    (``backbone_checkpoint``: dense tasks; ``no_resume``, ``list_recipes``: ``leanvit train``). The flags that set
    a config key are applied after the recipe and before ``--set`` (``leanvit.cli._task.TRAIN_FLAG_KEYS``)."""

    recipe: str | None = option(None, "recipe name or YAML path (default: the checkpoint's config with --resume)")
    data: str | None = option(None, "the data (default: the recipe's)")
    model: str | None = option(None, "backbone (a leanvit model name; default: the recipe's)")
    backbone_checkpoint: str | None = option(None, "ImageNet weights for the backbone (leanvit, timm or official "
                                                   "file)")
    finetune: str | None = option(None, "weights to start from")
    output: str | None = option(None, "output directory")
    epochs: int | None = option(None, "training epochs (default: the recipe's)", type=int)
    batch_size: int | None = option(None, "images per process per step (official: 2 x 8 GPUs = 16)", type=int)
    max_steps: int | None = option(None, "stop after this many optimizer updates", type=int)
    seed: int | None = option(None, "the run's seed (default: the recipe's)", type=int)
    resume: str | None = option(None, "training checkpoint to continue exactly (e.g. OUTPUT/last.ckpt)",
                                exclusive="resume")
    no_resume: bool = option(False, "never continue a run: an OUTPUT that holds one is refused", exclusive="resume")
    overrides: list[str] = option([], "override any config key (repeatable)", flag="--set", action="append",
                                  metavar="KEY=VALUE")
    print_config: bool = option(False, "print the resolved config and exit")
    list_recipes: bool = option(False, "list the known recipes and exit")


@dataclass(frozen=True)
class ClassificationEvalOptions:
    """How to evaluate a classification checkpoint (a leanvit training checkpoint or any weights file)."""

    model: str = option("", "model name, e.g. shvit_s1", flag="model")
    checkpoint: str = option("", "weights file", required=True)
    data: str = option("", "ImageFolder root (its val/ or validation/ split), 'digits' or 'fake'", required=True)
    split: str | None = option(None, "split folder name (default: val, else validation)")
    img_size: int | None = option(None, "input size (default: the checkpoint's or the model's)", type=int)
    crop_pct: float | None = option(None, "resize to img_size / crop_pct before the centre crop (0.875)", type=float)
    batch_size: int = option(128, "images per evaluation batch", type=int)
    workers: int = option(4, "data loader processes", type=int)
    ema: bool = option(False, "evaluate the EMA weights")
    fuse: bool = option(False, "fold BatchNorms (leanvit.fuse) before evaluating")
    amp: str = option("none", "autocast precision", choices=AMP_MODES)
    device: str = option("auto", "where to run", choices=DEVICES)
    channels_last: bool = option(False, "run in NHWC memory format")
    num_classes: int | None = option(None, "class count of a foreign checkpoint (default: from its head)", type=int)
    out: str | None = option(None, "write the results as JSON to this file")
    progress: bool = option(True, "no progress bar", flag="--no-progress")
