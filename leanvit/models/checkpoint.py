"""Load and save checkpoints in leanvit's, timm's and the official repositories' layouts.

Loading never executes pickled code (safetensors, or ``torch.load(weights_only=True)``), detects the
layout from the key names, converts it, adapts what depends on resolution (EfficientViT attention
biases, SepViT window tokens), validates every key and shape *before* touching the model, and on a
mismatch names the variant the checkpoint looks like.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .._io import atomic_write
from .._text import error_reason
from ..errors import InvalidValueError, MissingFileError
from ._base import LeanViTModel
from ._layouts import Layout, StateDict
from ._registry import build_variant, family_class, get_config, list_models

__all__ = [
    "CheckpointError", "read_state_dict", "load_checkpoint", "save_checkpoint", "convert_state_dict", "detect_layout",
    "unwrap_state_dict", "layouts_of", "load_weights", "checkpoint_shape", "QAT_STATE_PREFIX", "read_qat_state",
    "trained_img_size", "checkpoint_img_size",
]


class CheckpointError(InvalidValueError):
    """A checkpoint that cannot be loaded into the given model; the message says why and what to do."""


def _family_of(model: nn.Module) -> str:
    """The family of a leanvit model, however it was built (by name or from its class)."""
    if not isinstance(model, LeanViTModel) or not type(model).family:
        raise CheckpointError(f"{type(model).__name__} is not a leanvit model family; load it with "
                              "leanvit.models.load_weights, or build a leanvit model with leanvit.create_model")
    return type(model).family


def _name_of(model: nn.Module) -> str:
    """The registered variant a model was built as, or its class name when it was built directly."""
    return model.leanvit_cfg.name if model.leanvit_cfg is not None else type(model).__name__


def layouts_of(family: str) -> dict[str, Layout]:
    """The foreign layouts ``family`` declares (its class's ``checkpoint_layouts``), by name."""
    return {lay.name: lay for lay in family_class(family).checkpoint_layouts}


# --------------------------------------------------------------------------------------------- reading
def read_state_dict(
    source: str | os.PathLike | Mapping[str, Any], prefer_ema: bool = False
) -> tuple[StateDict, dict[str, str]]:
    """Read a checkpoint file (safetensors or torch, weights only) or take a dict; return (tensors, metadata).

    Training checkpoints holding both weights and EMA weights give the EMA ones with ``prefer_ema``.
    """
    if isinstance(source, Mapping):
        return unwrap_state_dict(source, prefer_ema), {}
    path = Path(source)
    if not path.exists():
        raise MissingFileError(f"checkpoint file not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; pass the checkpoint file inside it")
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise CheckpointError(f"checkpoint file {path} is empty")
    if _looks_like_safetensors(head):
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                return {k: f.get_tensor(k) for k in f.keys()}, meta
        except Exception as e:  # noqa: BLE001 - surface any decoder failure as one clear error
            raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        reason = error_reason(e)
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, corrupt, not a torch/safetensors file, or it holds "
            f"pickled objects other than tensors, which leanvit refuses to execute): {reason}"
        ) from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return unwrap_state_dict(obj, prefer_ema), {}


def read_qat_state(source: str | os.PathLike) -> tuple[str, StateDict] | None:
    """``(scheme, fake-quant state)`` of a quantisation-aware fine-tuning checkpoint (``leanvit train`` with
    ``finetune.qat``), or None for any other checkpoint."""
    path = Path(source)
    with open(path, "rb") as f:
        if _looks_like_safetensors(f.read(16)):
            return None
    obj = torch.load(path, map_location="cpu", weights_only=True)
    model = obj.get("model") if isinstance(obj, Mapping) else None
    state = {k: v for k, v in (model or {}).items() if k.startswith(QAT_STATE_PREFIX)}
    if not state:
        return None
    scheme = ((obj.get("config") or {}).get("finetune") or {}).get("qat")
    if scheme in (None, "none"):
        raise CheckpointError(f"{path} holds fake-quant state but no finetune.qat scheme in its config")
    return scheme, state


