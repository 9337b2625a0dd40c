"""Shared test helpers: the vendored paper numbers, and logit checks relative to the logits' spread."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from leanvit.models.signal import logit_agreement
from leanvit.train import Trainer, load_config
from leanvit.train.data import DigitsSource

DATA_DIR = Path(__file__).resolve().parent / "data"
CONV_FAMILY_MODELS = [f"shvit_s{i}" for i in range(1, 5)] + [f"efficientvit_m{i}" for i in range(6)]


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # One thread: two-thread torch stalls badly when the other core is busy (measured 1.5 s vs 13 ms a call).
    torch.set_num_threads(1)


def paper_tables() -> dict:
    """Per-variant targets, vendored from the project spec (tests/data/paper_tables.json)."""
    return json.loads((DATA_DIR / "paper_tables.json").read_text())["variants"]


def assert_logits_close(reference: torch.Tensor, output: torch.Tensor, rel: float, top1: float = 1.0) -> dict:
    """``output``'s max error is at most ``rel`` x the spread of ``reference`` across the batch, and at least
    ``top1`` of the rows pick the same class. (batch, ...) tensors; everything after the batch is flattened."""
    stats = logit_agreement(reference.flatten(1), output.flatten(1))
    assert stats["spread"] > 1e-3, f"reference barely depends on its input: {stats}"
    assert stats["relative_error"] <= rel and stats["top1_agreement"] >= top1, stats
    return stats


DIGITS_SIDE = 32


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> dict[str, Path]:
    """efficientvit_m0 trained on scikit-learn's real digits (32 px, 4 epochs), with image folders:
    ``calib`` (96 training images, flat), ``tune`` (200 other training images, class folders) and ``val``
    (the 360 held-out digits, class folders)."""
    root = tmp_path_factory.mktemp("digits")
    cfg = load_config("quick", {"model.name": "efficientvit_m0", "model.img_size": DIGITS_SIDE, "data.path": "digits",
                                "train.epochs": 4, "output": str(root / "run"), "log.progress": False,
                                "log.tensorboard": False})
    Trainer(cfg).fit()
    train, val = DigitsSource("train"), DigitsSource("val")
    (root / "calib").mkdir()
    for i in range(96):
        train.load(i)[0].save(root / "calib" / f"{i:03d}.png")
    for folder, source, indices in (("tune", train, range(96, 296)), ("val", val, range(len(val)))):
        for i in indices:
            img, label = source.load(i)
            (root / folder / str(label)).mkdir(parents=True, exist_ok=True)
            img.save(root / folder / str(label) / f"{i:03d}.png")
    return {"ckpt": root / "run" / "best.ckpt", "calib": root / "calib", "tune": root / "tune", "val": root / "val",
            "root": root}
