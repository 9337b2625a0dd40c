"""``leanvit eval``: top-1 / top-5 / loss / throughput of a checkpoint on a validation split.

Reads leanvit training checkpoints (the ``model`` or ``ema`` weights, class count and resolution
come from the checkpoint) and any weights file :func:`leanvit.load_checkpoint` understands
(official repositories, timm, leanvit safetensors). Runs distributed under torchrun as well.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .._io import atomic_write
from ..checkpoint import convert_state_dict, load_checkpoint, read_state_dict
from ..errors import InvalidValueError, MissingFileError
from ..models import create_model, get_config
from ..models import fuse as fuse_model
from .config import TrainConfig, config_from_dict
from .data import AugmentedDataset, ShardSampler, collate, eval_transform, open_source
from .distributed import cleanup, init_distributed
from .engine import amp_dtype, evaluate_model
from .state import is_training_checkpoint

__all__ = ["evaluate"]

log = logging.getLogger("leanvit.train")


def _read_weights(model_name: str, checkpoint: str | os.PathLike, ema: bool) -> tuple[dict[str, torch.Tensor], dict]:
    """(leanvit-layout state dict, facts from a training checkpoint or {})."""
    path = Path(checkpoint)
    if not path.is_file():
        raise MissingFileError(f"checkpoint file not found: {path}")
    try:  # a leanvit training checkpoint carries its class count, resolution and class names
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - safetensors or another format: read_state_dict explains failures
        obj = None
    if is_training_checkpoint(obj):
        if obj["model_name"] != model_name:
            raise InvalidValueError(f"{path} holds {obj['model_name']} weights, not {model_name}; "
                                    f"run: leanvit eval {obj['model_name']} --checkpoint {path} ...")
        if ema and obj.get("ema") is None:
            raise InvalidValueError(f"{path} has no EMA weights (the run had ema.enable=false); drop --ema")
        facts = dict(num_classes=obj["num_classes"], img_size=obj["img_size"], classes=obj.get("classes"),
                     data=obj["config"]["data"])
        return obj["ema"] if ema else obj["model"], facts
    sd, _ = read_state_dict(obj if isinstance(obj, dict) else path, prefer_ema=ema)  # no second read
    return convert_state_dict(sd, get_config(model_name).family), {}


def _head_classes(sd: dict[str, torch.Tensor]) -> int | None:
    heads = [v for k, v in sd.items() if k.startswith("head.") and v.dim() == 2]
    return int(heads[-1].shape[0]) if heads else None


def evaluate(
    model_name: str,
    checkpoint: str | os.PathLike,
    data: str,
    *,
    split: str | None = None,
    img_size: int | None = None,
    crop_pct: float | None = None,
    batch_size: int = 128,
    workers: int = 4,
    ema: bool = False,
    fuse: bool = False,
    amp: str = "none",
    device: str = "auto",
    channels_last: bool = False,
    num_classes: int | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (a ``model_name`` model) on ``data``'s validation split.

    Returns (and writes to ``out`` as JSON) top1, top5 (percent), loss, images, images_per_s (model
    forward only) and the settings used.
    """
    mc = get_config(model_name)
    sd, facts = _read_weights(model_name, checkpoint, ema)
    num_classes = num_classes or facts.get("num_classes") or _head_classes(sd)
    if not num_classes:
        raise InvalidValueError(f"cannot tell the class count of {checkpoint}; pass --num-classes")
    img_size = img_size or facts.get("img_size") or mc.img_size
    crop_pct = crop_pct or mc.crop_pct
    info = init_distributed(device)
    try:
        model = create_model(model_name, num_classes=num_classes, img_size=img_size,
                             distillation=any(k.startswith("head_dist.") for k in sd))
        load_checkpoint(model, sd)
        if fuse:
            model = fuse_model(model)
        model.to(info.device).eval()
        if channels_last:
            model.to(memory_format=torch.channels_last)

        # The training run's data settings (split names, fake-data sizes) unless overridden here.
        cfg = config_from_dict({"data": facts["data"]}) if facts.get("data") else TrainConfig()
        cfg.data.val_split = split or cfg.data.val_split
        bundle = open_source(data, cfg, img_size, need_train=False)
        if facts.get("classes") and data not in ("fake",) and list(facts["classes"]) != bundle.classes:
            raise InvalidValueError(f"the classes of {data} ({bundle.classes[:5]}...) differ from the ones {checkpoint} "
                                    f"was trained on ({list(facts['classes'])[:5]}...); accuracy would be meaningless")
        if len(bundle.classes) > num_classes:
            raise InvalidValueError(f"{data} has {len(bundle.classes)} classes but the model predicts {num_classes}")
        dataset = AugmentedDataset(bundle.val, eval_transform(img_size, mc.mean, mc.std, crop_pct, mc.interpolation))
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                            sampler=ShardSampler(len(dataset), info.rank, info.world_size),
                            pin_memory=info.device.type == "cuda")
        t0 = time.perf_counter()
        m = evaluate_model(model, loader, info, dtype=amp_dtype(amp, info.device), channels_last=channels_last,
                           progress=progress)
        wall = time.perf_counter() - t0
    finally:
        cleanup(info)
    skipped = m.pop("skipped")
    result = dict(
        model=model_name, checkpoint=str(checkpoint), data=bundle.description, split=split or "val",
        top1=m["top1"], top5=m["top5"], loss=m["loss"], images=m["images"],
        images_per_s=round(m["images_per_s"], 1), wall_images_per_s=round(m["images"] / wall, 1),
        img_size=img_size, crop_pct=crop_pct, num_classes=num_classes, ema=ema, fused=fuse, amp=amp,
        batch_size=batch_size, device=str(info.device), processes=info.world_size, skipped_files=len(skipped),
    )
    if skipped:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(skipped), skipped[0])
    if out is not None and info.is_main:

        text = json.dumps(result, indent=2)
        atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    return result
