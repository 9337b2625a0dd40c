"""The options of the ``leanvit detect`` and ``leanvit segment`` commands, declared once: the library takes
these dataclasses (``DetectionTask.evaluate_checkpoint``, ``predict_images``, ``export_checkpoint``,
the detection speed tables) and the commands' flags are generated from them
(:func:`leanvit._flags.add_dataclass_flags`). No torch here, so that ``--help`` is instant.
"""
from __future__ import annotations

from dataclasses import dataclass

from .._flags import option
from ..train.options import DEVICES

__all__ = ["DenseEvalOptions", "DetectionEvalOptions", "SegmentationEvalOptions", "InferenceOptions",
           "DensePredictOptions", "DetectionPredictOptions", "SegmentationPredictOptions",
           "SegmentationExportOptions", "DetectionBenchOptions", "INFERENCE_MODES", "DEFAULT_BACKBONES"]

INFERENCE_MODES = ("whole", "slide")
PREDICT_DEVICES = ("cpu", "cuda")
# The backbones of `leanvit detect bench` (SHViT Table 5 and the two other families).
DEFAULT_BACKBONES = ("shvit_s1", "shvit_s4", "efficientvit_m0", "efficientvit_m4", "sepvit_lite")


@dataclass(frozen=True)
class DenseEvalOptions:
    """How to evaluate a dense checkpoint on a dataset's val split (``Task.evaluate_checkpoint``)."""

    checkpoint: str = option("", "a leanvit dense checkpoint (OUTPUT/best.ckpt)", required=True)
    data: str = option("", "the dataset (its val split)", required=True)
    ema: bool = option(False, "evaluate the EMA weights")
    batch_size: int = option(2, "images per evaluation batch", type=int)
    workers: int = option(2, "data loader processes", type=int)
    device: str = option("auto", "where to run", choices=DEVICES)
    out: str | None = option(None, "write the results as JSON to this file")
    progress: bool = option(True, "no progress bar", flag="--no-progress")


@dataclass(frozen=True)
class DetectionEvalOptions(DenseEvalOptions):
    """``leanvit detect eval``: COCO box (and mask) AP of a detection checkpoint."""

    checkpoint: str = option("", "a leanvit detection checkpoint (OUTPUT/best.ckpt)", required=True)
    data: str = option("", "COCO root (its val2017 split) or 'shapes'", required=True)


@dataclass(frozen=True)
class InferenceOptions:
    """How a segmentor predicts (:func:`leanvit.dense.segmentors.segment`); None: the checkpoint's setting."""

    mode: str | None = option(None, "whole-image or sliding-window inference (default: the checkpoint's, "
                                    "official: whole)", choices=INFERENCE_MODES)
    crop: int | None = option(None, "sliding-window size (default 512)", type=int)
    stride: int | None = option(None, "sliding-window stride (default 341)", type=int)
    scales: tuple[float, ...] | None = option(None, "multi-scale test ratios, e.g. 0.5 0.75 1 1.25 1.5 1.75",
                                              type=float, nargs="+")
    flip: bool | None = option(None, "also average the mirrored image", action="store_true")


@dataclass(frozen=True)
class SegmentationEvalOptions(InferenceOptions, DenseEvalOptions):
    """``leanvit segment eval``: mIoU / mAcc / aAcc of a segmentation checkpoint, one full-size image per batch."""

    checkpoint: str = option("", "a leanvit segmentation checkpoint (OUTPUT/best.ckpt)", required=True)
    data: str = option("", "ADE20K root (its validation split), a labelled folder or 'shapes'", required=True)
    batch_size: int = 1  # not a flag: whole and sliding-window inference take one image at a time


@dataclass(frozen=True)
class DensePredictOptions:
    """Which images to predict with which dense checkpoint, and where the drawings go."""

    images: tuple[str, ...] = option((), "image files", flag="images", nargs="+", metavar="IMAGE")
    checkpoint: str = option("", "a leanvit dense checkpoint", required=True)
    out: str = option("", "output folder", required=True)
    device: str = option("cpu", "where to run", choices=PREDICT_DEVICES)
    ema: bool = option(False, "predict with the EMA weights")


@dataclass(frozen=True)
class DetectionPredictOptions(DensePredictOptions):
    """``leanvit detect predict``: a checkpoint's detections drawn on images."""

    checkpoint: str = option("", "a leanvit detection checkpoint", required=True)
    out: str = option("", "folder for the drawn images (IMAGE stem + .png)", required=True)
    score_thresh: float = option(0.5, "draw detections scoring at least this", type=float)


@dataclass(frozen=True)
class _SegmentationDrawing(DensePredictOptions):
    checkpoint: str = option("", "a leanvit segmentation checkpoint", required=True)
    out: str = option("", "folder for IMAGE stem + _mask.png / _overlay.png", required=True)
    alpha: float = option(0.5, "overlay opacity of the class colours", type=float)


@dataclass(frozen=True)
class SegmentationPredictOptions(InferenceOptions, _SegmentationDrawing):
    """``leanvit segment predict``: colourised masks and overlays of a checkpoint's predictions."""


@dataclass(frozen=True)
class SegmentationExportOptions:
    """``leanvit segment export``: a segmentation checkpoint to ONNX / OpenVINO, verified."""

    checkpoint: str = option("", "a leanvit segmentation checkpoint", required=True)
    output: str = option("", "MODEL.onnx or MODEL.xml (OpenVINO IR + .bin)", required=True)
    format: str | None = option(None, "default: from the output's suffix", choices=("onnx", "openvino"))
    size: tuple[int, int] = option((512, 512), "trace size", type=int, nargs=2, metavar=("H", "W"))
    fixed_size: bool = option(False, "only the batch stays dynamic (for backbones whose graph depends on the "
                                     "input size)")
    ema: bool = option(False, "export the EMA weights")


@dataclass(frozen=True)
class DetectionBenchOptions:
    """``leanvit detect bench``: backbone latency at 512x512 (SHViT Table 5) and detector images/s."""

    names: list[str] = option([], f"leanvit backbones (default: {' '.join(DEFAULT_BACKBONES)})", flag="names",
                              nargs="*")
    device: str = option("cpu", "where to run", choices=PREDICT_DEVICES)
    batch: int | None = option(None, "default: 16 on CPU, 32 on GPU", type=int)
    threads: int = option(1, "CPU threads (CPU time is summed over threads)", type=int)
    rounds: int = option(3, "interleaved rounds per model", type=int)
    seconds: float = option(1.0, "timed seconds per model and round", type=float)
    detectors: list[str] = option([], "also time these detectors end to end at 800x1333 on CPU (retinanet "
                                      "mask_rcnn faster_rcnn)", nargs="*", metavar="ARCH")
    json: str | None = option(None, "write the rows as JSON to this file")
