"""Data sources and bad input: clear errors for bad layouts, unreadable files skipped, warned and counted."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from leanvit.errors import OperationError
from leanvit.train import load_config, train
from leanvit.train.classification import ClassificationTask
from leanvit.train.data import (BadImageError, OnImage, ResumableSampler, SampleDataset, build_transforms,
                                open_source)
from leanvit.train.distributed import DistInfo

from helpers.training import make_image_folder, tiny_config


def test_generated_image_folder_has_the_asked_layout(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path, {"a": 2, "b": 3})
    assert len(list((root / "train" / "b").iterdir())) == 3
    assert Image.open(next((root / "val" / "a").iterdir())).size == (40, 30)


def test_missing_data_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"does not exist.*train/ and val/.*'digits'"):
        open_source(str(tmp_path / "nowhere"))
    (tmp_path / "only_train" / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no validation folder.*val, validation"):
        open_source(str(tmp_path / "only_train"))


def test_class_folder_without_images(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", {"cat": 2, "dog": 2})
    (root / "train" / "empty_class").mkdir()
    (root / "val" / "empty_class").mkdir()
    (root / "train" / "empty_class" / "notes.txt").write_text("not an image")
    cfg = tiny_config(tmp_path / "run", data__path=str(root))
    with pytest.raises(ValueError, match=r"without images in .*train: empty_class.*allow_empty_classes"):
        train(cfg)
    # splits with different classes are refused too
    shutil.rmtree(root / "val" / "empty_class")
    cfg = tiny_config(tmp_path / "run2", data__path=str(root), data__allow_empty_classes=True)
    with pytest.raises(ValueError, match="differ from the training split"):
        train(cfg)


@pytest.mark.slow
def test_unreadable_images_are_skipped_warned_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_image_folder(tmp_path / "d", {"a": 8, "b": 8}, splits=("train", "validation"))
    truncated = root / "train" / "a" / "truncated.png"
    good = (root / "train" / "a" / "img_1.png").read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    not_image = root / "validation" / "b" / "fake.jpg"
    not_image.write_text("this is not a jpeg")
    cfg = tiny_config(tmp_path / "run", data__path=str(root), train__epochs=1)
    with caplog.at_level(logging.WARNING, logger="leanvit.train"):
        summary = train(cfg)
    assert summary["skipped_files"] == 2
    assert set(summary["skipped_paths"]) == {str(truncated), str(not_image)}
    assert str(truncated) in caplog.text and str(not_image) in caplog.text
    assert (tmp_path / "run" / "metrics.csv").read_text().strip().endswith(",2")  # skipped_files column


def test_digits_and_fake_sources() -> None:
    d = open_source("digits")
    assert (len(d.train), len(d.val), d.classes) == (1437, 360, [str(i) for i in range(10)])
    img, target = d.train.load(0)
    assert img.size == (8, 8) and img.mode == "RGB" and 0 <= target < 10
    cfg = load_config("quick", {"data.fake_train_size": 20, "data.fake_classes": 3})
    f = open_source("fake", cfg, img_size=32)
    assert (len(f.train), len(f.classes)) == (20, 3) and f.train.load(0)[0].size == (32, 32)


def test_augmentation_is_a_function_of_seed_epoch_and_position(tmp_path: Path) -> None:
    # Same keys -> same tensors, however many workers load them; this is what makes resume exact.
    cfg = tiny_config(tmp_path, "shvit_s1")
    bundle = open_source("fake", cfg, img_size=32)
    train_tf, eval_tf = build_transforms(cfg, 32, (0.5,) * 3, (0.5,) * 3, 0.875)
    ds = SampleDataset(bundle.train, OnImage(train_tf), seed=0)
    a, b, c = ds[(1, 0, 5, 3)][0], ds[(1, 0, 5, 3)][0], ds[(1, 0, 6, 3)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    batches = []
    for workers in (0, 2):
        cfg.data.workers, cfg.data.path = workers, "fake"
        task = ClassificationTask(cfg)
        task.open_data(DistInfo())
        loader, _, sampler = task.build_loaders(DistInfo())
        sampler.set_epoch(1)
        batches.append(next(iter(loader))[0])
    assert torch.equal(batches[0], batches[1])
    assert isinstance(sampler, ResumableSampler)
    sampler.set_epoch(1, start=8)  # resuming after one batch skips exactly that batch
    assert [k[2] for k in sampler][:2] == [8, 9]


class _Source:
    """A source of (value, index) samples whose listed indices are bad files."""

    def __init__(self, n: int, bad: set[int]) -> None:
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def load(self, index: int) -> tuple[int, int]:
        if index in self.bad:
            raise BadImageError(f"img_{index}.png", "truncated")
        return 10 * index, index


def _draw(value: int, index: int) -> tuple[float, int]:
    return value + float(torch.rand(())), index


def test_sample_dataset_skips_bad_files_for_every_task() -> None:
    # The one dataset of classification, detection and segmentation: a bad file is replaced by the next one
    # and reported (as a path, or "path: reason"), wrapping around at the end; too many in a row is an error.
    ds = SampleDataset(_Source(5, {1, 2, 4}))
    assert ds[1] == (30, 3, ("img_1.png", "img_2.png"))
    assert ds[4] == (0, 0, ("img_4.png",))
    assert ds[0] == (0, 0, ())
    assert SampleDataset(_Source(5, {3}), with_reason=True)[3][2] == ("img_3.png: truncated",)
    with pytest.raises(OperationError, match="3 unreadable images in a row, starting at img_1.png"):
        SampleDataset(_Source(6, {1, 2, 3}), max_skips=3)[1]


def test_sample_dataset_seeds_the_transform_by_key_and_restores_the_rngs() -> None:
    ds = SampleDataset(_Source(8, {2}), _draw, seed=7)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = ds[(1, 0, 5, 2)]
    assert torch.equal(torch.get_rng_state(), before), "the caller's RNG is untouched"
    torch.manual_seed(123)  # another global state: the same key draws the same augmentation
    assert ds[(1, 0, 5, 2)] == first and first[1:] == (3, ("img_2.png",))
    assert ds[(1, 0, 6, 2)][0] != first[0] and SampleDataset(_Source(8, {2}), _draw, seed=8)[(1, 0, 5, 2)] != first
    plain = [ds[3][0] for _ in range(2)]  # an evaluation index: the transform draws from the global RNG
    assert plain[0] != plain[1]


def test_one_eval_batch_rule(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "shvit_s1")
    cfg.train.batch_size = 8
    assert ClassificationTask(cfg).eval_batch_size == 12  # 1.5 x, as DeiT / timm validate
    cfg.data.eval_batch_size = 5
    assert ClassificationTask(cfg).eval_batch_size == 5

