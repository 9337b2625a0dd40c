"""Helpers shared by the training and dense-task tests: tiny configs, generated image folders, state
comparisons and the kill-mid-epoch-and-resume run (a module, not a test file: pytest does not collect it)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from leanvit.train import Trainer, TrainConfig, load_config, read_checkpoint, train

# Tiny, fast and still exercising the paper-recipe machinery (RandAugment, Mixup, erasing, EMA, AGC).
TINY = {
    "model.name": "efficientvit_m0", "model.img_size": 32, "data.path": "fake", "data.workers": 0,
    "data.fake_train_size": 48, "data.fake_val_size": 16, "data.fake_classes": 4, "train.batch_size": 8,
    "train.epochs": 2, "log.progress": False, "log.tensorboard": False,
}



def tiny_config(output: Path, recipe: str = "quick", **overrides: object) -> TrainConfig:
    """A config for a seconds-long run on fake data; ``overrides`` use dotted keys with '.' -> '__'."""
    sets = dict(TINY, output=str(output))
    sets.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_config(recipe, sets)


def make_image_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (40, 30), seed: int = 0,
                      splits: tuple[str, ...] = ("train", "val")) -> Path:
    """An ImageFolder tree of random-but-class-tinted PNG/JPEG images made with PIL."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for ci, (name, count) in enumerate(classes.items()):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
                arr[..., ci % 3] = np.clip(arr[..., ci % 3].astype(int) + 80, 0, 255).astype(np.uint8)
                ext = "png" if i % 2 else "jpg"
                Image.fromarray(arr).save(d / f"img_{i}.{ext}")
    return root


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bit-identical state dicts."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def last_metrics_row(run: Path) -> dict[str, float]:
    """The last row of ``run/metrics.csv`` as numbers (empty cells left out)."""
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for k, v in rows[-1].items() if v not in ("", None)}


class Killed(RuntimeError):
    """Raised by :func:`kill_mid_epoch_2`: the process 'dies'."""


def kill_mid_epoch_2(event: str, trainer: Trainer) -> None:
    """Trainer callback: die right after a periodic checkpoint in the middle of the second epoch."""
    if event == "checkpoint" and trainer.epoch == 1 and 0 < trainer.batches_done < trainer.batches_per_epoch:
        raise Killed


def killed_and_resumed(tmp_path: Path, config: Callable[..., TrainConfig], task_class: type) -> tuple[dict, dict]:
    """(uninterrupted run's last.ckpt, run killed mid epoch 2 and resumed: its last.ckpt), both read back.

    ``config(out, **more)`` builds the run's config for output ``out`` (``more``: e.g. ``resume``); runs go to
    ``tmp_path/ref`` and ``tmp_path/killed``. Asserts the kill left a mid-epoch checkpoint behind.
    """
    ref = config(tmp_path / "ref")
    train(ref, task=task_class(ref))
    out = tmp_path / "killed"
    first = config(out)
    with pytest.raises(Killed):
        train(first, callbacks=[kill_mid_epoch_2], task=task_class(first))
    mid = read_checkpoint(out / "last.ckpt")
    assert mid["counters"]["epoch"] == 1 and not mid["counters"]["epoch_complete"]
    resumed = config(out, resume=str(out / "last.ckpt"))
    train(resumed, task=task_class(resumed))
    return read_checkpoint(tmp_path / "ref" / "last.ckpt"), read_checkpoint(out / "last.ckpt")

