"""``leanvit eval`` against an accuracy computed independently (torchvision transforms, plain loop)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

import leanvit
from leanvit._flags import dataclass_from_args
from leanvit.cli import build_parser, main
from leanvit.dense.options import SegmentationEvalOptions
from leanvit.models.signal import signal_weights_
from leanvit.train import load_config, read_checkpoint, train
from leanvit.train.options import ClassificationEvalOptions

from helpers.training import make_image_folder

CLASSES = {"ant": 5, "bee": 3, "cat": 4, "dog": 2, "eel": 3, "fox": 1, "gnu": 2}


@torch.no_grad()
def _independent_metrics(model: torch.nn.Module, root: Path, img_size: int) -> dict[str, float]:
    cfg = model.leanvit_cfg
    tf = T.Compose([
        T.Resize(math.floor(img_size / cfg.crop_pct), interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(img_size), T.ToTensor(), T.Normalize(cfg.mean, cfg.std),
    ])
    model.eval()
    hit1 = hit5 = loss = n = 0
    for ci, name in enumerate(sorted(CLASSES)):
        for path in sorted((root / "val" / name).iterdir()):
            logits = model(tf(Image.open(path).convert("RGB"))[None])
            hit1 += int(logits.argmax(1).item() == ci)
            hit5 += int(ci in logits.topk(5, dim=1).indices[0].tolist())
            loss += F.cross_entropy(logits, torch.tensor([ci])).item()
            n += 1
    return dict(top1=100 * hit1 / n, top5=100 * hit5 / n, loss=loss / n, images=n)


def test_eval_weights_file_matches_independent_accuracy(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", CLASSES, splits=("val",))
    # signal weights: predictions that depend on the image, so accuracy is not one class's share
    model = signal_weights_(leanvit.create_model("efficientvit_m0", num_classes=len(CLASSES), img_size=32),
                            seed=3, img_size=32)
    weights = tmp_path / "w.safetensors"
    leanvit.save_checkpoint(model, weights)
    out = tmp_path / "res.json"
    rc = main(["eval", "efficientvit_m0", "--checkpoint", str(weights), "--data", str(root), "--img-size", "32",
               "--batch-size", "4", "--workers", "0", "--out", str(out), "--no-progress"])
    assert rc == 0
    got = json.loads(out.read_text())
    want = _independent_metrics(model, root, 32)
    assert got["images"] == want["images"] == sum(CLASSES.values())
    assert got["top1"] == pytest.approx(want["top1"]) and got["top5"] == pytest.approx(want["top5"])
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
    assert 0 < got["top1"] < 100 and got["images_per_s"] > 0
    fused = main(["eval", "efficientvit_m0", "--checkpoint", str(weights), "--data", str(root), "--img-size", "32",
                  "--workers", "0", "--fuse", "--out", str(tmp_path / "fused.json"), "--no-progress"])
    assert fused == 0
    f = json.loads((tmp_path / "fused.json").read_text())
    assert f["fused"] and f["top1"] == pytest.approx(want["top1"])
    assert f["loss"] == pytest.approx(want["loss"], rel=1e-3)


def test_eval_timm_weights_file(tmp_path: Path) -> None:
    # A timm-layout file: leanvit converts it on load; the reference is timm's own model.
    import timm

    root = make_image_folder(tmp_path / "data", CLASSES, splits=("val",))
    ref = signal_weights_(timm.create_model("efficientvit_m0", num_classes=len(CLASSES)), seed=5)
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    ref.leanvit_cfg = leanvit.get_config("efficientvit_m0")  # mean/std/crop for the independent transform
    want = _independent_metrics(ref, root, 224)
    assert main(["eval", "efficientvit_m0", "--checkpoint", str(tmp_path / "timm.pth"), "--data", str(root),
                 "--workers", "0", "--out", str(tmp_path / "r.json"), "--no-progress"]) == 0
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["num_classes"] == len(CLASSES) and got["img_size"] == 224
    assert got["top1"] == pytest.approx(want["top1"]) and got["loss"] == pytest.approx(want["loss"], rel=1e-4)


@pytest.mark.slow
def test_eval_training_checkpoint_and_its_ema(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", CLASSES)
    run = tmp_path / "run"
    train(load_config("quick", {"model.img_size": 32, "data.path": str(root), "output": str(run),
                                "train.batch_size": 4, "train.max_steps": 3, "ema.enable": True,
                                "ema.decay": 0.5, "log.progress": False, "log.tensorboard": False}))
    ck = read_checkpoint(run / "last.ckpt")
    for use_ema in (False, True):
        model = leanvit.create_model("efficientvit_m0", num_classes=len(CLASSES), img_size=32)
        model.load_state_dict(ck["ema"] if use_ema else ck["model"])
        want = _independent_metrics(model, root, 32)
        args = ["eval", "efficientvit_m0", "--checkpoint", str(run / "last.ckpt"), "--data", str(root),
                "--workers", "0", "--out", str(tmp_path / "r.json"), "--no-progress"] + (["--ema"] if use_ema else [])
        assert main(args) == 0
        got = json.loads((tmp_path / "r.json").read_text())
        assert got["img_size"] == 32 and got["ema"] == use_ema
        assert got["top1"] == pytest.approx(want["top1"]) and got["loss"] == pytest.approx(want["loss"], rel=1e-4)


def test_eval_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_image_folder(tmp_path / "data", {"a": 1, "b": 1}, splits=("val",))
    assert main(["eval", "shvit_s1", "--checkpoint", str(tmp_path / "none.pth"), "--data", str(root)]) == 1
    assert "checkpoint file not found" in capsys.readouterr().err
    weights = tmp_path / "w.safetensors"
    leanvit.save_checkpoint(leanvit.create_model("efficientvit_m0", num_classes=2, img_size=32), weights)
    assert main(["eval", "efficientvit_m0", "--checkpoint", str(weights), "--data", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    # A dense training checkpoint: the command that evaluates it is named (the task table), no KeyError.
    torch.save({"format": "leanvit-train-v1", "task": "segmentation", "model_name": "efficientvit_m0"},
               tmp_path / "seg.ckpt")
    assert main(["eval", "efficientvit_m0", "--checkpoint", str(tmp_path / "seg.ckpt"), "--data", str(root)]) == 1
    assert "is a segmentation checkpoint, not a classification one; use leanvit segment eval" in capsys.readouterr().err


def test_eval_task_command_flags_come_from_options_without_torch() -> None:
    # Every flag of eval / detect * / segment * / train is generated from an options dataclass (instant --help).
    code = ("import sys; from leanvit.cli import build_parser; "
            "[build_parser(c) for c in ('eval', 'train', 'detect', 'segment')]; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    args = build_parser("eval").parse_args(["eval", "shvit_s1", "--checkpoint", "c.pth", "--data", "d", "--amp",
                                            "bf16", "--no-progress", "--batch-size", "8"])
    assert dataclass_from_args(ClassificationEvalOptions, args) == ClassificationEvalOptions(
        model="shvit_s1", checkpoint="c.pth", data="d", amp="bf16", progress=False, batch_size=8)
    args = build_parser("segment").parse_args(["segment", "eval", "--checkpoint", "c", "--data", "d", "--scales",
                                               "0.5", "1", "--flip"])
    options = dataclass_from_args(SegmentationEvalOptions, args)
    assert (options.scales, options.flip, options.mode, options.batch_size, options.workers) == ([0.5, 1.0], True,
                                                                                                 None, 1, 2)
