"""The task interface: what the training loop (:class:`leanvit.train.Trainer`) and the evaluation commands ask
of a kind of training.

The loop itself is task-generic: distributed set-up, AMP, gradient accumulation, clipping, the NaN stop,
EMA, the schedule, atomic checkpoints with an exact resume, CSV/TensorBoard rows and progress bars are
the trainer's. A task supplies the data, the model, the loss of one batch and the evaluation.

How a task plugs in
-------------------
Subclass :class:`Task`, set the class attributes and implement the methods below, and name the class in
:data:`TASKS` (``task.name -> "module:Class"``, imported when a run names it: importing a package registers
nothing). Pass an instance to :func:`leanvit.train.train` (``train(cfg, task=MyTask(cfg))``), or let the
trainer build ``create_task(cfg)``. The trainer calls, in this order:

1. ``open_data(info)``: open the splits (the training split only when ``need_train``); set ``classes``,
   ``description``, ``train_size``, ``val_size``, ``num_classes``.
2. ``build_model(info)`` -> the ``nn.Module`` to train (on CPU; the trainer moves it), then
   ``frozen_modules(model)``: modules kept in eval mode during training.
3. ``build_loaders(info)`` -> ``(train_loader, val_loader, sampler)`` from the task's ``train_loader(info)``
   and ``eval_loader(info, eval_batch_size)``. Both read the task's samples through
   :class:`leanvit.train.data.SampleDataset` (bad files skipped, training samples augmented under RNGs
   seeded by their key) and yield ``(inputs, targets, skipped_paths)``; the sampler has
   ``set_epoch(epoch, start_sample)`` so that a resumed run skips what it already trained
   (:class:`leanvit.train.data.ResumableSampler`).
4. ``build_optimizer(model, lr)`` (default: :func:`leanvit.train.build.build_optimizer`), then
   ``build_loss(device)`` for anything the loss needs (a teacher, Mixup).
5. Per micro-batch: ``to_device(inputs, targets, device)``, then ``loss(model, inputs, targets)`` under
   autocast -> a scalar tensor (the trainer checks it is finite on every process, scales and backpropagates),
   and ``batch_size(inputs)`` for the images/s counters.
6. Per evaluation: ``evaluate(model, loader, info, ema=..., dtype=..., channels_last=..., progress=...)`` ->
   ``(metrics, skipped_paths)``: the task's ``measure`` (every score, over all processes) reduced to the
   epoch row by ``epoch_metrics``; the EMA weights fill the row's ``ema_*`` columns. ``metric_names`` lists
   those usable as ``checkpoint.best_metric`` (higher is better); ``default_metric`` is used when it is unset.
7. ``checkpoint_meta()`` -> plain values stored in every checkpoint (``model_name``, ``classes`` ...);
   ``check_resume(checkpoint)`` raises when a checkpoint belongs to another model or task;
   ``resolved()`` -> derived values written beside config.yaml.

``csv_fields`` are the task's columns in ``metrics.csv`` after the trainer's own.

Evaluating a checkpoint (``leanvit eval``, ``leanvit detect eval``, ``leanvit segment eval``) is one flow,
:meth:`Task.evaluate_checkpoint`: the task rebuilds itself and the model from the checkpoint
(``for_checkpoint``), opens the validation split, checks it against what the checkpoint was trained on
(``check_checkpoint_data``), runs ``measure`` on its ``eval_loader`` and writes ``checkpoint_report``.

The evaluation batch has one rule (:attr:`Task.eval_batch_size`): ``data.eval_batch_size`` when set, else
``eval_batch_factor`` x the training batch; classification uses 1.5 (DeiT's and timm's validation loaders:
no activations are kept for a backward pass), the dense tasks 1 (their evaluation images are full-size).
"""
from __future__ import annotations

import importlib
import json
import logging
import time
from typing import Any, ClassVar, Iterable, Iterator, Protocol

