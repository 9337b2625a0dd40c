"""Head redundancy: the two papers' similarity definitions and SHViT's head ablation.

Similarity between the heads of one layer, X_i = head i's compared quantity, flattened:

- SHViT (Fig. 3, Sec. 2.2): ``target="attention_map", reduce="mean_pairs"``: the mean over ordered head pairs
  i != j of cos(A_i, A_j), per image (per window for windowed attention), averaged over images;
- EfficientViT (microsoft/Cream#178): ``target="head_output", reduce="max_max"``: the maximum over head pairs
  of the cosine similarity of the heads' output features, per image, averaged over images;
- ``reduce="mean_of_max"``: mean_i max_{j != i} (a recalled caption wording, unverified).

Every target x reduce pair is allowed and every output names its pair. ``granularity="batch"`` flattens the
whole batch into one vector per head (the literal reading of "averaged for all batches") instead of one
value per image. Random-init models give meaningless values (near-uniform attention maps are trivially
similar): use trained weights.

Head ablation (SHViT Sec. 2.2): per layer, top-1 with one head removed (remove-1) and with only one head kept
(leave-1), the other layers intact; the paper reports the best head of each, as a change from the full model.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..errors import InvalidValueError
from .options import DEFINITIONS, GRANULARITIES, REDUCES, TARGETS
from .taps import HeadTap, tapped

__all__ = [
    "TARGETS", "REDUCES", "GRANULARITIES", "DEFINITIONS", "cosine_matrix", "reduce_similarity",
    "tap_similarity", "head_similarity", "accuracy", "head_ablation",
]


def _check(target: str, reduce: str, granularity: str) -> None:
    for value, allowed, what in ((target, TARGETS, "target"), (reduce, REDUCES, "reduce"),
                                 (granularity, GRANULARITIES, "granularity")):
        if value not in allowed:
            raise InvalidValueError(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """(S, heads, F) -> (S, heads, heads) cosine similarities between the heads of each sample."""
    unit = torch.nn.functional.normalize(x.double(), dim=-1)
    return unit @ unit.transpose(1, 2)


def reduce_similarity(cos: torch.Tensor, reduce: str) -> torch.Tensor:
    """(S, h, h) similarity matrices -> (S,) layer values; h >= 2."""
    h = cos.shape[-1]
    if h < 2:
        raise InvalidValueError("head similarity needs at least two heads")
    off = ~torch.eye(h, dtype=torch.bool, device=cos.device)
    pairs = cos[:, off].view(-1, h, h - 1)  # row i: cos(X_i, X_j) for j != i
    if reduce == "mean_pairs":
        return pairs.mean(dim=(1, 2))
    if reduce == "max_max":
        return pairs.amax(dim=(1, 2))
    if reduce == "mean_of_max":
        return pairs.amax(dim=2).mean(dim=1)
    raise InvalidValueError(f"unknown reduce {reduce!r}; choose from {', '.join(REDUCES)}")


def _features(tap: HeadTap, target: str, images: int, drop_cls: bool) -> torch.Tensor:
    """The last forward's (samples, heads, F): windows are samples for maps, regrouped per image for outputs."""
    if target == "attention_map":
        maps = tap.maps
        if maps is None:
            raise RuntimeError(f"{tap.name}: no attention map was captured")
        p = tap.prefix_tokens if drop_cls else 0
        return maps[:, :, p:, p:].flatten(2)
    x = tap.outputs
    if x is None:
        raise RuntimeError(f"{tap.name}: no head output was captured")
    S, h, F = x.shape
    return x.view(images, S // images, h, F).transpose(1, 2).reshape(images, h, -1)


def tap_similarity(tap: HeadTap, target: str, reduce: str, granularity: str, images: int,
                   drop_cls: bool = False) -> torch.Tensor:
    """Values of one layer for the last forward: one per sample (``image``), or one for the batch (``batch``)."""
    x = _features(tap, target, images, drop_cls)
    if granularity == "batch":
        x = x.transpose(0, 1).reshape(1, x.shape[1], -1)
    return reduce_similarity(cosine_matrix(x), reduce)


@torch.no_grad()
def head_similarity(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]], *, target: str = "attention_map",
    reduce: str = "mean_pairs", granularity: str = "image", drop_cls: bool = False,
) -> list[dict[str, Any]]:
    """One row per attention layer: the similarity (0..1) under the named definition, over all ``batches``."""
    _check(target, reduce, granularity)
    model.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    with tapped(model, outputs=target == "head_output", maps=target == "attention_map") as taps:
        for x, _ in batches:
            model(x)
            for name, tap in taps.items():
                values = tap_similarity(tap, target, reduce, granularity, x.shape[0], drop_cls)
                sums[name] = sums.get(name, 0.0) + float(values.sum())
                counts[name] = counts.get(name, 0) + values.numel()
        heads = {name: tap.num_heads for name, tap in taps.items()}
    if not counts:
        raise InvalidValueError("no images: the data gave no batch")
    return [dict(layer=i + 1, module=name, heads=heads[name], target=target, reduce=reduce, granularity=granularity,
                 drop_cls=drop_cls, similarity=sums[name] / counts[name], samples=counts[name])
            for i, name in enumerate(sums)]


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def accuracy(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy in percent over ``batches``."""
    correct = total = 0
    for x, y in batches:
        correct += int((_logits(model(x)).argmax(dim=-1) == y).sum())
        total += y.numel()
    if not total:
        raise InvalidValueError("no images: the data gave no batch")
    return 100.0 * correct / total


@torch.no_grad()
def head_ablation(
    model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *, cascade_mask: bool = True,
    layers: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Per layer: top-1 change (points) of the best remove-1 and leave-1 head, with the per-head values.

    ``batches`` is iterated 2 x heads times per layer: pass a list. ``cascade_mask`` (EfficientViT-M) also
    removes a head's values before the cascade, so its output does not reach the next head."""
    model.eval()
    batches = list(batches)
    full = accuracy(model, batches)
    rows = []
    with tapped(model) as taps:
        names = list(taps) if layers is None else list(layers)
        for index, name in enumerate(names):
            if name not in taps:
                raise InvalidValueError(f"unknown attention layer {name!r}; layers: {', '.join(taps)}")
            tap = taps[name]
            tap.cascade_mask = cascade_mask
            remove, leave = [], []
            for k in range(tap.num_heads):
                tap.mask = torch.ones(tap.num_heads)
                tap.mask[k] = 0.0
                remove.append(accuracy(model, batches) - full)
                tap.mask = torch.zeros(tap.num_heads)
                tap.mask[k] = 1.0
                leave.append(accuracy(model, batches) - full)
            tap.mask = None
            best_remove, best_leave = max(range(len(remove)), key=remove.__getitem__), max(range(len(leave)), key=leave.__getitem__)
            rows.append(dict(layer=index + 1, module=name, heads=tap.num_heads, full_top1=full,
                             remove1_delta=remove[best_remove], remove1_head=best_remove,
                             leave1_delta=leave[best_leave], leave1_head=best_leave,
                             remove1=remove, leave1=leave, images=sum(y.numel() for _, y in batches)))
    return rows
