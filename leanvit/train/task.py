"""The task interface: what the training loop (:class:`leanvit.train.Trainer`) asks of a kind of training.

The loop itself is task-generic: distributed set-up, AMP, gradient accumulation, clipping, the NaN stop,
EMA, the schedule, atomic checkpoints with an exact resume, CSV/TensorBoard rows and progress bars are
the trainer's. A task supplies the data, the model, the loss of one batch and the evaluation.

How a task plugs in
-------------------
Subclass :class:`Task`, set the class attributes and implement the methods below, then pass an instance
to :func:`leanvit.train.train` (``train(cfg, task=MyTask(cfg))``); without one the trainer builds the
task named by ``cfg.task.name`` from :data:`TASKS` (where a layer above ``leanvit.train``, such as
``leanvit.dense``, registers its tasks with :func:`register_task`). The trainer calls, in this order:

1. ``open_data(info)``: open the splits; set ``classes``, ``description``, ``train_size``, ``val_size``.
2. ``build_model(info)`` -> the ``nn.Module`` to train (on CPU; the trainer moves it), then
   ``frozen_modules(model)``: modules kept in eval mode during training.
3. ``build_loaders(info)`` -> ``(train_loader, val_loader, sampler)``. Loaders yield
   ``(inputs, targets, skipped_paths)``; the sampler has ``set_epoch(epoch, start_sample)`` so that a
   resumed run skips what it already trained (see :class:`leanvit.train.data.ResumableSampler`).
4. ``build_optimizer(model, lr)`` (default: :func:`leanvit.train.build.build_optimizer`), then
   ``build_loss(device)`` for anything the loss needs (a teacher, Mixup).
5. Per micro-batch: ``to_device(inputs, targets, device)``, then ``loss(model, inputs, targets)`` under
   autocast -> a scalar tensor (the trainer checks it is finite on every process, scales and backpropagates),
   and ``batch_size(inputs)`` for the images/s counters.
6. Per evaluation: ``evaluate(model, loader, info, ema=..., dtype=..., channels_last=..., progress=...)`` ->
   ``(metrics, skipped_paths)``; metrics are gathered over all processes and go into the epoch row.
   ``metric_names`` lists those usable as ``checkpoint.best_metric`` (higher is better);
   ``default_metric`` is used when it is unset.
7. ``checkpoint_meta()`` -> plain values stored in every checkpoint (``model_name``, ``classes`` ...);
   ``check_resume(checkpoint)`` raises ``ValueError`` when a checkpoint belongs to another model or task;
   ``resolved()`` -> derived values written beside config.yaml.

``csv_fields`` are the task's columns in ``metrics.csv`` after the trainer's own.

Shared by the tasks: :meth:`Task.loader_settings` (the run's loader keywords, for ``build_loaders``),
:meth:`Task.load_finetune_weights` (``finetune.checkpoint``), and for ``evaluate`` :func:`evaluation_batches`
(eval mode, progress bar, skipped files) and :func:`gather_lists` (every process's results).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, ClassVar, Iterable, Iterator

import torch
from torch import nn
from tqdm import tqdm

from . import build
from ..errors import InvalidValueError
from .config import ConfigError, TrainConfig
from .distributed import DistInfo, gather_objects
from .state import read_checkpoint

__all__ = ["Task", "TASKS", "register_task", "create_task", "TRAINER_CSV_FIELDS", "evaluation_batches",
           "gather_lists"]

log = logging.getLogger("leanvit.train")

# The columns the trainer itself writes; a task's csv_fields follow them.
TRAINER_CSV_FIELDS = ["epoch", "global_step", "lr", "train_loss", "train_images_per_s", "epoch_time_s"]


class Task:
    """Base class of a training task; see the module docstring for the protocol."""

    name: ClassVar[str] = "task"
    metric_names: ClassVar[tuple[str, ...]] = ()
    default_metric: ClassVar[str] = ""
    csv_fields: ClassVar[list[str]] = []

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.classes: list[str] = []
        self.description = ""
        self.train_size = 0
        self.val_size = 0
        self.num_classes = 0
        best = cfg.checkpoint.best_metric
        if best is not None and best not in self.metric_names:
            raise ConfigError(f"checkpoint.best_metric={best!r} is not a {self.name} metric; choose one of "
                              f"{', '.join(self.metric_names)}")

    @property
    def best_metric(self) -> str:
        """The metric that selects best.ckpt."""
        return self.cfg.checkpoint.best_metric or self.default_metric

    @property
    def model_name(self) -> str:
        """What the run trains, as stored in checkpoints and logged."""
        return self.cfg.model.name

    # --- set-up
    def open_data(self, info: DistInfo) -> None:
        raise NotImplementedError

    def build_model(self, info: DistInfo) -> nn.Module:
        raise NotImplementedError

    def frozen_modules(self, model: nn.Module) -> list[nn.Module]:
        """Modules to keep in eval mode (and without gradients) during training."""
        return []

    def build_loaders(self, info: DistInfo) -> tuple[Iterable, Iterable, Any]:
        raise NotImplementedError

    def loader_settings(self, info: DistInfo) -> dict[str, Any]:
        """The loader keywords of this run and process: batch sizes, workers, seed, sharding, drop_last, pinning.

        The evaluation batch defaults to the training batch (``data.eval_batch_size`` unset).
        """
        cfg = self.cfg
        batch = cfg.train.batch_size
        return dict(batch_size=batch, eval_batch_size=cfg.data.eval_batch_size or batch, workers=cfg.data.workers,
                    seed=cfg.train.seed, rank=info.rank, world=info.world_size, drop_last=cfg.data.drop_last,
                    pin_memory=info.device.type == "cuda")

    def load_finetune_weights(self, model: nn.Module, what: str) -> nn.Module:
        """``model`` with the weights of ``finetune.checkpoint`` (its EMA with ``finetune.use_ema``), if one is set.

        ``what`` names the model in the log line ("detector", "segmentor").
        """
        path = self.cfg.finetune.checkpoint
        if path:
            ck = read_checkpoint(path)
            model.load_state_dict(ck["ema" if self.cfg.finetune.use_ema and ck.get("ema") else "model"])
            log.info("%s weights from %s", what, path)
        return model

    def build_optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        """The optimizer; by default timm's factory with the config's decay rules."""
        return build.build_optimizer(self.cfg, model, lr)

    def build_loss(self, device: torch.device) -> None:
        """Prepare what :meth:`loss` needs (called after the optimizer is built)."""

    # --- per batch
    def to_device(self, inputs: Any, targets: Any, device: torch.device) -> tuple[Any, Any]:
        return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)

    def batch_size(self, inputs: Any) -> int:
        return len(inputs)

    def loss(self, model: nn.Module, inputs: Any, targets: Any) -> torch.Tensor:
        raise NotImplementedError

    # --- evaluation and bookkeeping
    def evaluate(self, model: nn.Module, loader: Iterable, info: DistInfo, *, ema: bool = False,
                 dtype: torch.dtype | None = None, channels_last: bool = False,
                 progress: bool = False) -> tuple[dict[str, float], list[str]]:
        raise NotImplementedError

    def checkpoint_meta(self) -> dict[str, Any]:
        return dict(model_name=self.model_name, task=self.name, num_classes=self.num_classes,
                    classes=list(self.classes))

    def check_resume(self, checkpoint: dict[str, Any]) -> None:
        saved_task = checkpoint.get("task", "classification")
        if saved_task != self.name:
            raise InvalidValueError(f"cannot resume: {self.cfg.resume} is a {saved_task} checkpoint, but this run trains "
                                    f"{self.name}")
        saved = checkpoint.get("model_name")
        if saved != self.model_name:
            raise InvalidValueError(
                f"cannot resume: {self.cfg.resume} is a checkpoint of {saved}, but this run builds "
                f"{self.model_name}. Resume with the model it was trained with, or start from its weights with "
                "--finetune"
            )

    def resolved(self) -> dict[str, Any]:
        return dict(num_classes=self.num_classes, classes=list(self.classes), data=self.description,
                    train_images=self.train_size, val_images=self.val_size)


def evaluation_batches(model: nn.Module, loader: Iterable, info: DistInfo, skipped: list[str], *,
                       progress: bool = False, desc: str = "val") -> Iterator[tuple[Any, Any]]:
    """``(inputs, targets)`` of an evaluation loader, with ``model`` in eval mode until the loop ends.

    The paths of skipped files are appended to ``skipped``; the progress bar shows on the main process only.
    """
    was_training = model.training
    model.eval()
    bar = tqdm(loader, desc=desc, disable=None if progress and info.is_main else True, leave=False, dynamic_ncols=True)
    try:
        for inputs, targets, bad in bar:
            skipped += bad
            yield inputs, targets
    finally:
        model.train(was_training)


def gather_lists(items: list[Any], info: DistInfo) -> list[Any]:
    """Every process's ``items`` concatenated in rank order, on every process."""
    return [item for part in gather_objects(items, info) for item in part]


TASKS: dict[str, Callable[[TrainConfig], Task]] = {}


def register_task(name: str, factory: Callable[[TrainConfig], Task]) -> None:
    """Make ``cfg.task.name == name`` build ``factory(cfg)``."""
    TASKS[name] = factory


def create_task(cfg: TrainConfig) -> Task:
    """The task ``cfg.task.name`` names (registered with :func:`register_task`)."""
    name = cfg.task.name
    if name not in TASKS:
        hint = " (import leanvit.dense to register the dense tasks)" if name in ("detection", "segmentation") else ""
        raise ConfigError(f"unknown task.name={name!r}{hint}; registered tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](cfg)