import torch
from torch import nn
from tqdm import tqdm

from . import build
from .._io import atomic_write_text
from ..errors import InvalidValueError
from .config import ConfigError, TrainConfig
from .distributed import DistInfo, cleanup, gather_objects, init_distributed
from .engine import amp_dtype
from .state import read_checkpoint

__all__ = ["Task", "TASKS", "task_class", "create_task", "CheckpointEvaluation", "TRAINER_CSV_FIELDS",
           "evaluation_batches", "gather_lists"]

log = logging.getLogger("leanvit.train")

# The columns the trainer itself writes; a task's csv_fields follow them.
TRAINER_CSV_FIELDS = ["epoch", "global_step", "lr", "train_loss", "train_images_per_s", "epoch_time_s"]

# task.name -> "module:Class": the tasks are named here and imported when a run or a command names one, so
# that importing a package registers nothing (the dense tasks live in a layer above leanvit.train).
TASKS: dict[str, str] = {
    "classification": "leanvit.train.classification:ClassificationTask",
    "detection": "leanvit.dense.detection_task:DetectionTask",
    "segmentation": "leanvit.dense.segmentation_task:SegmentationTask",
}


class CheckpointEvaluation(Protocol):
    """What :meth:`Task.evaluate_checkpoint` reads of an eval command's options (each task's options
    dataclass has these fields and the task's own)."""

    checkpoint: Any
    data: str
    ema: bool
    batch_size: int
    workers: int
    device: str
    out: Any
    progress: bool


