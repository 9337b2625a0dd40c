"""COCO box and mask AP with faster-coco-eval (pycocotools as the fallback, same API).

- :func:`detections_to_coco`: torchvision detector outputs -> COCO result dicts (xywh boxes in original
  image pixels, the original ``category_id``, masks thresholded at 0.5 and RLE-encoded);
- :func:`coco_evaluate`: AP, AP50, AP75, APs, APm, APl per IoU type against a ground-truth json/dict;
- :func:`format_table`: the result as a text table.
"""
from __future__ import annotations

import contextlib
import io
import logging
from typing import Any, Sequence

import numpy as np
import torch
from ..errors import InvalidValueError

__all__ = ["STAT_NAMES", "detections_to_coco", "coco_evaluate", "format_table", "coco_backend"]

log = logging.getLogger("leanvit.dense")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_backend(prefer: str = "auto") -> str:
    """``faster_coco_eval`` when installed (or asked for), else ``pycocotools``; a clear error if neither is."""
    options = ("faster_coco_eval", "pycocotools") if prefer == "auto" else (prefer,)
    for name in options:
        try:
            __import__(name)
            return name
        except ImportError:
            continue
    raise ImportError(f"COCO evaluation needs {' or '.join(options)}: pip install 'leanvit[dense]' "
                      "(faster-coco-eval, with pycocotools as the fallback)")


def detections_to_coco(outputs: Sequence[dict[str, torch.Tensor]], image_ids: Sequence[int],
                       category_ids: Sequence[int], label_offset: int) -> list[dict[str, Any]]:
    """COCO result dicts of one batch; ``label - label_offset`` indexes ``category_ids`` (sorted COCO ids)."""
    from pycocotools import mask as mask_utils

    results = []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().float().cpu()
        scores = out["scores"].detach().float().cpu().tolist()
        labels = (out["labels"].detach().cpu() - label_offset).tolist()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
        masks = out.get("masks")
        if masks is not None:
            binary = (masks.detach()[:, 0] >= 0.5).cpu().numpy().astype(np.uint8)  # mmdet's mask_thr_binary
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []
        for i, (box, score, label) in enumerate(zip(xywh, scores, labels)):
            if not 0 <= label < len(category_ids):
                continue  # a background prediction cannot be scored
            r: dict[str, Any] = dict(image_id=int(image_id), category_id=int(category_ids[label]),
                                     bbox=[round(v, 3) for v in box], score=round(float(score), 5))
            if masks is not None:
                rle = rles[i]
                r["segmentation"] = dict(size=[int(s) for s in rle["size"]], counts=rle["counts"].decode("ascii"))
            results.append(r)
    return results


def _coco_gt(gt: dict[str, Any] | str, backend: str) -> Any:
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO

        return COCO(gt)
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        if isinstance(gt, dict):
            coco = COCO()
            coco.dataset = gt
            coco.createIndex()
            return coco
        return COCO(str(gt))


def coco_evaluate(gt: dict[str, Any] | str, results: list[dict[str, Any]], iou_types: Sequence[str] = ("bbox",),
                  image_ids: Sequence[int] | None = None, backend: str = "auto") -> dict[str, float]:
    """``{"bbox_AP": ..., "bbox_AP50": ..., "segm_AP": ...}`` (fractions in [0, 1]) over ``image_ids`` (default:
    all images of ``gt``). No detections at all scores 0 (COCOeval refuses an empty result list)."""
    backend = coco_backend(backend)
    coco_gt = _coco_gt(gt, backend)
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        if iou_type not in ("bbox", "segm"):
            raise InvalidValueError(f"iou type must be bbox or segm, got {iou_type!r}")
        if iou_type == "segm" and any("segmentation" not in r for r in results):
            raise InvalidValueError("segm evaluation needs masks in every result (a Mask R-CNN)")
        if not results:
            metrics.update({f"{iou_type}_{n}": 0.0 for n in STAT_NAMES})
            continue
        if backend == "faster_coco_eval":
            from faster_coco_eval import COCOeval_faster as COCOeval
        else:
            from pycocotools.cocoeval import COCOeval
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes adds keys in place
            ev = COCOeval(coco_gt, coco_dt, iou_type)
            if image_ids is not None:
                ev.params.imgIds = sorted(int(i) for i in image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        # stats: -1 where a size range has no ground truth; report those as 0 like mmdet's table would show.
        metrics.update({f"{iou_type}_{n}": max(float(v), 0.0) for n, v in zip(STAT_NAMES, ev.stats[:6])})
    return metrics


def format_table(metrics: dict[str, float]) -> str:
    """A fixed-width table, one row per IoU type, AP values in percent."""
    types = sorted({k.split("_", 1)[0] for k in metrics if k.split("_", 1)[-1] in STAT_NAMES})
    lines = ["type  " + " ".join(f"{n:>6}" for n in STAT_NAMES)]
    for t in types:
        lines.append(f"{t:<5} " + " ".join(f"{100 * metrics.get(f'{t}_{n}', 0.0):6.2f}" for n in STAT_NAMES))
    return "\n".join(lines)