def trained_img_size(source: str | os.PathLike | Mapping[str, Any]) -> int | None:
    """The input side a checkpoint was trained (or saved) at: a ``leanvit train`` checkpoint's ``img_size``, or
    the ``config`` metadata :func:`save_checkpoint` writes into leanvit safetensors files; None where the file
    does not say (timm / official layouts). ``source``: a path, or a training checkpoint already loaded."""
    if isinstance(source, Mapping):
        side = source.get("img_size")
    else:
        path = Path(source)
        if not path.is_file():
            raise MissingFileError(f"checkpoint file not found: {path}")
        with open(path, "rb") as f:
            head = f.read(16)
        if _looks_like_safetensors(head):
            with safe_open(str(path), framework="pt") as f:
                side = json.loads((f.metadata() or {}).get("config", "{}")).get("img_size")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            side = obj.get("img_size") if isinstance(obj, Mapping) else None
    if isinstance(side, (list, tuple)):  # (H, W): leanvit's models are square
        side = side[0]
    return int(side) if side else None


def checkpoint_img_size(explicit: int | None, checkpoint: str | os.PathLike | None, native: int) -> int:
    """The input side a command builds for: ``explicit`` (a flag) wins, then the size ``checkpoint`` was trained
    at (:func:`trained_img_size`), then the model's ``native`` size. An explicit size that differs from the
    checkpoint's warns: the model then runs at a size it was not trained for."""
    trained = trained_img_size(checkpoint) if checkpoint is not None else None
    if explicit is None:
        return trained or native
    if trained is not None and explicit != trained:
        warnings.warn(f"img_size {explicit} differs from the {trained} px {Path(checkpoint).name} was trained at "
                      f"(accuracy is usually lower at another size); drop the size flag to use {trained}",
                      stacklevel=2)
    return explicit


def _looks_like_safetensors(head: bytes) -> bool:
    # safetensors: 8-byte little-endian header length, then a JSON object.
    return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


QAT_STATE_PREFIX = "activation_post_process_"


def unwrap_state_dict(obj: Mapping[str, Any], prefer_ema: bool = False) -> StateDict:
    """Find the tensors in a checkpoint dict: ``model`` / ``state_dict`` / EMA entries, ``module.`` prefixes."""
    keys = ("model_ema", "state_dict_ema", "ema", "model", "state_dict") if prefer_ema else (
        "model", "state_dict", "model_ema", "state_dict_ema", "ema")
    for key in keys:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"no tensors found in the checkpoint (top-level keys: {', '.join(list(obj)[:8])}); "
            "expected a state dict or a dict with a 'model' / 'state_dict' entry"
        )
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    # quantisation-aware fine-tuning (leanvit.train.qat) saves its fake-quant state beside the float
    # weights; the deploy quantisers recalibrate, so float loads skip it
    return {k: v for k, v in tensors.items() if not k.startswith(QAT_STATE_PREFIX)}


# --------------------------------------------------------------------------------------------- conversion
def detect_layout(state_dict: Mapping[str, torch.Tensor], family: str) -> str:
    """Name of the layout of ``state_dict`` for ``family`` ("leanvit" when no foreign layout matches)."""
    for lay in family_class(family).checkpoint_layouts:
        if lay.detect(state_dict):
            return lay.name
    return "leanvit"


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], family: str, src: str | None = None,
                       dst: str = "leanvit") -> StateDict:
    """Convert between layouts of one family (``src`` auto-detected when None)."""
    sd = dict(state_dict)
    src = src or detect_layout(sd, family)
    if src == dst:
        return sd
    layouts = layouts_of(family)
    for name in (src, dst):
        if name != "leanvit" and name not in layouts:
            raise CheckpointError(
                f"unknown layout {name!r} for family {family!r}; known: leanvit, {', '.join(sorted(layouts))}"
            )
    if src != "leanvit":
        sd = layouts[src].to_leanvit(sd)
    if dst != "leanvit":
        sd = layouts[dst].from_leanvit(sd)
    return sd