class Task:
    """Base class of a training task; see the module docstring for the protocol."""

    name: ClassVar[str] = "task"
    metric_names: ClassVar[tuple[str, ...]] = ()
    default_metric: ClassVar[str] = ""
    csv_fields: ClassVar[list[str]] = []
    eval_batch_factor: ClassVar[float] = 1.0
    eval_command: ClassVar[str] = ""  # the command that evaluates the task's checkpoints

    def __init__(self, cfg: TrainConfig, need_train: bool = True) -> None:
        self.cfg = cfg
        self.need_train = need_train
        self.evaluation: CheckpointEvaluation | None = None  # set while evaluate_checkpoint runs
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
        """(train loader, val loader, resumable train sampler) of this process."""
        train_loader, sampler = self.train_loader(info)
        return train_loader, self.eval_loader(info, self.eval_batch_size), sampler

    def train_loader(self, info: DistInfo) -> tuple[Iterable, Any]:
        """The training loader (:func:`leanvit.train.data.resumable_train_loader`) and its sampler."""
        raise NotImplementedError

    def eval_loader(self, info: DistInfo, batch_size: int) -> Iterable:
        """The validation loader (:func:`leanvit.train.data.sharded_eval_loader`) in batches of ``batch_size``."""
        raise NotImplementedError

    @property
    def eval_batch_size(self) -> int:
        """The evaluation batch of a training run: ``data.eval_batch_size``, else ``eval_batch_factor`` x the
        training batch (the one rule of every task; see the module docstring)."""
        return self.cfg.data.eval_batch_size or max(1, int(self.eval_batch_factor * self.cfg.train.batch_size))

    def loader_settings(self, info: DistInfo) -> dict[str, Any]:
        """The loader keywords every loader of this run and process shares: workers, sharding, pinning."""
        return dict(workers=self.cfg.data.workers, rank=info.rank, world=info.world_size,
                    pin_memory=info.device.type == "cuda")

    def train_loader_settings(self, info: DistInfo) -> dict[str, Any]:
        """:meth:`loader_settings` and the training loader's own: batch size, seed, drop_last."""
        cfg = self.cfg
        return dict(self.loader_settings(info), batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                    drop_last=cfg.data.drop_last)

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

    # --- evaluation
    def measure(self, model: nn.Module, loader: Iterable, info: DistInfo, *, dtype: torch.dtype | None = None,
                channels_last: bool = False, progress: bool = False,
                desc: str = "val") -> tuple[dict[str, Any], list[str]]:
        """Every score of ``model`` on ``loader`` (over all processes, the same on each) and the skipped files."""
        raise NotImplementedError

    def epoch_metrics(self, scores: dict[str, Any]) -> dict[str, float]:
        """The epoch row's values of :meth:`measure`'s scores (by default the scores themselves)."""
        return dict(scores)

    def log_scores(self, scores: dict[str, Any]) -> None:
        """Log what the epoch row leaves out (called on the main process for the raw weights; default: nothing)."""

    def evaluate(self, model: nn.Module, loader: Iterable, info: DistInfo, *, ema: bool = False,
                 dtype: torch.dtype | None = None, channels_last: bool = False,
                 progress: bool = False) -> tuple[dict[str, float], list[str]]:
        """The epoch row's metrics and the skipped files; with ``ema`` those of the row's ``ema_*`` columns."""
        scores, skipped = self.measure(model, loader, info, dtype=dtype, channels_last=channels_last,
                                       progress=progress, desc="val ema" if ema else "val")
        if info.is_main and not ema:
            self.log_scores(scores)
        metrics = self.epoch_metrics(scores)
        if ema:
            metrics = {f"ema_{k}": v for k, v in metrics.items() if f"ema_{k}" in self.csv_fields}
        return metrics, skipped

    # --- evaluating a checkpoint
    @classmethod
    def for_checkpoint(cls, options: CheckpointEvaluation) -> tuple["Task", nn.Module]:
        """(this task set up to evaluate ``options.checkpoint`` on ``options.data``, the model with the
        checkpoint's weights in eval mode on CPU). The task's ``cfg`` carries the evaluation's settings
        (``train.amp``, ``model.channels_last``, ``data.*``); ``need_train`` is false."""
        raise NotImplementedError

    def check_checkpoint_data(self) -> None:
        """Refuse validation data that differs from what the checkpoint was trained on (after ``open_data``)."""

    def checkpoint_report(self, scores: dict[str, Any], skipped: list[str], info: DistInfo,
                          seconds: float) -> dict[str, Any]:
        """The evaluation command's result (printed and written as JSON) from :meth:`measure`'s scores;
        ``seconds``: the wall time of the measurement."""
        raise NotImplementedError

    @classmethod
    def evaluate_checkpoint(cls, options: CheckpointEvaluation) -> dict[str, Any]:
        """Evaluate ``options.checkpoint`` on the validation split of ``options.data``: the one flow of the eval
        commands (single process or under torchrun). Returns :meth:`checkpoint_report`'s result, which the
        main process also writes to ``options.out`` as JSON when it is set."""
        task, model = cls.for_checkpoint(options)
        task.evaluation = options
        info = init_distributed(options.device)
        try:
            task.open_data(info)
            task.check_checkpoint_data()
            loader = task.eval_loader(info, options.batch_size)
            model.to(info.device)
            start = time.perf_counter()
            scores, skipped = task.measure(model, loader, info, dtype=amp_dtype(task.cfg.train.amp, info.device),
                                           channels_last=task.cfg.model.channels_last, progress=options.progress)
            seconds = time.perf_counter() - start
        finally:
            cleanup(info)
        result = task.checkpoint_report(scores, skipped, info, seconds)
        if options.out is not None and info.is_main:
            atomic_write_text(options.out, json.dumps(result, indent=2))
        return result

    # --- bookkeeping

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


def task_class(name: str) -> type[Task]:
    """The :class:`Task` subclass that :data:`TASKS` names ``name`` (its module is imported here)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task.name={name!r}; known tasks: {', '.join(TASKS)}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def create_task(cfg: TrainConfig) -> Task:
    """The task ``cfg.task.name`` names (:data:`TASKS`), built for ``cfg``."""
    return task_class(cfg.task.name)(cfg)
