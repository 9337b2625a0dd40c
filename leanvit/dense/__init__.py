"""Dense prediction on leanvit backbones: COCO detection / instance segmentation and semantic segmentation.

Built on torchvision's detectors with the official (mmdet 2.x / mmseg 0.x) configurations; see
docs/detection.md and the project spec dense.md.
"""
from .backbone import DenseBackbone, create_backbone, dense_model_kwargs
from .coco import CocoDetection, coco_split
from .coco_eval import coco_evaluate
from .detection_task import DetectionTask
from .detectors import DetectionBackbone, create_detector, label_offset
from .mmdet import load_mmdet_checkpoint, torchvision_to_mmdet
from .necks import DenseFPN, fpn_preset
from .predict import evaluate_checkpoint, load_detector, predict_images
from .seg_metrics import SegConfusion
from .segmentation_task import SegmentationTask
from .segmentors import Segmentor, create_segmentor, segment

__all__ = [
    "DenseBackbone", "create_backbone", "dense_model_kwargs", "DenseFPN", "fpn_preset", "DetectionBackbone",
    "create_detector", "label_offset", "load_mmdet_checkpoint", "torchvision_to_mmdet",
    "Segmentor", "create_segmentor", "segment", "SegConfusion", "SegmentationTask",
    "CocoDetection", "coco_split", "coco_evaluate", "DetectionTask", "load_detector", "evaluate_checkpoint",
    "predict_images",
]
