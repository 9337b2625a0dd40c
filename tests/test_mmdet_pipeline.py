"""The "official" detection pipeline reproduces mmdet's: input size, 8-bit resize, normalisation order, pasted masks.

References written here from mmcv / mmdet 2.x (not from leanvit): mmcv's ``rescale_size`` rule, OpenCV's own
``cv2.resize`` (opencv-python-headless), and mmdet's ``_do_paste_mask`` in its batched form.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from torchvision.models.detection.transform import GeneralizedRCNNTransform, paste_masks_in_image

from leanvit.dense import create_detector
from leanvit.dense.ade20k import SegEvalTransform
from leanvit.dense.mmdet_pipeline import MMDetTransform, mmcv_rescale_size, paste_masks_like_mmdet, resize_8bit_like_cv2

# (height, width) of common COCO images
COCO_SHAPES = [(480, 640), (640, 480), (427, 640), (640, 427), (425, 640), (426, 640), (424, 640), (428, 640),
               (512, 640), (375, 500), (333, 500), (500, 375), (360, 640), (640, 640), (612, 612), (480, 480)]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # mmdet: [123.675, 116.28, 103.53] / 255, ...


def _mmcv_rescale_size(w: int, h: int, scale: tuple[int, int] = (1333, 800)) -> tuple[int, int]:
    # mmcv.image.geometric.rescale_size(old_size=(w, h), scale, return_scale) with a tuple scale
    max_long_edge, max_short_edge = max(scale), min(scale)
    scale_factor = min(max_long_edge / max(h, w), max_short_edge / min(h, w))
    return int(w * float(scale_factor) + 0.5), int(h * float(scale_factor) + 0.5)  # _scale_size: (w, h)


def test_input_sizes_round_to_nearest_as_mmcv() -> None:
    floored = 0
    transform = MMDetTransform(800, 1333, MEAN, STD).eval()
    for h, w in COCO_SHAPES:
        want_w, want_h = _mmcv_rescale_size(w, h)
        assert mmcv_rescale_size(h, w, 800, 1333) == (want_h, want_w)
        images, _ = transform([torch.rand(3, h, w)])
        assert tuple(images.image_sizes[0]) == (want_h, want_w), (h, w)
        tv, _ = GeneralizedRCNNTransform(800, 1333, MEAN, STD).eval()([torch.rand(3, h, w)])
        floored += tuple(tv.image_sizes[0]) != (want_h, want_w)
    assert mmcv_rescale_size(480, 640, 800, 1333) == (800, 1067) and mmcv_rescale_size(360, 640, 800, 1333) == (750, 1333)
    assert floored >= 5  # torchvision floors: one pixel short for many of these shapes (7 of 16 measured)


@pytest.mark.parametrize("src,dst", [((480, 640), (800, 1067)), ((427, 640), (800, 1199)), ((64, 48), (37, 29)),
                                     ((33, 50), (100, 151))])
def test_8bit_resize_is_cv2_inter_linear(src: tuple[int, int], dst: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(src))
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (*src, 3), dtype=np.uint8), (0, 0), 2)
    for image in (rng.integers(0, 256, (*src, 3), dtype=np.uint8), smooth):  # noise and natural-like
        want = cv2.resize(image, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR).astype(np.int32)
        got = resize_8bit_like_cv2(torch.from_numpy(image).permute(2, 0, 1).float() / 255, dst)
        got = (got * 255).round().permute(1, 2, 0).numpy().astype(np.int32)
        # OpenCV's 11-bit fixed-point weights vs float: one grey level apart on 10.5 % of a noise image's pixels
        assert np.abs(got - want).max() <= 1 and (got != want).mean() < 0.2


def test_segmentation_test_input_is_mmsegs() -> None:
    # mmseg ADE20K test pipeline: Resize(img_scale=(2048, 512), keep_ratio) with cv2, then Normalize
    image = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 256, (427, 640, 3), dtype=np.uint8), (0, 0), 3)
    got, _ = SegEvalTransform()(Image.fromarray(image))
    want_w, want_h = _mmcv_rescale_size(640, 427, (2048, 512))
    assert tuple(got.shape[-2:]) == (want_h, want_w) == (512, 767)
    resized = cv2.resize(image, (want_w, want_h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    want = (resized - 255 * np.array(MEAN, np.float32)) / (255 * np.array(STD, np.float32))
    assert np.abs(got.permute(1, 2, 0).numpy() - want).max() <= 1.001 / 255 / min(STD)
    uint8 = resize_8bit_like_cv2(torch.from_numpy(image).permute(2, 0, 1), (want_h, want_w))
    assert uint8.dtype == torch.uint8 and np.abs(uint8.permute(1, 2, 0).numpy().astype(int) - resized).max() <= 1


def test_detector_input_is_mmdets_normalised_resized_padded_image() -> None:
    image = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (427, 640, 3), dtype=np.uint8), (0, 0), 3)
    # mmdet: Resize (cv2, 8 bits, keep ratio) -> Normalize (0-255 mean / std) -> Pad to 32 with zeros
    resized = cv2.resize(image, (1199, 800), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    want = (resized - 255 * np.array(MEAN, np.float32)) / (255 * np.array(STD, np.float32))
    want = np.pad(want, ((0, 800 - 800), (0, 1216 - 1199), (0, 0)))
    model = create_detector("retinanet", "shvit_s1", num_classes=2).eval()
    images, _ = model.transform([torch.from_numpy(image).permute(2, 0, 1).float() / 255])
    got = images.tensors[0].permute(1, 2, 0).numpy()
    assert got.shape == want.shape == (800, 1216, 3)
    assert np.abs(got - want).max() <= 1.001 / 255 / min(STD)  # one grey level at most


def _mmdet_paste(masks: torch.Tensor, boxes: torch.Tensor, img_h: int, img_w: int) -> torch.Tensor:
    """mmdet 2.x FCNMaskHead.get_seg_masks on CPU: chunks of one box, _do_paste_mask(skip_empty=True), >= 0.5."""
    im_mask = torch.zeros(len(masks), img_h, img_w, dtype=torch.bool)
    for inds in torch.chunk(torch.arange(len(masks)), len(masks)):
        m, b = masks[inds], boxes[inds]
        x0_int, y0_int = torch.clamp(b.min(dim=0).values.floor()[:2] - 1, min=0).to(dtype=torch.int32)
        x1_int = torch.clamp(b[:, 2].max().ceil() + 1, max=img_w).to(dtype=torch.int32)
        y1_int = torch.clamp(b[:, 3].max().ceil() + 1, max=img_h).to(dtype=torch.int32)
        x0, y0, x1, y1 = torch.split(b, 1, dim=1)
        img_y = torch.arange(y0_int, y1_int).to(torch.float32) + 0.5
        img_x = torch.arange(x0_int, x1_int).to(torch.float32) + 0.5
        img_y = (img_y - y0) / (y1 - y0) * 2 - 1
        img_x = (img_x - x0) / (x1 - x0) * 2 - 1
        gx = img_x[:, None, :].expand(len(m), img_y.size(1), img_x.size(1))
        gy = img_y[:, :, None].expand(len(m), img_y.size(1), img_x.size(1))
        pasted = F.grid_sample(m.to(torch.float32), torch.stack([gx, gy], dim=3), align_corners=False)[:, 0]
        im_mask[(inds, slice(int(y0_int), int(y1_int)), slice(int(x0_int), int(x1_int)))] = pasted >= 0.5
    return im_mask


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


@pytest.mark.parametrize("side", [16, 32, 64, 128, 256])
def test_pasted_masks_are_mmdets(side: int) -> None:
    g = torch.Generator().manual_seed(side)
    n, h, w = 12, 480, 640
    coarse = torch.rand(n, 1, 7, 7, generator=g)
    masks = F.interpolate(coarse, size=(28, 28), mode="bilinear", align_corners=False)  # blob-like probabilities
    x0, y0 = torch.rand(n, generator=g) * (w - side - 2), torch.rand(n, generator=g) * (h - side - 2)
    size = side * (0.75 + 0.5 * torch.rand(n, 2, generator=g))
    boxes = torch.stack([x0, y0, (x0 + size[:, 0]).clamp(max=w - 0.5), (y0 + size[:, 1]).clamp(max=h - 0.5)], dim=1)
    want = _mmdet_paste(masks, boxes, h, w)
    got = paste_masks_like_mmdet(masks, boxes, h, w)[:, 0] >= 0.5
    ious = [_iou(a, b) for a, b in zip(got, want)]
    assert float(np.mean(ious)) >= 0.999 and min(ious) >= 0.99, ious
    # torchvision's pasting (boxes truncated to pixels) is measurably another result on small objects
    tv = paste_masks_in_image(masks, boxes, (h, w))[:, 0] >= 0.5
    if side <= 32:
        assert float(np.mean([_iou(a, b) for a, b in zip(tv, want)])) < 0.99


def test_pipeline_choice_and_training_through_the_official_transform() -> None:
    official = create_detector("mask_rcnn", "efficientvit_m0", num_classes=2, min_size=96, max_size=160,
                               fpn_channels=32)
    assert isinstance(official.transform, MMDetTransform) and official.leanvit_dense["pipeline"] == "official"
    plain = create_detector("faster_rcnn", "efficientvit_m0", num_classes=2, pipeline="torchvision")
    assert type(plain.transform) is GeneralizedRCNNTransform
    with pytest.raises(ValueError, match="pipeline must be one of official, torchvision"):
        create_detector("retinanet", "efficientvit_m0", pipeline="mmdet")
    images = [torch.rand(3, 72, 100), torch.rand(3, 90, 64)]
    mask = torch.zeros(1, 72, 100, dtype=torch.uint8)
    mask[0, 10:40, 20:60] = 1
    targets = [{"boxes": torch.tensor([[20.0, 10.0, 60.0, 40.0]]), "labels": torch.tensor([1]), "masks": mask},
               {"boxes": torch.tensor([[5.0, 5.0, 50.0, 80.0]]), "labels": torch.tensor([2]),
                "masks": torch.ones(1, 90, 64, dtype=torch.uint8)}]
    official.train()
    losses = official(images, targets)
    assert set(losses) >= {"loss_classifier", "loss_mask"} and all(math.isfinite(v.item()) for v in losses.values())
    official.eval()
    with torch.no_grad():
        out = official(images)
    assert [tuple(o["masks"].shape[-2:]) for o in out] == [(72, 100), (90, 64)]  # pasted at the original size