# --------------------------------------------------------------------------------------------- loading
def _expected(model: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


# Classifier parameters of every leanvit model (the distillation head included).
_HEAD_PREFIXES = ("head.", "head_dist.")


def _diff(sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size]) -> tuple[list, list, list]:
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [k for k in sd if k in expected and tuple(sd[k].shape) != tuple(expected[k])]
    return missing, unexpected, mismatched


def _fix_2d_conv_weights(sd: StateDict, expected: Mapping[str, torch.Size]) -> StateDict:
    # Some official EfficientViT checkpoints store 1x1 conv weights 2-D; the official loader reshapes them.
    for k, v in sd.items():
        shape = expected.get(k)
        if shape is not None and v.dim() == 2 and len(shape) == 4 and tuple(v.shape) == tuple(shape[:2]):
            sd[k] = v[:, :, None, None]
    return sd


def _shapes_of(name: str) -> dict[str, torch.Size]:
    """State-dict shapes of a registered variant, built on the meta device (no memory, no init cost)."""
    try:
        with torch.device("meta"):
            return _expected(build_variant(name))
    except (NotImplementedError, RuntimeError):  # a builder doing real tensor work at init: build it for real
        return _expected(build_variant(name))


def _guess_variant(state_dict: Mapping[str, torch.Tensor]) -> tuple[str | None, float]:
    """The registered variant whose keys and shapes best match ``state_dict`` (any layout)."""
    best, best_score = None, 0.0
    for name in list_models():
        family = get_config(name).family
        try:
            sd = convert_state_dict(state_dict, family)
        except Exception:  # noqa: BLE001 - a failed conversion just means "not this family"
            continue
        expected = _shapes_of(name)
        matched = sum(1 for k, v in sd.items() if k in expected and tuple(v.shape) == tuple(expected[k]))
        score = matched / max(len(expected), len(sd))
        if score > best_score:
            best, best_score = name, score
    return best, best_score


def _mismatch_error(model: nn.Module, sd: StateDict, raw: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size],
                    missing: list, unexpected: list, mismatched: list, layout: str) -> CheckpointError:
    target = _name_of(model)
    guess, score = _guess_variant(raw)
    parts = []
    if mismatched:
        parts.append("shape mismatches: " + ", ".join(
            f"{k} {tuple(sd[k].shape)} vs model {tuple(expected[k])}" for k in mismatched[:3]))
    if missing:
        parts.append("missing keys: " + ", ".join(missing[:3]))
    if unexpected:
        parts.append("unexpected keys: " + ", ".join(unexpected[:3]))
    if guess is not None and score > 0.98 and guess != target:
        hint = f"the checkpoint looks like {guess}; create that model instead (leanvit.create_model({guess!r}))"
    elif guess is not None and score > 0.5:
        hint = f"closest leanvit variant: {guess} ({score:.0%} of tensors match)"
    else:
        first = ", ".join(list(raw)[:4])
        hint = f"it does not look like any leanvit model (first keys: {first})"
    return CheckpointError(
        f"checkpoint ({layout} layout) does not fit {target}: {hint}. First problems: {'; '.join(parts)}"
    )


