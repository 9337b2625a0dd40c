"""Detection data: the synthetic shapes set, the COCO-format loader and its bad-data handling, COCO AP,
the 1x schedule and parameter groups, the detect CLI's parser. No training here (see test_dense_train.py)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from leanvit.cli import main as cli_main
from leanvit.dense.coco import CocoDetection, RandomHorizontalFlip, coco_split, hflip, read_coco_json
from leanvit.dense.coco_eval import coco_evaluate, detections_to_coco, format_table
from leanvit.dense.detection_task import DetectionTask
from leanvit.dense.shapes import SHAPE_CLASSES, render_scene, semantic_map, shapes_coco, write_shapes_coco
from leanvit.train import ConfigError, load_config
from leanvit.train.build import build_optimizer, build_scheduler, name_rule_param_groups
from leanvit.train.data import SampleDataset
from leanvit.train.task import TASKS, task_class


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes_coco(tmp_path_factory.mktemp("shapes"), train_images=6, val_images=3, size=96)


def _copy(root: Path, tmp: Path) -> Path:
    dst = tmp / "coco"
    shutil.copytree(root, dst)
    return dst


def _edit(root: Path, split: str, edit) -> None:
    path = root / "annotations" / f"instances_{split}2017.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------------------------------ synthetic set
def test_scenes_are_deterministic_exact_and_varied() -> None:
    a, b = render_scene(3, seed=7, size=128), render_scene(3, seed=7, size=128)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.image, render_scene(4, seed=7, size=128).image)
    for scene in (render_scene(i, seed=0, size=128) for i in range(8)):
        assert 1 <= len(scene.labels) <= 4 and set(scene.labels) <= {1, 2, 3}
        assert not (scene.masks.sum(0) > 1).any()  # objects never overlap
        for mask, box in zip(scene.masks, scene.boxes):
            ys, xs = np.nonzero(mask)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # tight, exact
            assert mask.sum() >= 64
        sem = semantic_map(scene)
        assert set(np.unique(sem)) == {0, *scene.labels.tolist()}
        assert (sem > 0).sum() == scene.masks.sum()
    labels = np.concatenate([render_scene(i, 0, 128).labels for i in range(30)])
    assert set(labels) == {1, 2, 3}, "all three classes appear"


def test_shapes_go_through_the_coco_loader_unchanged(shapes_root: Path) -> None:
    images, coco = shapes_coco(6, seed=0, size=96, file_prefix="train")
    ds = CocoDetection(coco_split(shapes_root, "train"), train=True, masks=True, label_offset=1)
    assert ds.classes == list(SHAPE_CLASSES) and len(ds) == 6 and not ds.skipped
    for i in range(6):
        image, target = ds.load(i)
        scene = render_scene(i, seed=0, size=96)
        assert image.dtype == torch.float32 and image.shape == (3, 96, 96)
        assert torch.equal((image * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(scene.image))
        assert torch.equal(target["boxes"], torch.from_numpy(scene.boxes))
        assert target["labels"].tolist() == scene.labels.tolist()  # R-CNN: 1..3, background 0
        assert torch.equal(target["masks"].bool(), torch.from_numpy(scene.masks))
    retina = CocoDetection(coco_split(shapes_root, "train"), train=True, label_offset=0)
    assert retina.load(0)[1]["labels"].tolist() == (render_scene(0, 0, 96).labels - 1).tolist()


def test_flip_mirrors_image_boxes_and_masks(shapes_root: Path) -> None:
    ds = CocoDetection(coco_split(shapes_root, "train"), train=True, masks=True)
    image, target = ds.load(0)
    fi, ft = hflip(image, target)
    assert torch.equal(fi, image.flip(-1)) and torch.equal(ft["masks"], target["masks"].flip(-1))
    for mask, box in zip(ft["masks"], ft["boxes"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    # The training flip is a pure function of (seed, epoch, rank, position): resumable, worker-independent.
    samples = SampleDataset(ds, RandomHorizontalFlip(0.5), seed=0)
    flips = [torch.equal(samples[(e, 0, 0, 0)][0], image.flip(-1)) for e in range(20)]
    assert flips == [torch.equal(samples[(e, 0, 0, 0)][0], image.flip(-1)) for e in range(20)]
    assert 3 <= sum(flips) <= 17


# ------------------------------------------------------------------------------------------ bad data
def test_bad_annotations_and_files_are_skipped_and_counted(shapes_root: Path, tmp_path: Path) -> None:
    root = _copy(shapes_root, tmp_path)

    def damage(data: dict) -> None:
        anns = data["annotations"]
        anns[0]["bbox"] = [10, 10, 0.5, 20]  # degenerate
        anns[1]["bbox"] = [500, 500, 20, 20]  # outside the image
        anns[2]["bbox"] = [-10, -10, 30, 40]  # partly outside: clipped
        anns[3]["iscrowd"] = 1
        anns.append(dict(anns[4], id=999, category_id=77))  # unknown category
        image_ids = {a["image_id"] for a in anns}
        data["annotations"] = [a for a in anns if a["image_id"] != 6]  # image 6 has no annotations left
        data["images"].append(dict(id=100, file_name="missing.png", width=96, height=96))
        assert 6 in image_ids

    _edit(root, "train", damage)
    ds = CocoDetection(coco_split(root, "train"), train=True, masks=True)
    s = ds.skipped
    assert s["degenerate_boxes"] == 1 and s["out_of_image_boxes"] == 1 and s["crowd_annotations"] == 1
    assert s["malformed_annotations"] == 1 and s["missing_files"] == 1 and s["images_without_annotations"] >= 1
    for i in range(len(ds)):  # every remaining box is valid and inside its image
        _, t = ds.load(i)
        b = t["boxes"]
        assert len(b) and (b[:, 2:] - b[:, :2] >= 1).all() and (b >= 0).all() and (b <= 96).all()
    val = CocoDetection(coco_split(root, "val"), train=False)
    assert len(val) == 3, "evaluation keeps every image whose file exists"


def test_corrupt_image_is_skipped_at_load_time(shapes_root: Path, tmp_path: Path) -> None:
    root = _copy(shapes_root, tmp_path)
    (root / "train2017" / "train_000001.png").write_bytes(b"not a png")
    ds = SampleDataset(CocoDetection(coco_split(root, "train"), train=True))
    image, target, skipped = ds[1]
    assert skipped == (str(root / "train2017" / "train_000001.png"),)
    assert target["image_id"] == 3 and image.shape == (3, 96, 96)  # the next image instead


def test_unusable_data_gives_clear_errors(shapes_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        coco_split(tmp_path / "nothing", "train")
    root = _copy(shapes_root, tmp_path)
    with pytest.raises(FileNotFoundError, match="instances_test2017.json"):
        coco_split(root, "test")
    for f in (root / "train2017").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="no usable training images.*missing_files 6"):
        CocoDetection(coco_split(root, "train"), train=True)
    bad = tmp_path / "bad.json"
    bad.write_text("{\"images\": [")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_coco_json(bad)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="no annotations, categories"):
        read_coco_json(bad)


# ------------------------------------------------------------------------------------------ COCO AP
def _perfect_outputs(ds: CocoDetection) -> tuple[list[dict], list[int]]:
    outs, ids = [], []
    for i in range(len(ds)):
        _, t = ds.load(i)
        outs.append(dict(boxes=t["boxes"], labels=t["labels"], scores=torch.ones(len(t["labels"])),
                         masks=t["masks"][:, None].float()))
        ids.append(t["image_id"])
    return outs, ids


def test_coco_ap_perfect_noisy_and_empty(shapes_root: Path) -> None:
    ds = CocoDetection(coco_split(shapes_root, "val"), train=False, masks=True)
    outs, ids = _perfect_outputs(ds)
    results = detections_to_coco(outs, ids, ds.category_ids, ds.label_offset)
    perfect = coco_evaluate(ds.coco, results, ("bbox", "segm"))
    assert perfect["bbox_AP"] == pytest.approx(1.0) and perfect["segm_AP"] == pytest.approx(1.0)
    assert "bbox" in format_table(perfect) and "100.00" in format_table(perfect)
    gen = torch.Generator().manual_seed(0)
    for o in outs:  # shift boxes, add a wrong-class false positive
        o["boxes"] = o["boxes"] + torch.randn(o["boxes"].shape, generator=gen) * 3
        o["scores"] = torch.rand(len(o["scores"]), generator=gen)
    noisy = detections_to_coco(outs, ids, ds.category_ids, ds.label_offset)
    fast = coco_evaluate(ds.coco, noisy, ("bbox",), backend="faster_coco_eval")
    ref = coco_evaluate(ds.coco, noisy, ("bbox",), backend="pycocotools")
    assert 0 < fast["bbox_AP"] < 1
    for k in fast:
        assert fast[k] == pytest.approx(ref[k], abs=1e-4), k
    assert coco_evaluate(ds.coco, [], ("bbox",))["bbox_AP"] == 0.0


# ------------------------------------------------------------------------------------------ 1x recipe
def test_official_1x_recipe_schedule_and_decay_groups() -> None:
    cfg = load_config("mask_rcnn_shvit_s4_1x")
    assert (cfg.task.name, cfg.task.arch, cfg.model.name) == ("detection", "mask_rcnn", "shvit_s4")
    model = torch.nn.Sequential()
    model.add_module("conv", torch.nn.Conv2d(3, 4, 3))
    model.add_module("bn", torch.nn.BatchNorm2d(4))
    model.conv.register_parameter("attention_biases", torch.nn.Parameter(torch.zeros(4, 49)))
    groups = name_rule_param_groups(model, 0.05, cfg.optim.no_decay_names)
    assert [len(g["params"]) for g in groups] == [4, 1]  # norms and biases ARE decayed, as mmcv does
    lr = 1e-4 * 16 / cfg.optim.lr_base_size  # 16 images per step
    opt = build_optimizer(cfg, model, lr)
    upe = 100  # updates per epoch
    sched = build_scheduler(cfg, opt, upe, lr)

    def lr_at(step: int) -> float:
        sched.step_update(step)
        return opt.param_groups[0]["lr"]

    assert lr_at(0) == pytest.approx(lr * 0.001)
    assert lr_at(250) == pytest.approx(lr * (1 - (1 - 250 / 500) * (1 - 0.001)))  # mmdet's linear warm-up
    assert lr_at(500) == pytest.approx(lr)
    assert lr_at(8 * upe - 1) == pytest.approx(lr)  # the last update of epoch 8 still at the full lr
    assert lr_at(8 * upe) == pytest.approx(lr * 0.1)  # epoch 9 starts decayed
    assert lr_at(11 * upe - 1) == pytest.approx(lr * 0.1)
    assert lr_at(11 * upe) == pytest.approx(lr * 0.01)


def test_detect_cli_help_recipe_and_errors(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["detect", "train", "--recipe", "retinanet_shvit_s4_1x", "--data", "shapes", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "arch: retinanet" in out and "name: shvit_s4" in out and "min_size: 800" in out
    for sub in ("train", "eval", "predict"):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["detect", sub, "--help"])
        assert exit_info.value.code == 0 and f"usage: leanvit detect {sub}" in capsys.readouterr().out
    assert cli_main(["detect", "predict", "nope.png", "--checkpoint", "x.ckpt", "--out", "o"]) == 1
    assert "not found: nope.png" in capsys.readouterr().err
    assert cli_main(["detect", "train", "--recipe", "quick", "--print-config"]) == 2  # a classification recipe
    assert "not detection" in capsys.readouterr().err


@pytest.mark.parametrize("sets, message", [
    ({"task.arch": None}, "needs task.arch"),
    ({"task.arch": "yolo"}, "unknown detector 'yolo'"),
    ({"task.options": {"min_sise": 64}}, "unknown task.options \\['min_sise'\\]"),
    ({"checkpoint.best_metric": "top1"}, "not a detection metric"),
    ({"distill.type": "soft", "distill.teacher_checkpoint": "t.pth"}, "distillation is a classification feature"),
])
def test_bad_detection_configs_are_refused(sets: dict, message: str) -> None:
    cfg = load_config("faster_rcnn_shvit_s4_1x", sets)
    with pytest.raises(ValueError, match=message):
        DetectionTask(cfg)


def test_tasks_are_found_by_name_without_import_side_effects() -> None:
    # TASKS names each task's class; importing leanvit.dense (or leanvit.train) imports and registers nothing.
    code = ("import sys, leanvit.dense, leanvit.train.task as t; before = dict(t.TASKS); "
            "tasks = lambda: sorted(m for m in sys.modules if m.endswith('_task')); print(tasks()); "
            "from leanvit.dense import DetectionTask; print(tasks(), t.TASKS == before); "
            "print(t.task_class('segmentation').__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]", "['leanvit.dense.dense_task', 'leanvit.dense.detection_task'] True",
                                "leanvit.dense.segmentation_task"]
    assert all(isinstance(v, str) for v in TASKS.values()) and task_class("detection") is DetectionTask
    with pytest.raises(ConfigError, match="unknown task.name='pose'; known tasks: classification, detection"):
        task_class("pose")


def test_dense_eval_batch_is_the_training_batch() -> None:
    cfg = load_config("retinanet_shvit_s4_1x", {"train.batch_size": 3})
    assert DetectionTask(cfg).eval_batch_size == 2  # the recipe's data.eval_batch_size (mmdet: 2 per GPU)
    cfg.data.eval_batch_size = None
    assert DetectionTask(cfg).eval_batch_size == 3

