"""Semantic segmentation data: ADE20K, any image / label-PNG folder, the mmseg pipelines, colour maps.

Layouts (mmseg's ADEChallengeData2016 and plain image/mask folders):

* ADE20K: ``ROOT/ADEChallengeData2016/images/{training,validation}/*.jpg`` with label PNGs of the same stem
  in ``annotations/{training,validation}/``; 0 = "other" becomes the ignore index and l -> l - 1
  (``reduce_zero_label``), leaving 150 classes.
* Any folder: ``ROOT/images/<split>/`` + ``ROOT/annotations/<split>/`` (or ``labels/<split>/``), label PNGs
  holding class indices, and the class names one per line in ``ROOT/classes.txt`` (or passed).

Bad data: an image without a label PNG is skipped when the folder is read (counted in ``skipped``); an
unreadable file, an image / label size mismatch or label values outside the class range raise
:class:`~leanvit.train.data.BadImageError` on load, which the training loader skips and counts;
``strict=True`` turns both into a ``ValueError`` instead.

Pipelines (mmseg 0.x ADE20K, SepViT's ``_base_/datasets/ade20k.py``): :class:`SegTrainTransform` = random rescale into
(2048 r, 512 r), r ~ U(0.5, 2) -> random 512 crop re-drawn while one class covers >= 75 % -> flip ->
photometric distortion (torchvision's SSD-style ``RandomPhotometricDistort``; its brightness is a factor
0.875-1.125 where mmseg adds +-32) -> normalise -> pad with 0 / ignore. :class:`SegEvalTransform` fits the
image into (2048, 512) and keeps the label at its original size (scores are computed there).
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_segmentation_masks

from .._io import atomic_write, atomic_write_text
from ..errors import InvalidValueError, MissingFileError
from ..models._registry import IMAGENET_MEAN, IMAGENET_STD
from ..train.data import BadImageError, split_dir
from .mmdet_pipeline import mmcv_rescale_size, resize_8bit_like_cv2
from .shapes import SHAPE_CLASSES, SPLIT_SEED_OFFSET, render_scene, semantic_map

__all__ = [
    "ADE20K_CLASSES", "SegmentationSource", "open_ade20k", "open_folder", "SegTrainTransform", "SegEvalTransform",
    "palette", "colorize", "overlay", "IMAGENET_MEAN", "IMAGENET_STD",
    "write_shapes_segmentation", "SHAPES_SEG_CLASSES",
]


ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)


@dataclass
class SegmentationSource(Dataset):
    """Index -> (PIL RGB image, int64 label map with classes 0..K-1 and ``ignore_index``)."""

    pairs: list[tuple[Path, Path]]
    classes: list[str]
    description: str
    reduce_zero_label: bool = False
    ignore_index: int = 255
    strict: bool = False
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> paths, found while scanning

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Image.Image, torch.Tensor]:
        return self.load(index)

    def _bad(self, path: Path, reason: str) -> Exception:
        if self.strict:
            return InvalidValueError(f"{path}: {reason}")
        return BadImageError(str(path), reason)

    def load(self, index: int) -> tuple[Image.Image, torch.Tensor]:
        """Read pair ``index``; bad data raises BadImageError (or ValueError when ``strict``)."""
        image_path, label_path = self.pairs[index]
        try:
            with Image.open(image_path) as im:
                image = im.convert("RGB")
            with Image.open(label_path) as lb:
                if lb.mode not in ("L", "P", "I", "I;16"):
                    raise self._bad(label_path, f"label PNG has mode {lb.mode}; expected one channel of class indices")
                label = np.asarray(lb, dtype=np.int64)
        except (OSError, SyntaxError) as e:
            raise self._bad(image_path, f"unreadable ({e})") from e
        if label.shape != (image.height, image.width):
            raise self._bad(label_path, f"label is {label.shape[1]}x{label.shape[0]} but the image "
                                        f"{image_path.name} is {image.width}x{image.height}")
        label = torch.from_numpy(label)
        if self.reduce_zero_label:
            label = torch.where(label == 0, self.ignore_index, label - 1)
        bad = (label != self.ignore_index) & ((label < 0) | (label >= len(self.classes)))
        if bad.any():
            values = sorted(set(label[bad].unique().tolist()))[:5]
            raise self._bad(label_path, f"label value(s) {values} outside the {len(self.classes)} classes "
                                        f"0..{len(self.classes) - 1} (ignore = {self.ignore_index})")
        return image, label


def _pairs(images_dir: Path, labels_dir: Path, strict: bool) -> tuple[list[tuple[Path, Path]], dict[str, list[str]]]:
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
    if not images:
        raise MissingFileError(f"no images ({', '.join(IMG_EXTENSIONS)}) in {images_dir}")
    pairs, missing = [], []
    for p in images:
        label = labels_dir / f"{p.stem}.png"
        (pairs.append((p, label)) if label.is_file() else missing.append(str(p)))
    if missing and strict:
        raise InvalidValueError(f"{len(missing)} image(s) in {images_dir} have no label PNG in {labels_dir} "
                                f"(first: {missing[0]}); add the labels or drop strict to skip them")
    if not pairs:
        raise MissingFileError(f"none of the {len(images)} images in {images_dir} has a label PNG of the same stem "
                               f"in {labels_dir}")
    return pairs, {"missing label": missing} if missing else {}


# The folder names a split may have (mmseg's ADE20K says training / validation, most folders train / val).
_SPLIT_NAMES = {"train": ("train", "training"), "training": ("training", "train"), "val": ("val", "validation"),
                "validation": ("validation", "val")}


def _split_folder(parent: Path, split: str) -> Path:
    """``parent/<split>`` under any of the split's usual names."""
    return split_dir(parent, _SPLIT_NAMES.get(split, (split,)), f"{split!r} split", "images/<split>/ and "
                     "annotations/<split>/ folders of the same split names")


