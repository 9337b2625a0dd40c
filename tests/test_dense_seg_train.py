"""Segmentation training through leanvit's one loop: synthetic class maps -> loader -> training -> mIoU.

Quality only, never time: small segmentors must fit a fixed set of synthetic images (evaluated on those same
images, as in the detection tests: randomly initialised backbones do not generalise in CPU minutes). Also: a
resume from a mid-epoch checkpoint gives the uninterrupted run's weights, and `leanvit segment eval / predict /
export` work on the trained checkpoint.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from leanvit.cli import main as cli_main
from leanvit.dense.ade20k import write_shapes_segmentation
from leanvit.dense.segmentation_task import SegmentationTask
from leanvit.train import Trainer, load_config, train

from helpers.training import killed_and_resumed, last_metrics_row, state_equal


FIT_IMAGES, FIT_SIZE = 8, 128


def _sets(out: Path, arch: str, data: str, steps: int | None, size: int = FIT_SIZE, **extra: Any) -> dict[str, Any]:
    head = {"channels": 64, "neck_channels": 64} if arch == "semantic_fpn" else {"channels": 64, "aux_channels": 32}
    sets = {
        "task.name": "segmentation", "task.arch": arch, "model.name": "efficientvit_m0", "data.path": data,
        "data.train_split": "train", "data.val_split": "val",
        # Random init: BatchNorm learns its statistics (norm_eval off); no augmentation on a set to memorise.
        "task.options": {"crop_size": size, "scale": [size, size], "ratio_range": [1.0, 1.0], "flip": 0.0,
                         "photometric": False, "eval_scale": [size, size], "norm_eval": False, "segmentor": head,
                         "shapes": {"train": 4, "val": 2, "size": size}},
        "optim.opt": "adamw", "optim.lr": 2e-3, "optim.weight_decay": 1e-4, "sched.sched": "poly",
        "sched.step_on": "update", "sched.decay_rate": 0.9, "sched.warmup_steps": 10, "sched.min_lr": 0.0,
        "train.epochs": 1000, "train.max_steps": steps, "train.batch_size": 4, "train.eval_every": 1000,
        "data.workers": 0, "data.drop_last": True, "output": str(out), "log.progress": False,
        "log.tensorboard": False, "checkpoint.keep_last": 0,
    }
    sets.update(extra)
    return sets


@pytest.fixture(scope="module")
def fit_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FIT_IMAGES fixed scenes whose val split is the train split."""
    root = write_shapes_segmentation(tmp_path_factory.mktemp("fit"), FIT_IMAGES, 1, seed=0, size=FIT_SIZE)
    for kind in ("images", "annotations"):
        shutil.rmtree(root / kind / "val")
        shutil.copytree(root / kind / "train", root / kind / "val")
    return root


