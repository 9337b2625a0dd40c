"""What detection and segmentation share as :class:`leanvit.train.task.Task` s: an architecture
(``cfg.task.arch``) on a leanvit backbone (``cfg.model.name``), ``cfg.task.options`` checked against the
task's defaults, ImageNet weights for the backbone (``cfg.task.backbone_checkpoint``), the model's
builder keywords stored in every checkpoint, and a resume only into the same architecture.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, ClassVar

from torch import nn

from ..errors import InvalidValueError
from ..train.config import ConfigError, TrainConfig
from ..train.distributed import DistInfo
from ..train.task import Task

__all__ = ["DenseTask"]

log = logging.getLogger("leanvit.train")


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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ema = tuple(f"ema_{m}" for m in cls.evaluation_metrics)
        cls.metric_names = cls.evaluation_metrics + ema
        cls.csv_fields = [*cls.evaluation_metrics, *ema, "skipped_files"]

    def __init__(self, cfg: TrainConfig, need_train: bool = True) -> None:
        super().__init__(cfg)
        unknown = sorted(set(cfg.task.options) - set(self.default_options))
        if unknown:
            raise ConfigError(f"unknown task.options {unknown} for {self.name}; valid: "
                              f"{', '.join(self.default_options)}")
        self.options = {**self.default_options, **cfg.task.options}
        if cfg.distill.type != "none":
            raise ConfigError(f"distillation is a classification feature; set distill.type=none for {self.name}")
        self.need_train = need_train

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
