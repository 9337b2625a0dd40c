"""mmdet's test-time input pipeline and mask pasting, so that a detector computes what the official one does
(the resize rule and the 8-bit resize are mmcv's, which mmseg's ADE20K pipelines share: leanvit.dense.ade20k).

torchvision's ``GeneralizedRCNNTransform`` differs from the mmdet pipeline of the official configs
(``Resize(img_scale=(1333, 800), keep_ratio=True)``, ``Normalize``, ``Pad(size_divisor=32)``, and
``FCNMaskHead.get_seg_masks``) in three places, each of which changes detections:

- **size**: torchvision floors the scaled size; mmcv's ``rescale_size`` rounds to nearest (``int(x * s + 0.5)``):
  480x640 becomes 800x1066 instead of mmdet's 800x1067. :func:`mmcv_rescale_size` is mmcv's rule.
- **resize then normalise**: mmdet resizes the 8-bit image with OpenCV's ``INTER_LINEAR`` (half-pixel centres,
  no antialiasing, an 8-bit result) and normalises after; torchvision normalises, then interpolates in float.
  :func:`resize_8bit_like_cv2` is that resize (within one grey level of ``cv2.resize``: OpenCV's 11-bit
  fixed-point weights round differently by at most one, tests/test_mmdet_pipeline.py).
- **mask pasting**: torchvision truncates each box to whole pixels and resizes the 28x28 mask into it; mmdet's
  ``_do_paste_mask`` samples the mask with ``grid_sample`` at the exact box, one box at a time on CPU (over the
  box grown by one pixel and clipped to the image), and keeps pixels >= 0.5. :func:`paste_masks_like_mmdet`.

:class:`MMDetTransform` is ``GeneralizedRCNNTransform`` with these three; ``create_detector(...,
pipeline="official")`` (the default) installs it, ``pipeline="torchvision"`` keeps torchvision's. Padding
(zeros after normalisation, to a multiple of 32) and the box rescaling are the same in both. Images are
expected as read from 8-bit files, scaled to [0, 1] (``to_tensor``): the official pipeline rounds them to 8 bits.
Training uses the same resize (the R-CNN losses see mmdet's input sizes); ground-truth masks are resized
nearest-neighbour, as mmdet's ``BitmapMasks.rescale``.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch.nn import functional as F
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

__all__ = ["PIPELINES", "MMDetTransform", "mmcv_rescale_size", "resize_8bit_like_cv2", "paste_masks_like_mmdet"]

PIPELINES = ("official", "torchvision")


def mmcv_rescale_size(height: int, width: int, short_edge: float, long_edge: float) -> tuple[int, int]:
    """(new height, new width) of mmcv's ``rescale_size`` with ``keep_ratio`` (mmdet's and mmseg's ``Resize``):
    the largest scale that fits the short side in ``short_edge`` and the long side in ``long_edge``, each side
    rounded to the nearest pixel (at least 1)."""
    scale = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_8bit_like_cv2(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``image`` (C, H, W) resized to ``size`` (H, W) as ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)``
    resizes an 8-bit image: bilinear with half-pixel centres and no antialiasing, rounded back to 8 bits.
    A ``uint8`` image comes back ``uint8``; a float image (8-bit values scaled to [0, 1]) comes back scaled."""
    levels = image.float() if image.dtype == torch.uint8 else (image * 255).round()
    out = F.interpolate(levels[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]
    out = out.round().clamp(0, 255)
    return out.to(torch.uint8) if image.dtype == torch.uint8 else out / 255


def paste_masks_like_mmdet(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 1, M, M) mask probabilities pasted at ``boxes`` (N, 4; x0, y0, x1, y1 in image pixels) into
    (N, 1, height, width), as mmdet's ``_do_paste_mask`` on CPU: each box's region (the box grown by one pixel,
    clipped to the image) samples its mask with ``grid_sample`` (bilinear, ``align_corners=False``) at pixel
    centres; everything else is 0. Threshold the result at >= 0.5 for mmdet's binary masks."""
    out = masks.new_zeros((len(masks), 1, height, width), dtype=torch.float32)
    for i, (x0, y0, x1, y1) in enumerate(boxes.detach().to(torch.float32).tolist()):
        left, top = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
        right, bottom = min(math.ceil(x1) + 1, width), min(math.ceil(y1) + 1, height)
        if right <= left or bottom <= top:
            continue
        ys = (torch.arange(top, bottom, dtype=torch.float32, device=masks.device) + 0.5 - y0) / (y1 - y0) * 2 - 1
        xs = (torch.arange(left, right, dtype=torch.float32, device=masks.device) + 0.5 - x0) / (x1 - x0) * 2 - 1
        grid = torch.stack((xs[None, :].expand(len(ys), -1), ys[:, None].expand(-1, len(xs))), dim=-1)
        out[i, 0, top:bottom, left:right] = F.grid_sample(masks[i:i + 1].float(), grid[None], align_corners=False)[0, 0]
    return out


class MMDetTransform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` with mmdet's resize (:func:`mmcv_rescale_size`, :func:`resize_8bit_like_cv2`,
    normalisation after the resize) and mask pasting (:func:`paste_masks_like_mmdet`); see the module docstring."""

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return image  # mmdet normalises the resized 8-bit image: done in resize()

    def resize(self, image: torch.Tensor, target: dict[str, Any] | None = None
               ) -> tuple[torch.Tensor, dict[str, Any] | None]:
        h, w = image.shape[-2:]
        short = float(self.torch_choice(self.min_size)) if self.training else float(self.min_size[-1])
        size = mmcv_rescale_size(h, w, short, float(self.max_size))
        image = super().normalize(resize_8bit_like_cv2(image, size))
        if target is not None:
            target["boxes"] = resize_boxes(target["boxes"], (h, w), size)
            if "masks" in target:
                target["masks"] = F.interpolate(target["masks"][:, None].float(), size=size)[:, 0].byte()
        return image, target

    def postprocess(self, result: list[dict[str, torch.Tensor]], image_shapes: list[tuple[int, int]],
                    original_image_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        if self.training:
            return result
        for pred, resized, original in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], resized, original)
            if "masks" in pred:
                pred["masks"] = paste_masks_like_mmdet(pred["masks"], pred["boxes"], *original)
        return result

    @classmethod
    def like(cls, transform: GeneralizedRCNNTransform) -> "MMDetTransform":
        """The mmdet pipeline with ``transform``'s sizes, mean / std and padding."""
        return cls(transform.min_size, transform.max_size, transform.image_mean, transform.image_std,
                   size_divisible=transform.size_divisible, fixed_size=transform.fixed_size)