def load_checkpoint(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, Any],
    *,
    strict: bool = True,
    drop_head: bool = False,
    prefer_ema: bool = False,
) -> dict[str, Any]:
    """Load ``source`` (path or state dict; leanvit, timm or official layout, detected automatically) into ``model``.

    - EfficientViT attention biases and SepViT window tokens are resized when the checkpoint's resolution differs.
    - A different ``num_classes`` is only adapted with ``drop_head=True`` (the model keeps its fresh head).
    - A checkpoint without ``head_dist`` loaded into a distillation model initialises both heads from ``head``.
    - Nothing is changed in ``model`` unless the whole checkpoint fits.

    Returns a report: ``layout``, ``missing``, ``unexpected`` (non-empty only with ``strict=False``), ``dropped_head``.
    """
    family = _family_of(model)
    raw, _ = read_state_dict(source, prefer_ema)
    layout = detect_layout(raw, family)
    sd = convert_state_dict(raw, family, src=layout)
    expected = _expected(model)
    sd = _fix_2d_conv_weights(sd, expected)
    for adapter in family_class(family).checkpoint_adapters:
        sd = adapter(sd, model)

    heads = _HEAD_PREFIXES
    if any(k.startswith("head_dist.") for k in expected) and not any(k.startswith("head_dist.") for k in sd):
        # A plain checkpoint into a distillation model: both heads start from the trained classifier.
        sd.update({"head_dist." + k[5:]: v for k, v in list(sd.items()) if k.startswith("head.")})
    missing, unexpected, mismatched = _diff(sd, expected)
    body_mismatch = [k for k in mismatched if not k.startswith(heads)]
    if body_mismatch:
        raise _mismatch_error(model, sd, raw, expected, missing, unexpected, mismatched, layout)
    dropped_head = False
    if (drop_head and any(k.startswith(heads) for k in mismatched)) or model.num_classes == 0:
        dropped_head = any(k.startswith(heads) for k in sd)
        sd = {k: v for k, v in sd.items() if not k.startswith(heads)}
    elif mismatched:  # only head tensors differ: another number of classes
        ckpt_classes = next((sd[k].shape[0] for k in mismatched if k.endswith("weight") and sd[k].dim() == 2), None)
        raise CheckpointError(
            f"the checkpoint's classifier has {ckpt_classes} classes but the model has {model.num_classes}; "
            f"pass drop_head=True to keep the model's fresh head (fine-tuning), or create the model with "
            f"num_classes={ckpt_classes}"
        )
    missing, unexpected, mismatched = _diff(sd, expected)
    if dropped_head:
        missing = [k for k in missing if not k.startswith(heads)]
    if strict and (missing or unexpected):
        raise _mismatch_error(model, sd, raw, expected, missing, unexpected, mismatched, layout)
    model.load_state_dict(sd, strict=False)
    return dict(layout=layout, missing=missing, unexpected=unexpected, dropped_head=dropped_head)


# --------------------------------------------------------------------------------------------- saving
def save_checkpoint(model: nn.Module, path: str | os.PathLike, layout: str = "leanvit") -> Path:
    """Write ``model``'s weights in ``layout`` ("leanvit": safetensors with metadata; "timm"; "official": torch
    file ``{'model': state_dict}`` as the official repositories write). Written atomically."""
    family = _family_of(model)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sd = convert_state_dict(sd, family, src="leanvit", dst=layout)
    if layout == "leanvit" or str(path).endswith(".safetensors"):
        meta = {"format": "pt", "leanvit_layout": layout, "leanvit_model": _name_of(model),
                "num_classes": str(model.num_classes), "config": json.dumps({"img_size": getattr(model, "img_size", None)})}
        # safetensors refuses tensors that share storage; clone makes each one independent.
        sd = {k: v.clone() for k, v in sd.items()}
        return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))
    payload = {"model": sd} if layout == "official" else sd
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_weights(model: nn.Module, source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Load ``source`` into any model: leanvit models through :func:`load_checkpoint` (every layout), other
    (timm) models strictly in their own layout, read safely (weights only) either way."""
    if isinstance(model, LeanViTModel):
        return load_checkpoint(model, source)
    sd, _ = read_state_dict(source)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise CheckpointError(f"checkpoint does not fit {type(model).__name__}: {first}") from e
    return dict(layout="native", missing=[], unexpected=[], dropped_head=False)


def checkpoint_shape(name: str, state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The ``num_classes`` and ``distillation`` a leanvit ``name`` model needs to hold ``state_dict`` (any
    layout): what building a model for a fine-tuned checkpoint takes from it."""
    sd = convert_state_dict(state_dict, get_config(name).family)
    heads = [v for k, v in sd.items() if k.startswith("head.") and v.dim() == 2]
    return dict(num_classes=int(heads[-1].shape[0]) if heads else 0,
                distillation=any(k.startswith("head_dist.") for k in sd))