def _fit(tmp: Path, arch: str, root: Path, steps: int) -> tuple[dict[str, float], dict[str, float]]:
    cfg = load_config(None, _sets(tmp / arch, arch, str(root), steps))
    trainer = Trainer(cfg, task=SegmentationTask(cfg))
    untrained = trainer.evaluate()
    trainer.fit()
    return untrained, last_metrics_row(tmp / arch)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_semantic_fpn_fits_then_eval_predict_and_export(tmp_path: Path, fit_root: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    # Measured here: untrained mIoU 10.5 %, 80.3 % after 60 updates, 94.5 % after 150.
    untrained, row = _fit(tmp_path, "semantic_fpn", fit_root, steps=80)
    assert untrained["mIoU"] < 30
    assert row["mIoU"] >= 60, row
    ckpt = tmp_path / "semantic_fpn" / "last.ckpt"

    # `leanvit segment eval` reproduces the training-time evaluation from the checkpoint and writes JSON.
    out_json = tmp_path / "eval.json"
    assert cli_main(["segment", "eval", "--checkpoint", str(ckpt), "--data", str(fit_root), "--out", str(out_json),
                     "--workers", "0", "--no-progress", "--device", "cpu"]) == 0
    assert "mIoU" in capsys.readouterr().out
    metrics = json.loads(out_json.read_text())
    assert metrics["mIoU"] == pytest.approx(row["mIoU"], abs=1e-3)

    # `leanvit segment predict` writes a colourised mask and an overlay per image.
    image = fit_root / "images" / "train" / "train_000000.png"
    drawn = tmp_path / "drawn"
    assert cli_main(["segment", "predict", str(image), "--checkpoint", str(ckpt), "--out", str(drawn)]) == 0
    mask = np.asarray(Image.open(drawn / "train_000000_mask.png"))
    overlay = np.asarray(Image.open(drawn / "train_000000_overlay.png"))
    original = np.asarray(Image.open(image).convert("RGB"))
    assert mask.shape == overlay.shape == original.shape
    assert len(np.unique(mask.reshape(-1, 3), axis=0)) >= 2 and (overlay != original).any()

    # `leanvit segment export`: ONNX with a free image size, verified against PyTorch.
    onnx = tmp_path / "seg.onnx"
    assert cli_main(["segment", "export", "--checkpoint", str(ckpt), "--output", str(onnx), "--size", "64", "64"]) == 0
    assert onnx.is_file() and "OK: max abs diff" in capsys.readouterr().out
    # `leanvit export` takes the segmentation checkpoint too; OpenVINO IR with its weights beside it.
    xml = tmp_path / "seg.xml"
    assert cli_main(["export", str(ckpt), "--format", "openvino", "--output", str(xml), "--img-size", "64"]) == 0
    assert xml.is_file() and xml.with_suffix(".bin").is_file() and "OK: max abs diff" in capsys.readouterr().out
    assert cli_main(["export", str(ckpt), "--format", "torchscript", "--output", str(tmp_path / "s.pt")]) == 2
    assert "segmentors export to onnx or openvino" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_upernet_fits_a_fixed_set(tmp_path: Path, fit_root: Path) -> None:
    # Measured here: untrained mIoU 3.9 %, 44.5 % after 60 updates, 87.1 % after 120.
    untrained, row = _fit(tmp_path, "upernet", fit_root, steps=120)
    assert untrained["mIoU"] < 30
    assert row["mIoU"] >= 60, row


# ------------------------------------------------------------------------------------------ resume
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_resume_mid_epoch_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    # The official pipeline's random parts on (rescale, crop, flip, photometric, dropout): every RNG stream
    # must resume exactly. 4 images, 2 per step: 2 updates per epoch, 2 epochs; the first run dies after update 3.
    def cfg(out: Path, **more: Any) -> Any:
        c = load_config(None, _sets(out, "upernet", "shapes", None, size=64, **{
            "checkpoint.every_steps": 1, "train.deterministic": True, "train.epochs": 2, "train.batch_size": 2},
            **more))
        c.task.options.update(crop_size=48, scale=[64, 64], ratio_range=[0.5, 2.0], flip=0.5, photometric=True)
        return c

    a, b = killed_and_resumed(tmp_path, cfg, SegmentationTask)
    assert a["counters"]["global_step"] == b["counters"]["global_step"] == 4
    assert state_equal(a["model"], b["model"])
    assert last_metrics_row(tmp_path / "ref")["mIoU"] == last_metrics_row(tmp_path / "killed")["mIoU"]


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_of_another_head(tmp_path: Path) -> None:
    first = load_config(None, _sets(tmp_path / "run", "semantic_fpn", "shapes", 1, size=64))
    train(first, task=SegmentationTask(first))
    other = load_config(None, _sets(tmp_path / "run2", "upernet", "shapes", 2, size=64,
                                    resume=str(tmp_path / "run" / "last.ckpt")))
    with pytest.raises(ValueError, match="is a semantic_fpn checkpoint, but this run trains upernet"):
        train(other, task=SegmentationTask(other))
