"""Dense prediction on leanvit backbones: COCO detection / instance segmentation and semantic segmentation.

Built on torchvision's detectors with the official (mmdet 2.x / mmseg 0.x) configurations; see
docs/detection.md and docs/segmentation.md.
"""
from __future__ import annotations

from .._lazy import lazy_exports

# public name -> module that defines it; imported on first use (PEP 562), so that ``leanvit.dense.options``
# (the torch-free source of the detect / segment flags) imports without torch, and importing the package
# registers nothing.
_EXPORTS = {
    "DenseBackbone": "backbone", "create_backbone": "backbone", "dense_model_kwargs": "backbone",
    "CocoDetection": "coco", "coco_split": "coco", "coco_evaluate": "coco_eval", "DetectionTask": "detection_task",
    "DetectionBackbone": "detectors", "create_detector": "detectors", "label_offset": "detectors",
    "load_mmdet_checkpoint": "mmdet", "torchvision_to_mmdet": "mmdet", "DenseFPN": "necks", "fpn_preset": "necks",
    "load_detector": "predict", "predict_images": "predict", "SegConfusion": "seg_metrics",
    "SegmentationTask": "segmentation_task", "Segmentor": "segmentors", "create_segmentor": "segmentors",
    "segment": "segmentors",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
