"""``leanvit segment train | eval | predict`` end to end on the synthetic shapes scenes (a few CPU updates).

Not a quality test (docs/benchmarks.md shows why CPU minutes do not train a segmentor): the commands run, a
checkpoint's evaluation reproduces the training-time one, predictions are written, and errors are clear.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leanvit.cli import main as cli_main

SIZE = 64
_SETS = [
    "task.options={crop_size: 64, scale: [96, 64], eval_scale: [96, 64], photometric: false, "
    "shapes: {train: 4, val: 2, size: 64}, segmentor: {channels: 32, neck_channels: 32}}",
    "data.train_split=train", "data.val_split=val", "data.workers=0", "train.eval_every=1",
    "log.progress=false", "log.tensorboard=false", "checkpoint.keep_last=0",
]


def _train_args(out: Path) -> list[str]:
    args = ["segment", "train", "--recipe", "semantic_fpn_shvit_s4_80k", "--model", "efficientvit_m0", "--data",
            "shapes", "--output", str(out), "--epochs", "1", "--batch-size", "2", "--max-steps", "2"]
    for item in _SETS:
        args += ["--set", item]
    return args


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_segment_train_eval_predict_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert cli_main(_train_args(out)) == 0
    printed = capsys.readouterr().out
    assert f"outputs in {out}" in printed and printed.startswith("best mIoU ")
    with open(out / "metrics.csv") as f:
        row = list(csv.DictReader(f))[-1]
    ckpt = out / "last.ckpt"

    # `leanvit segment eval` reproduces the training-time evaluation from the checkpoint and writes JSON.
    out_json = tmp_path / "eval.json"
    assert cli_main(["segment", "eval", "--checkpoint", str(ckpt), "--data", "shapes", "--out", str(out_json),
                     "--workers", "0", "--device", "cpu", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("mIoU ")
    result = json.loads(out_json.read_text())
    assert result["images"] == 2 and result["arch"] == "semantic_fpn" and result["backbone"] == "efficientvit_m0"
    assert result["mIoU"] == pytest.approx(float(row["mIoU"]), abs=1e-4)

    # `leanvit segment predict` writes a colour mask and an overlay of the image's size.
    image = out / "shapes" / "images" / "val" / "val_000000.png"
    drawn = tmp_path / "drawn"
    assert cli_main(["segment", "predict", str(image), "--checkpoint", str(ckpt), "--out", str(drawn)]) == 0
    assert "val_000000_mask.png" in capsys.readouterr().out
    for name in ("val_000000_mask.png", "val_000000_overlay.png"):
        assert np.asarray(Image.open(drawn / name)).shape == (SIZE, SIZE, 3)

    # A missing checkpoint: a one-line error, exit code 1.
    assert cli_main(["segment", "eval", "--checkpoint", str(tmp_path / "missing.ckpt"), "--data", "shapes"]) == 1


def test_segment_train_refuses_missing_and_foreign_recipes(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["segment", "train", "--print-config"]) == 2
    assert "pass --recipe" in capsys.readouterr().err
    assert cli_main(["segment", "train", "--recipe", "retinanet_shvit_s4_1x", "--print-config"]) == 2
    assert "is a detection recipe, not segmentation" in capsys.readouterr().err
    assert cli_main(["segment", "train", "--recipe", "semantic_fpn_shvit_s4_80k", "--data", "shapes",
                     "--backbone-checkpoint", "w.pth", "--print-config"]) == 0
    assert "backbone_checkpoint: w.pth" in capsys.readouterr().out
