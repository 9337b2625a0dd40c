"""The training loop: :func:`train` runs a :class:`TrainConfig` from one CPU to many GPUs.

The loop is task-generic: data, model, loss and evaluation come from a :class:`~leanvit.train.task.Task`
(classification by default; detection and segmentation in ``leanvit.dense``).

Per update: forward + the task's loss under autocast (classification: Mixup, DeiT distillation) -> NaN/inf
check (agreed by all processes) -> backward (grad scaler for fp16; no DDP sync inside accumulation) -> clipping
(AGC / norm / value) -> optimizer -> EMA -> schedule. Per epoch: BN statistics across processes,
evaluation (raw and EMA weights), CSV/TensorBoard row, checkpoints (rank 0, atomic).
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from timm.utils import ModelEmaV3, dispatch_clip_grad, distribute_bn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import build
from ..errors import InvalidValueError
from .config import TrainConfig, config_to_dict, save_config
from .distributed import DistInfo, all_reduce_sum, cleanup, gather_objects, init_distributed, name_collective_failures
from .engine import NonFiniteLossError, amp_dtype, autocast
from .metrics import RunLogger
from .preemption import PreemptionGuard, TrainingPreempted
from .recovery import select_resume
from .state import (FORMAT, CheckpointWriteError, capture_rng, link_or_copy, prune_epoch_checkpoints, restore_rng,
                    write_checkpoint)
from .task import TRAINER_CSV_FIELDS, Task, create_task

__all__ = ["Trainer", "train"]

log = logging.getLogger("leanvit.train")
Callback = Callable[[str, "Trainer"], None]


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class Trainer:
    """Holds everything of one run; :meth:`fit` trains. Built from a config (and a task), optionally resuming."""

    def __init__(self, cfg: TrainConfig, callbacks: list[Callback] | None = None, info: DistInfo | None = None,
                 task: Task | None = None) -> None:
        self.cfg = cfg
        self.task = task or create_task(cfg)
        self.callbacks = list(callbacks or [])
        self.info: DistInfo = info or init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
        self.out = Path(cfg.output)
        self.device = self.info.device
        if not self.info.is_main:
            logging.getLogger("leanvit.train").setLevel(logging.WARNING)
        # cfg.resume: a checkpoint, "auto" or None; afterwards the chosen file or None (see recovery.py)
        cfg, point = select_resume(cfg, self.info)
        self.cfg = cfg
        resume = point.state if point is not None else None
        if resume is not None:
            self.task.check_resume(resume)
        self.preemption = PreemptionGuard()
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        _seed_all(cfg.train.seed)  # identical initial weights on every process

        # --- data and model
        self.task.open_data(self.info)
        self.num_classes = self.task.num_classes
        model = self.task.build_model(self.info)
        if cfg.model.sync_bn and self.info.distributed:
            if self.device.type != "cuda":
                raise InvalidValueError("model.sync_bn needs CUDA (SyncBatchNorm cannot run on CPU/gloo); turn it off")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.frozen = self.task.frozen_modules(model)
        model.to(self.device)
        if cfg.model.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.dtype = amp_dtype(cfg.train.amp, self.device)
        self.ema = None
        if cfg.ema.enable:
            self.ema = ModelEmaV3(model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup)

        self.train_loader, self.val_loader, self.sampler = self.task.build_loaders(self.info)
        self.sampler.set_epoch(0)
        self.batches_per_epoch = len(self.train_loader)
        self.updates_per_epoch = build.updates_per_epoch(self.batches_per_epoch, cfg.train.accum_steps)

        # --- optimisation
        self.global_batch = cfg.train.batch_size * self.info.world_size * cfg.train.accum_steps
        self.lr = build.effective_lr(cfg, self.global_batch)
        self.optimizer = self.task.build_optimizer(model, self.lr)
        self.scheduler = build.build_scheduler(cfg, self.optimizer, self.updates_per_epoch, self.lr)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        self.task.build_loss(self.device)
        self.train_model: nn.Module = model
        if cfg.model.compile:
            self.train_model = torch.compile(model, mode=cfg.model.compile_mode)
        if self.info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.train_model, device_ids=ids)

        # --- counters (overwritten by resume)
        self.epoch = 0  # epoch in progress
        self.batches_done = 0  # micro-batches of self.epoch already trained
        self.global_step = 0  # optimizer updates
        self.best: dict[str, Any] = {"metric": None, "epoch": None}
        self.skipped: set[str] = set()
        self.images_seen = 0
        self.train_time = 0.0
        if resume is not None:
            self._restore(resume)
        if self.info.is_main:
            self._prepare_output()
        self.logger = RunLogger(self.out, self.info.is_main, cfg.log.csv, cfg.log.tensorboard,
                                resume_epoch=self._last_complete_epoch() if resume is not None else None,
                                fields=TRAINER_CSV_FIELDS + self.task.csv_fields)
        if resume is None:
            # Per-process training randomness (mixup, drop path) differs across ranks, as in DeiT.
            _seed_all(cfg.train.seed + self.info.rank)

    # ----------------------------------------------------------------------------------------- set-up
    @property
    def criterion(self) -> Any:
        """The task's loss module (classification), replaceable for fault-injection tests."""
        return self.task.criterion

    @criterion.setter
    def criterion(self, value: Any) -> None:
        self.task.criterion = value

    def _prepare_output(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in [*self.out.glob(".*.tmp"), *self.out.glob("checkpoints/.*.tmp")]:
            stale.unlink(missing_ok=True)  # temp files of a run killed while writing a checkpoint
        save_config(self.cfg, self.out / "config.yaml", extra=self.resolved())

    def resolved(self) -> dict[str, Any]:
        """Values derived at run time (saved beside the config)."""
        return dict(
            task=self.task.name, world_size=self.info.world_size, global_batch=self.global_batch, lr=self.lr,
            **self.task.resolved(), batches_per_epoch=self.batches_per_epoch, updates_per_epoch=self.updates_per_epoch,
            device=str(self.device), amp=str(self.dtype).replace("torch.", "") if self.dtype else "fp32",
        )

    def _last_complete_epoch(self) -> int:
        return self.epoch - 1

    def _restore(self, ck: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(ck["model"])
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1].strip()
            raise InvalidValueError(f"cannot resume from {self.cfg.resume}: its weights do not fit this "
                                    f"{self.task.model_name} ({first}); was it trained with other model options?") from e
        if self.ema is not None:
            if ck.get("ema") is None:
                log.warning("the checkpoint has no EMA weights; EMA restarts from the current weights")
                self.ema.module.load_state_dict(ck["model"])
            else:
                self.ema.module.load_state_dict(ck["ema"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        c = ck["counters"]
        self.epoch, self.batches_done, self.global_step = c["epoch"], c["batches_done"], c["global_step"]
        self.images_seen, self.train_time = c["images_seen"], c["train_time"]
        if c["epoch_complete"]:
            self.epoch, self.batches_done = self.epoch + 1, 0
        self.best = dict(ck["best"])
        self.skipped = set(ck.get("skipped", []))
        rngs = ck["rng"]
        if len(rngs) == self.info.world_size:
            restore_rng(rngs[self.info.rank])
        else:
            log.warning("resuming with %d processes instead of %d: RNG streams are re-seeded, so the run "
                        "continues correctly but not bit-identically", self.info.world_size, len(rngs))
            _seed_all(self.cfg.train.seed + 1000 * self.epoch + self.info.rank)
        log.info("resumed %s at epoch %d, batch %d (update %d)", self.cfg.resume, self.epoch, self.batches_done,
                 self.global_step)

    # ----------------------------------------------------------------------------------------- loop
    def _emit(self, event: str) -> None:
        for cb in self.callbacks:
            cb(event, self)

    def _set_train_mode(self) -> None:
        self.train_model.train()
        for m in self.frozen:  # frozen stages keep their BN statistics
            m.eval()

    def _reduced_loss(self, loss: torch.Tensor) -> float:
        value = loss.detach().float()
        if self.info.distributed:
            # Every process must take the same decision on a non-finite loss, or the others hang in all-reduce.
            value = value.clone()
            torch.distributed.all_reduce(value)
            value /= self.info.world_size
        return value.item()

    def train_step(self, inputs: Any, targets: Any, update: bool, group_size: int | None = None) -> float:
        """One micro-batch (on the device): forward, loss, backward; ``update`` also steps the optimizer.
        ``group_size``: how many micro-batches this update accumulates (default ``train.accum_steps``; fewer in
        an epoch's trailing partial group), the loss is divided by it. Returns the loss."""
        cfg = self.cfg
        sync = contextlib.nullcontext()
        if self.info.distributed and not update:
            sync = self.train_model.no_sync()
        with sync:
            with autocast(self.device, self.dtype):
                loss = self.task.loss(self.train_model, inputs, targets)
            value = self._reduced_loss(loss)
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"the training loss is {value} in epoch {self.epoch + 1}, update {self.global_step + 1}; "
                    f"training stopped before applying it. The last good checkpoint is {self.out / 'last.ckpt'}. Lower "
                    "the learning rate (optim.lr / optim.lr_base), enable clipping (optim.clip_grad), or use "
                    "train.amp=none/bf16 instead of fp16"
                )
            loss = loss / (group_size or cfg.train.accum_steps)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
        if update:
            self._optimizer_step()
        return value

    def _optimizer_step(self) -> None:
        o = self.cfg.optim
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if o.clip_grad:
            dispatch_clip_grad([p for p in self.model.parameters() if p.grad is not None], o.clip_grad, o.clip_mode)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step if self.cfg.ema.warmup else None)
        self.scheduler.step_update(self.global_step)

    def _stop_requested(self) -> bool:
        return self.cfg.train.max_steps is not None and self.global_step >= self.cfg.train.max_steps

    def train_epoch(self) -> dict[str, float]:
        """Train the rest of ``self.epoch``; stops early at ``train.max_steps``."""
        cfg = self.cfg
        accum = cfg.train.accum_steps
        self.sampler.set_epoch(self.epoch, self.batches_done * cfg.train.batch_size)
        self.scheduler.step(self.epoch)
        self.scheduler.step_update(self.global_step)
        self._set_train_mode()
        total = self.batches_per_epoch
        # disable=None: tqdm turns itself off when stderr is not a terminal (SLURM logs get log lines instead).
        show = cfg.log.progress and self.info.is_main
        first = self.batches_done
        bar = tqdm(total=total, initial=self.batches_done, desc=f"epoch {self.epoch + 1}/{cfg.train.epochs}",
                   disable=None if show else True, dynamic_ncols=True, leave=True)
        loss_sum, n_loss, images, t0 = 0.0, 0, 0, time.perf_counter()
        for images_b, targets_b, bad in self.train_loader:
            self._note_skipped(bad)
            images_b, targets_b = self.task.to_device(images_b, targets_b, self.device)
            i = self.batches_done
            update = (i + 1) % accum == 0 or i + 1 == total
            # the trailing partial group averages over its own micro-batches (as timm's train.py), not accum
            group = min(accum, total - i // accum * accum)
            loss = self.train_step(images_b, targets_b, update, group_size=group)
            self.batches_done += 1
            loss_sum, n_loss = loss_sum + loss, n_loss + 1
            images += self.task.batch_size(images_b) * self.info.world_size
            elapsed = time.perf_counter() - t0
            lr = self.optimizer.param_groups[0]["lr"]
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / n_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images / elapsed:.0f}",
                            refresh=False)
            if update:
                if self.global_step % cfg.train.log_interval == 0:
                    self.logger.scalar("train/loss", loss, self.global_step)
                    self.logger.scalar("train/lr", lr, self.global_step)
                    if show and bar.disable:
                        eta = (total - self.batches_done) * elapsed / max(self.batches_done - first, 1)
                        log.info("epoch %d [%d/%d] loss %.4f lr %.3e %.0f img/s, epoch ETA %.0fs", self.epoch + 1,
                                 self.batches_done, total, loss_sum / n_loss, lr, images / elapsed, eta)
                self._emit("step_end")
                if self._stop_requested():
                    break
                if self.preemption.agreed(self.info):  # every rank stops after this same update
                    break
                every = cfg.checkpoint.every_steps
                if every and self.global_step % every == 0 and self.batches_done < total:
                    self.save(epoch_complete=False)
        bar.close()
        elapsed = time.perf_counter() - t0
        self.images_seen += images
        self.train_time += elapsed
        return dict(train_loss=loss_sum / max(n_loss, 1), train_images_per_s=images / max(elapsed, 1e-9),
                    epoch_time_s=elapsed, lr=self.optimizer.param_groups[0]["lr"])

    def _note_skipped(self, paths: list[str]) -> None:
        for p in paths:
            if p not in self.skipped:
                self.skipped.add(p)
                log.warning("skipped unreadable image %s", p)

    def evaluate(self) -> dict[str, Any]:
        """Validation metrics of the raw weights (and the EMA weights when enabled)."""
        if self.info.distributed and self.cfg.train.dist_bn != "none":
            distribute_bn(self.model, self.info.world_size, reduce=self.cfg.train.dist_bn == "reduce")
        ev = dict(dtype=self.dtype, channels_last=self.cfg.model.channels_last, progress=self.cfg.log.progress)
        out, skipped = self.task.evaluate(self.model, self.val_loader, self.info, **ev)
        self._note_skipped(skipped)
        if self.ema is not None and self.cfg.ema.evaluate:
            e, _ = self.task.evaluate(self.ema.module, self.val_loader, self.info, ema=True, **ev)
            out.update(e)
        self._set_train_mode()
        return out

    def fit(self) -> dict[str, Any]:
        """Train until ``train.epochs`` (or ``train.max_steps``); returns the summary."""
        cfg = self.cfg
        t = self.task
        log.info("training %s on %s: %d train / %d val images, %d classes, %d process(es), global batch %d, lr %.3g",
                 t.model_name, t.description, t.train_size, t.val_size, self.num_classes, self.info.world_size, self.global_batch, self.lr)
        start = time.perf_counter()
        self.preemption.install()
        try:
            while self.epoch < cfg.train.epochs and not self._stop_requested():
                stats = self.train_epoch()
                complete = self.batches_done >= self.batches_per_epoch
                if self.preemption.stopping and not complete:
                    self._stop_preempted(save=True)
                last = self.epoch + 1 == cfg.train.epochs or self._stop_requested()
                row: dict[str, Any] = dict(epoch=self.epoch, global_step=self.global_step, **stats)
                is_best = False
                if last or (self.epoch + 1) % max(cfg.train.eval_every, 1) == 0:
                    row.update(self.evaluate())
                    main = self.task.default_metric
                    metric = row.get(self.task.best_metric, row[main])
                    if self.best["metric"] is None or metric > self.best["metric"]:
                        self.best = {"metric": metric, "epoch": self.epoch, main: row[main]}
                        is_best = True
                row["skipped_files"] = len(self.skipped)
                self.logger.epoch_row(row)
                log.info("epoch %d: %s", self.epoch + 1, ", ".join(
                    f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)))
                self.save(epoch_complete=complete, is_best=is_best)
                self._emit("epoch_end")
                if complete:
                    self.epoch, self.batches_done = self.epoch + 1, 0
                if self.preemption.agreed(self.info) and self.epoch < cfg.train.epochs and not self._stop_requested():
                    self._stop_preempted(save=False)  # the epoch's checkpoint holds this step
            summary = self._summary(time.perf_counter() - start)
            self.logger.summary(self.out, summary)
            return summary
        finally:
            self.preemption.uninstall()
            self.logger.close()

    def _stop_preempted(self, save: bool) -> None:
        """After a preemption signal: write this step's checkpoint (rank 0) and leave :meth:`fit`."""
        if save:
            self.save(epoch_complete=False)
        raise TrainingPreempted(self.preemption.signal_name, self.out / "last.ckpt", self.global_step)

    def _summary(self, wall: float) -> dict[str, Any]:
        skipped = sorted(set().union(*gather_objects(sorted(self.skipped), self.info)))
        return dict(
            model=self.task.model_name, output=str(self.out), epochs=self.epoch, global_step=self.global_step,
            best_metric=self.task.best_metric, best=self.best["metric"], best_epoch=self.best["epoch"],
            **{f"best_{self.task.default_metric}": self.best.get(self.task.default_metric)}, wall_time_s=round(wall, 2), train_time_s=round(self.train_time, 2),
            train_images_per_s=round(self.images_seen / max(self.train_time, 1e-9), 1),
            skipped_files=len(skipped), skipped_paths=skipped[:50],
        )

    # ----------------------------------------------------------------------------------------- checkpoints
    def state(self, epoch_complete: bool, rng: list[dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint dict (tensors and plain containers only)."""
        return {
            "format": FORMAT,
            **self.task.checkpoint_meta(),
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "counters": dict(epoch=self.epoch, batches_done=self.batches_done, global_step=self.global_step,
                             epoch_complete=epoch_complete, images_seen=self.images_seen, train_time=self.train_time),
            "best": dict(self.best),
            "skipped": sorted(self.skipped),
            "rng": rng,
            "config": config_to_dict(self.cfg),
        }

    def save(self, epoch_complete: bool, is_best: bool = False) -> None:
        """Write last.ckpt (+ the epoch file and best.ckpt) on rank 0; all processes agree on failure."""
        rng = gather_objects(capture_rng(), self.info)  # every process's RNG, for an exact resume
        error = None
        if self.info.is_main:
            try:
                last = write_checkpoint(self.state(epoch_complete, rng), self.out / "last.ckpt")
                if epoch_complete and self.cfg.checkpoint.keep_last > 0:
                    folder = self.out / "checkpoints"
                    link_or_copy(last, folder / f"epoch_{self.epoch:04d}.ckpt")
                    prune_epoch_checkpoints(folder, self.cfg.checkpoint.keep_last)
                if is_best:
                    link_or_copy(last, self.out / "best.ckpt")
            except CheckpointWriteError as e:
                error = e
            except OSError as e:  # the epoch / best copies
                error = CheckpointWriteError(f"could not write a checkpoint copy in {self.out}: {e}")
        failed = all_reduce_sum([1.0 if error else 0.0], self.info)[0]
        if error is not None:
            raise error
        if failed:
            raise CheckpointWriteError("rank 0 could not write a checkpoint; see its error")
        self._emit("checkpoint")


def train(cfg: TrainConfig, callbacks: list[Callback] | None = None, task: Task | None = None) -> dict[str, Any]:
    """Train ``task`` (default: the one ``cfg.task.name`` names) according to ``cfg``; returns the summary
    (best metric, time, images/s, skipped files)."""
    info = init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
    # Process-wide settings a run may change (threads, determinism) are restored afterwards, so that
    # calling train() from a notebook or a test session leaves the process as it was.
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    restart_hint = f"Under torchrun --max-restarts=N the job restarts by itself and continues from {cfg.output}."
    try:
        with name_collective_failures(info, restart_hint):
            return Trainer(cfg, callbacks, info, task).fit()
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        torch.backends.cudnn.benchmark = saved[3]
        cleanup(info)