def open_ade20k(root: str | Path, split: str = "training", strict: bool = False) -> SegmentationSource:
    """ADE20K (150 classes, ``reduce_zero_label``) from ``ROOT`` or ``ROOT/ADEChallengeData2016``."""
    root = Path(root).expanduser()
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    if not (base / "images").is_dir() or not (base / "annotations").is_dir():
        raise MissingFileError(f"{root} is not an ADE20K folder: expected ADEChallengeData2016/images/{{training,"
                               "validation}} and ADEChallengeData2016/annotations/{training,validation}")
    pairs, skipped = _pairs(_split_folder(base / "images", split), _split_folder(base / "annotations", split), strict)
    return SegmentationSource(pairs, list(ADE20K_CLASSES), f"ADE20K {split}", reduce_zero_label=True,
                              strict=strict, skipped=skipped)


def open_folder(root: str | Path, split: str, classes: Sequence[str] | str | Path | None = None, *,
                reduce_zero_label: bool = False, strict: bool = False) -> SegmentationSource:
    """``ROOT/images/<split>`` + ``ROOT/annotations/<split>`` (or ``labels/``) with a class list."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingFileError(f"segmentation data folder {root} does not exist")
    if classes is None or isinstance(classes, (str, Path)):
        path = Path(classes) if classes is not None else root / "classes.txt"
        if not path.is_file():
            raise MissingFileError(f"no class list: write the class names one per line to {path} (or pass classes)")
        classes = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not classes:
        raise InvalidValueError("the class list is empty")
    labels = next((root / d for d in ("annotations", "labels") if (root / d).is_dir()), None)
    if not (root / "images").is_dir() or labels is None:
        raise MissingFileError(f"{root} needs images/<split>/ and annotations/<split>/ (or labels/<split>/) folders")
    pairs, skipped = _pairs(_split_folder(root / "images", split), _split_folder(labels, split), strict)
    return SegmentationSource(pairs, list(classes), f"{root} {split}", reduce_zero_label=reduce_zero_label,
                              strict=strict, skipped=skipped)


# --------------------------------------------------------------------------------------------- transforms
def _normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    return TF.normalize(image.float() / 255.0, list(mean), list(std))


class SegTrainTransform:
    """mmseg's ADE20K training pipeline on (PIL image, label) -> (normalised image, int64 label), fixed size."""

    def __init__(self, crop_size: int | tuple[int, int] = 512, scale: tuple[int, int] = (2048, 512),
                 ratio_range: tuple[float, float] = (0.5, 2.0), cat_max_ratio: float = 0.75, flip: float = 0.5,
                 photometric: bool = True, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 ignore_index: int = 255) -> None:
        self.crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        self.scale, self.ratio_range, self.cat_max_ratio = scale, ratio_range, cat_max_ratio
        self.flip, self.mean, self.std, self.ignore_index = flip, mean, std, ignore_index
        self.photometric = v2.RandomPhotometricDistort(hue=(-0.1, 0.1), p=0.5) if photometric else None

    def _crop_box(self, label: torch.Tensor) -> tuple[int, int]:
        ch, cw = self.crop
        h, w = label.shape
        for _ in range(10):  # re-draw while one class dominates the crop (mmseg cat_max_ratio)
            y = int(torch.randint(0, max(h - ch, 0) + 1, ()))
            x = int(torch.randint(0, max(w - cw, 0) + 1, ()))
            if self.cat_max_ratio >= 1:
                break
            window = label[y:y + ch, x:x + cw]
            counts = torch.bincount(window[window != self.ignore_index].reshape(-1))
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return y, x

    def __call__(self, image: Image.Image, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img = TF.pil_to_tensor(image)
        lo, hi = self.ratio_range
        r = lo + (hi - lo) * float(torch.rand(()))
        size = mmcv_rescale_size(img.shape[-2], img.shape[-1], self.scale[1] * r, self.scale[0] * r)
        img = resize_8bit_like_cv2(img, size)
        lab = TF.resize(label[None], list(size), interpolation=v2.InterpolationMode.NEAREST)[0]
        y, x = self._crop_box(lab)
        ch, cw = self.crop
        img, lab = img[:, y:y + ch, x:x + cw], lab[y:y + ch, x:x + cw]
        if float(torch.rand(())) < self.flip:
            img, lab = img.flip(-1), lab.flip(-1)
        if self.photometric is not None:
            img = self.photometric(img)
        img = _normalize(img, self.mean, self.std)
        pad = (0, cw - img.shape[-1], 0, ch - img.shape[-2])
        return F.pad(img, pad, value=0.0), F.pad(lab, pad, value=self.ignore_index)


class SegEvalTransform:
    """Test pipeline: fit into ``scale`` (long, short) keeping the ratio, normalise; the label is untouched."""

    def __init__(self, scale: tuple[int, int] = (2048, 512), mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.scale, self.mean, self.std = scale, mean, std

    def __call__(self, image: Image.Image, label: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        img = TF.pil_to_tensor(image)
        size = mmcv_rescale_size(img.shape[-2], img.shape[-1], self.scale[1], self.scale[0])
        return _normalize(resize_8bit_like_cv2(img, size), self.mean, self.std), label


# --------------------------------------------------------------------------------------------- shapes
SHAPES_SEG_CLASSES = ("background", *SHAPE_CLASSES)


def write_shapes_segmentation(root: str | Path, train_images: int = 64, val_images: int = 16, seed: int = 0,
                              size: int = 160) -> Path:
    """The synthetic shapes scenes (:mod:`leanvit.dense.shapes`) as a segmentation folder under ``root``:
    ``images/{train,val}/*.png``, class-map PNGs in ``annotations/``, ``classes.txt`` (background = class 0).
    Idempotent and atomic; read it back with :func:`open_folder` (the code path of real data)."""
    root = Path(root)
    for split, n in (("train", train_images), ("val", val_images)):
        for i in range(n):
            image_path = root / "images" / split / f"{split}_{i:06d}.png"
            label_path = root / "annotations" / split / f"{split}_{i:06d}.png"
            if image_path.exists() and label_path.exists():
                continue
            scene = render_scene(i, seed + SPLIT_SEED_OFFSET[split], size)
            for path, pixels in ((label_path, semantic_map(scene)), (image_path, scene.image)):
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, lambda tmp, px=pixels: Image.fromarray(px).save(tmp, format="PNG"))
    atomic_write_text(root / "classes.txt", "\n".join(SHAPES_SEG_CLASSES) + "\n")
    return root


# --------------------------------------------------------------------------------------------- colours
def palette(num_classes: int) -> torch.Tensor:
    """A fixed ``(num_classes, 3)`` uint8 colour table (golden-ratio hues, alternating brightness)."""
    colours = [colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65 + 0.35 * (i % 2), 0.95 - 0.3 * (i % 3 == 2))
               for i in range(num_classes)]
    return (torch.tensor(colours) * 255).round().to(torch.uint8)


def colorize(label: torch.Tensor, colours: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """``(H, W)`` class map -> ``(3, H, W)`` uint8 image; ignored pixels black."""
    table = torch.cat([colours, torch.zeros(1, 3, dtype=torch.uint8)])
    index = torch.where((label >= 0) & (label < len(colours)), label, len(colours)).long()
    return table[index].permute(2, 0, 1).contiguous()


def overlay(image: torch.Tensor, label: torch.Tensor, colours: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Blend the class colours over a ``(3, H, W)`` uint8 image (torchvision's draw_segmentation_masks)."""
    present = [int(c) for c in label.unique() if 0 <= c < len(colours)]
    if not present:
        return image
    masks = torch.stack([label == c for c in present])
    return draw_segmentation_masks(image, masks, alpha=alpha, colors=[tuple(colours[c].tolist()) for c in present])
