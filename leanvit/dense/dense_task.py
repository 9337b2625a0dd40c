"""What detection and segmentation share as :class:`leanvit.train.task.Task` s: an architecture
(``cfg.task.arch``) on a leanvit backbone (``cfg.model.name``), ``cfg.task.options`` checked against the
task's defaults, ImageNet weights for the backbone (``cfg.task.backbone_checkpoint``), the model's
builder keywords stored in every checkpoint, a resume only into the same architecture, and the trained
model back from its checkpoint (:meth:`DenseTask.load_trained`: the eval, predict and export commands).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, ClassVar

from torch import nn

from ..errors import InvalidValueError
from ..train.config import ConfigError, TrainConfig, config_from_dict
from ..train.distributed import DistInfo
from ..train.state import read_checkpoint
from ..train.task import TASKS, CheckpointEvaluation, Task, task_class

__all__ = ["DenseTask"]

log = logging.getLogger("leanvit.train")

# Checkpoint entries that are training state rather than metadata of the model.
_TRAINING_STATE = ("model", "ema", "optimizer", "scheduler", "scaler", "rng")


class DenseTask(Task):
    """Base of the dense tasks; a subclass sets the class attributes below (and the data, loss, evaluation).

    ``model_kind`` ("detector", "segmentor") names the model in logs, its ``task.options`` key of builder
    overrides and its checkpoint entry ``<model_kind>_kwargs``; ``build`` is the builder
    (``build(arch, backbone, num_classes=..., **kwargs)``); ``default_options`` lists every valid option;
    ``evaluation_metrics`` are the evaluation's metrics, from which ``metric_names`` and ``csv_fields``
    (each also for the EMA weights, then the skipped-file count) follow.
    """

    model_kind: ClassVar[str] = ""
    build: ClassVar[Callable[..., nn.Module]]
    default_options: ClassVar[dict[str, Any]] = {}
    evaluation_metrics: ClassVar[tuple[str, ...]] = ()
    # (attribute, name in messages) that must equal the checkpoint's before it is evaluated on the data
    data_identity: ClassVar[tuple[str, str]] = ("classes", "classes")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ema = tuple(f"ema_{m}" for m in cls.evaluation_metrics)
        cls.metric_names = cls.evaluation_metrics + ema
        cls.csv_fields = [*cls.evaluation_metrics, *ema, "skipped_files"]

    def __init__(self, cfg: TrainConfig, need_train: bool = True) -> None:
        super().__init__(cfg, need_train)
        unknown = sorted(set(cfg.task.options) - set(self.default_options))
        if unknown:
            raise ConfigError(f"unknown task.options {unknown} for {self.name}; valid: "
                              f"{', '.join(self.default_options)}")
        self.options = {**self.default_options, **cfg.task.options}
        if cfg.distill.type != "none":
            raise ConfigError(f"distillation is a classification feature; set distill.type=none for {self.name}")
        self.trained_meta: dict[str, Any] = {}  # the checkpoint's metadata, when evaluating one

    @property
    def arch(self) -> str:
        """The architecture trained (``cfg.task.arch``)."""
        return str(self.cfg.task.arch)

    # --- model
    def arch_kwargs(self) -> dict[str, Any]:
        """The builder keywords the task's options set (before ``model.kwargs`` and the options' overrides)."""
        return dict(norm_eval=bool(self.options["norm_eval"]))

    def model_kwargs(self) -> dict[str, Any]:
        """The builder overrides this run uses (also stored in checkpoints as ``<model_kind>_kwargs``)."""
        m = self.cfg.model
        kwargs: dict[str, Any] = dict(self.arch_kwargs(), **dict(m.kwargs), **dict(self.options[self.model_kind] or {}))
        if m.drop_path > 0:
            kwargs["drop_path_rate"] = m.drop_path
        return kwargs

    def build_model(self, info: DistInfo) -> nn.Module:
        kwargs = self.model_kwargs()
        if self.cfg.task.backbone_checkpoint:
            kwargs["checkpoint"] = self.cfg.task.backbone_checkpoint
            log.info("backbone weights from %s", self.cfg.task.backbone_checkpoint)
        model = type(self).build(self.arch, self.cfg.model.name, num_classes=self.num_classes, **kwargs)
        return self.load_finetune_weights(model, self.model_kind)

    # --- bookkeeping
    def checkpoint_meta(self) -> dict[str, Any]:
        return dict(super().checkpoint_meta(), arch=self.arch, **{f"{self.model_kind}_kwargs": self.model_kwargs()})

    def check_resume(self, checkpoint: dict[str, Any]) -> None:
        super().check_resume(checkpoint)
        if checkpoint.get("arch") != self.arch:
            raise InvalidValueError(f"cannot resume: {self.cfg.resume} is a {checkpoint.get('arch')} checkpoint, but this "
                                    f"run trains {self.arch}")

    # --- trained models and their evaluation
    @classmethod
    def load_trained(cls, checkpoint: str | os.PathLike, ema: bool = False) -> tuple[nn.Module, dict[str, Any]]:
        """(model in eval mode, the checkpoint's metadata) of a checkpoint this task trained.

        The task's builder rebuilds the model from the checkpoint's ``<model_kind>_kwargs`` (without a backbone
        ``checkpoint``: the trained weights replace it).
        """
        ck = read_checkpoint(checkpoint)
        task = ck.get("task", "classification")
        if task != cls.name:
            hint = f"; {task_class(task).eval_command} evaluates those" if task in TASKS else ""
            raise InvalidValueError(f"{checkpoint} is not a {cls.name} checkpoint (task: {task}){hint}")
        kwargs = {k: v for k, v in ck[f"{cls.model_kind}_kwargs"].items() if k != "checkpoint"}
        model = cls.build(ck["arch"], ck["model_name"], num_classes=ck["num_classes"], **kwargs)
        weights = ck.get("ema") if ema else ck["model"]
        if weights is None:
            raise InvalidValueError(f"{checkpoint} has no EMA weights; drop --ema")
        model.load_state_dict(weights)
        return model.eval(), {k: v for k, v in ck.items() if k not in _TRAINING_STATE}

    @classmethod
    def for_checkpoint(cls, options: CheckpointEvaluation) -> tuple["DenseTask", nn.Module]:
        """The task of the checkpoint's training config, pointed at ``options.data`` (fp32), and its model."""
        model, meta = cls.load_trained(options.checkpoint, options.ema)
        cfg = config_from_dict({k: v for k, v in meta["config"].items() if k != "resume"})
        cfg.data.path, cfg.data.workers, cfg.train.device = options.data, options.workers, options.device
        cfg.train.amp = "none"
        if options.data == "shapes":
            cfg.output = str(Path(options.checkpoint).resolve().parent)  # the run directory holds its shapes/ data
        task = cls(cfg, need_train=False)
        task.trained_meta = meta
        return task, model

    def check_checkpoint_data(self) -> None:
        key, what = self.data_identity
        ours, trained = getattr(self, key), self.trained_meta[key]
        if ours != trained:
            raise InvalidValueError(f"{self.cfg.data.path} has other {what} ({len(ours)}) than the checkpoint was "
                                    f"trained on ({len(trained)})")

    def checkpoint_report(self, scores: dict[str, Any], skipped: list[str], info: DistInfo,
                          seconds: float) -> dict[str, Any]:
        """What the dense reports share; a task adds its scores with :meth:`report_scores`."""
        return dict(checkpoint=str(self.evaluation.checkpoint), arch=self.arch, backbone=self.model_name,
                    data=self.cfg.data.path, images=self.val_size, **self.report_scores(scores, skipped))

    def report_scores(self, scores: dict[str, Any], skipped: list[str]) -> dict[str, Any]:
        """The task's part of :meth:`checkpoint_report` (its scores, its skipped files and annotations)."""
        raise NotImplementedError
