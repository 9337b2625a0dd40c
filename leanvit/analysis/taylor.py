"""Taylor channel importance for Q, K, V and FFN hidden channels (EfficientViT Fig. 5; Molchanov et al. 2019).

A gate z_c = 1 multiplies channel c where it is produced (the ``qkv`` output; the FFN's first layer output,
before the activation), so dL/dz_c = sum_s w_s dL/dw_s over the weights (bias included) producing c: the
first-order estimate of the loss change when c is removed. Per minibatch b, I_c,b = (dL_b/dz_c)^2, and
I_c is the mean over batches (not torch-pruning's accumulated |sum w dw|, whose signs cancel across batches).

Q and K are gated jointly by default (``qk="joint"``: one gate multiplies q_c and k_c, since removing either
removes the same logit term q_c k_c); ``qk="separate"`` gates them independently and reports the effective
kept set (a Q channel is only alive with its K channel). Each gate tensor's importances are divided by their
mean (``normalize="mean"``), ranked globally, and the top ``keep`` fraction is kept (ties broken by index).
Ratios are kept channels / the block's embedding width (baseline Q = K = V = 1, FFN = the MLP ratio).

Needs trained weights and labelled training images; on random weights the ranking means nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from timm.layers.attention import Attention
from timm.models.swin_transformer import WindowAttention
from torch import nn

from safetensors import safe_open
from safetensors.torch import save_file

from .._io import atomic_write
from ..errors import InvalidValueError
from ..layers import ConvNorm, select_in_channels, select_out_channels
from ..models import create_model
from ..models.counting import count_macs, count_params
from ..models.efficientvit_m import CascadedGroupAttention
from ..models.sepvit import SeparableAttention
from ..models.shvit import SingleHeadAttention
from ..train.engine import NonFiniteLossError
from .options import NORMALIZATIONS, PRUNABLE_PARTS

__all__ = ["GateSite", "find_gate_sites", "taylor_importance", "kept_channels", "prune_channels",
           "PRUNABLE_PARTS", "finetune_pruned", "save_pruned", "load_pruned"]


@dataclass
class GateSite:
    """Gated output channels of one module: ``layout`` is [(component, gate key), ...] along ``dim``, in order."""

    block: str
    module: nn.Module
    dim: int  # channel axis of the module output (-1 tokens-last Linear, 1 NCHW conv)
    layout: list[tuple[str, str]]
    sizes: dict[str, int]  # gate key -> channels
    embed_dim: int
    gates: dict[str, torch.Tensor] = field(default_factory=dict)

    def multiplier(self) -> torch.Tensor:
        return torch.cat([self.gates[key] for _, key in self.layout])

    def hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        shape = [1] * out.dim()
        shape[self.dim] = -1
        return out * self.multiplier().to(out.dtype).view(shape)


def _qkv_layout(prefix: str, qk: str, q: int, k: int, v: int) -> tuple[list[tuple[str, str]], dict[str, int]]:
    if qk == "joint":
        if q != k:
            raise InvalidValueError(f"joint Q/K gates need equal q and k widths, got {q} and {k}")
        return [("Q", f"{prefix}qk"), ("K", f"{prefix}qk"), ("V", f"{prefix}v")], {f"{prefix}qk": q, f"{prefix}v": v}
    if qk != "separate":
        raise InvalidValueError(f"qk must be 'joint' or 'separate', got {qk!r}")
    return ([("Q", f"{prefix}q"), ("K", f"{prefix}k"), ("V", f"{prefix}v")],
            {f"{prefix}q": q, f"{prefix}k": k, f"{prefix}v": v})


def _ffn_site(block: str, module: nn.Module, embed_dim: int, dim: int, key: str) -> GateSite:
    conv = getattr(module, "conv", module)
    width = conv.out_channels if isinstance(conv, nn.Conv2d) else conv.out_features
    return GateSite(block, module, dim, [("FFN", key)], {key: width}, embed_dim)


def find_gate_sites(model: nn.Module, qk: str = "joint") -> list[GateSite]:
    """Gate sites of every attention block: timm ViT/DeiT/Swin (fused ``qkv`` Linear + ``mlp.fc1``), leanvit
    SepViT (the same), EfficientViT-M (per-head ``qkvs`` + both FFNs' ``pw1``) and SHViT (``qkv`` + ``pw1``)."""
    sites: list[GateSite] = []
    for name, module in model.named_modules():
        if isinstance(module, (Attention, WindowAttention, SeparableAttention)):
            block = name.rpartition(".")[0]
            parent = model.get_submodule(block)
            C = module.qkv.in_features
            layout, sizes = _qkv_layout("", qk, C, C, C)
            sites.append(GateSite(block, module.qkv, -1, layout, sizes, C))
            fc1 = getattr(getattr(parent, "mlp", None), "fc1", None)
            if fc1 is not None:
                sites.append(_ffn_site(block, fc1, C, -1, "ffn"))
        elif isinstance(module, CascadedGroupAttention):
            block = name.split(".mixer")[0]
            parent = model.get_submodule(block)
            C = module.val_dim * module.num_heads
            for i, conv in enumerate(module.qkvs):
                layout, sizes = _qkv_layout(f"h{i}.", qk, module.key_dim, module.key_dim, module.val_dim)
                sites.append(GateSite(block, conv, 1, layout, sizes, C))
            for ffn in ("ffn0", "ffn1"):
                sites.append(_ffn_site(block, getattr(parent, ffn).m.pw1, C, 1, f"{ffn}"))
        elif isinstance(module, SingleHeadAttention):
            block = name.split(".mixer")[0]
            parent = model.get_submodule(block)
            C = parent.ffn.m.pw1.conv.in_channels if hasattr(parent.ffn.m.pw1, "conv") else parent.ffn.m.pw1.in_channels
            layout, sizes = _qkv_layout("", qk, module.qk_dim, module.qk_dim, module.pdim)
            sites.append(GateSite(block, module.qkv, 1, layout, sizes, C))
            sites.append(_ffn_site(block, parent.ffn.m.pw1, C, 1, "ffn"))
    if not sites:
        raise InvalidValueError(f"{type(model).__name__} has no supported attention block for Taylor importance")
    return sites


def taylor_importance(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, qk: str = "joint",
    loss_fn: nn.Module | None = None,
) -> tuple[list[GateSite], dict[tuple[int, str], torch.Tensor], int]:
    """Mean over batches of (dL_b/dz_c)^2 per gate: (sites, {(site index, gate key): importance}, batches)."""
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    sites = find_gate_sites(model, qk)
    model.eval()  # running BN statistics, no dropout: the importance of the deployed function
    params = [p for p in model.parameters()]
    flags = [p.requires_grad for p in params]
    handles = []
    for site in sites:
        site.gates = {key: torch.ones(n, requires_grad=True) for key, n in site.sizes.items()}
        handles.append(site.module.register_forward_hook(site.hook))
    sums = {(i, key): torch.zeros(n, dtype=torch.float64) for i, s in enumerate(sites) for key, n in s.sizes.items()}
    count = 0
    try:
        for p in params:
            p.requires_grad_(False)  # gradients for the gates only
        for x, y in batches:
            out = model(x)
            loss = loss_fn(out[0] if isinstance(out, (tuple, list)) else out, y)
            keys = list(sums)
            grads = torch.autograd.grad(loss, [sites[i].gates[k] for i, k in keys])
            for key, g in zip(keys, grads):
                sums[key] += g.double() ** 2
            count += 1
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    if not count:
        raise InvalidValueError("no images: the data gave no batch")
    return sites, {k: v / count for k, v in sums.items()}, count


def kept_channels(
    sites: list[GateSite], importance: dict[tuple[int, str], torch.Tensor], keep: float, normalize: str = "mean",
) -> tuple[dict[tuple[int, str], torch.Tensor], list[dict[str, Any]]]:
    """Keep the globally top ``keep`` fraction of gated channels: ({gate: bool mask}, rows per block/component)."""
    if not 0 < keep <= 1:
        raise InvalidValueError(f"keep must be in (0, 1], got {keep}")
    if normalize not in NORMALIZATIONS:
        raise InvalidValueError(f"normalize must be 'mean' or 'none', got {normalize!r}")
    keys = list(importance)
    scores = [importance[k] / importance[k].mean().clamp_min(1e-300) if normalize == "mean" else importance[k]
              for k in keys]
    flat = torch.cat(scores)
    n_keep = max(1, int(round(keep * flat.numel())))
    # Stable descending sort: equal scores keep their index order, so the mask is deterministic.
    order = torch.sort(-flat, stable=True).indices[:n_keep]
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[order] = True
    masks, start = {}, 0
    for key, s in zip(keys, scores):
        masks[key] = chosen[start:start + s.numel()]
        start += s.numel()
    return masks, _kept_rows(sites, masks)


def _kept_rows(sites: list[GateSite], masks: dict[tuple[int, str], torch.Tensor]) -> list[dict[str, Any]]:
    per_block: dict[str, dict[str, list[int]]] = {}
    embed: dict[str, int] = {}
    for i, site in enumerate(sites):
        comp = per_block.setdefault(site.block, {})
        embed[site.block] = site.embed_dim
        for component, key in site.layout:
            kept, total = comp.setdefault(component, [0, 0])
            comp[component] = [kept + int(masks[(i, key)].sum()), total + site.sizes[key]]
        if (i, "q") in masks and (i, "k") in masks:  # separate Q/K: a Q channel lives only with its K channel
            alive = int((masks[(i, "q")] & masks[(i, "k")]).sum())
            comp["QK_effective"] = [comp.get("QK_effective", [0, 0])[0] + alive,
                                    comp.get("QK_effective", [0, 0])[1] + site.sizes["q"]]
    rows = []
    for b, (block, comps) in enumerate(per_block.items()):
        for component, (kept, total) in comps.items():
            rows.append(dict(block_index=b + 1, block=block, component=component, kept=kept, total=total,
                             ratio=kept / embed[block], baseline=total / embed[block]))
    return rows


# --- physical pruning: exact slicing of the known layers (leanvit.layers.slicing) ----------------------------
# Pruning a channel whose output is exactly zero leaves the function as is.


def _kept(mask: torch.Tensor | None, n: int, minimum: int = 1) -> torch.Tensor:
    """Indices kept by ``mask`` (all when None); at least ``minimum`` (the lowest indices) so no layer is empty."""
    if mask is None:
        return torch.arange(n)
    idx = mask.nonzero().flatten()
    if len(idx) < minimum:
        idx = torch.arange(minimum)
    return idx


def _qk_mask(site_index: int, site: GateSite, masks: dict[tuple[int, str], torch.Tensor], prefix: str,
             parts: tuple[str, ...]) -> torch.Tensor | None:
    """Kept Q/K channels of one site, or None when neither "q" nor "k" is pruned. A logit term q_c k_c is gone
    once either factor is, so Q and K are always pruned together, at the same indices (joint gate; with
    separate gates, the channels both keep: the effective set)."""
    if not {"q", "k"} & set(parts):
        return None
    if (site_index, f"{prefix}qk") in masks:
        return masks[(site_index, f"{prefix}qk")]
    return masks[(site_index, f"{prefix}q")] & masks[(site_index, f"{prefix}k")]


def _parents(model: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    return {id(child): (parent, name) for parent in model.modules() for name, child in parent.named_children()}


def _prune_ffn(model: nn.Module, parents: dict, site: GateSite, mask: torch.Tensor) -> int:
    parent, name = parents[id(site.module)]  # ConvFFN (pw1 -> act -> pw2) or timm Mlp (fc1 -> act -> ... -> fc2)
    second = "pw2" if name == "pw1" else "fc2"
    if isinstance(getattr(parent, "norm", None), nn.Module) and not isinstance(parent.norm, nn.Identity):
        raise InvalidValueError(f"{type(parent).__name__} with a hidden norm is not supported")
    keep = _kept(mask, len(mask))
    setattr(parent, name, select_out_channels(getattr(parent, name), keep))
    setattr(parent, second, select_in_channels(getattr(parent, second), keep))
    return len(mask) - len(keep)


def _prune_cga(module: CascadedGroupAttention, heads: list[tuple[int, GateSite]],
               masks: dict[tuple[int, str], torch.Tensor], parts: tuple[str, ...]) -> dict[str, int]:
    removed = dict(q=0, k=0, v=0)
    kd, vd, last = module.key_dim, module.val_dim, module.num_heads - 1
    key_dims, val_dims, cols, offset = [], [], [], 0
    for i, (s, site) in enumerate(heads):
        qk = _kept(_qk_mask(s, site, masks, f"h{i}.", parts), kd)
        # Head i's output is added to head i+1's input split in the cascade: only the last head's values (all
        # heads' without the cascade) can be removed exactly.
        v_prunable = "v" in parts and (i == last or not module.cascade)
        v = _kept(masks[(s, f"h{i}.v")] if v_prunable else None, vd)
        module.qkvs[i] = select_out_channels(module.qkvs[i], torch.cat([qk, kd + qk, 2 * kd + v]))
        module.dws[i] = select_out_channels(module.dws[i], qk)
        cols.append(offset + v)
        offset += vd
        key_dims.append(len(qk))
        val_dims.append(len(v))
        removed["q"] += kd - len(qk)
        removed["k"] += kd - len(qk)
        removed["v"] += vd - len(v)
    module.proj[1] = select_in_channels(module.proj[1], torch.cat(cols))
    module.key_dims, module.val_dims = key_dims, val_dims
    return removed


def _prune_shsa(module: SingleHeadAttention, s: int, site: GateSite, masks: dict[tuple[int, str], torch.Tensor],
                parts: tuple[str, ...]) -> dict[str, int]:
    qd, pd = module.qk_dim, module.pdim
    dim = module.proj[1].conv.in_channels if isinstance(module.proj[1], ConvNorm) else module.proj[1].in_channels
    qk = _kept(_qk_mask(s, site, masks, "", parts), qd)
    v = _kept(masks[(s, "v")] if "v" in parts else None, pd)
    module.qkv = select_out_channels(module.qkv, torch.cat([qk, qd + qk, 2 * qd + v]))
    module.proj[1] = select_in_channels(module.proj[1], torch.cat([v, torch.arange(pd, dim)]))
    module.qk_dim, module.v_dim = len(qk), len(v)
    return dict(q=qd - len(qk), k=qd - len(qk), v=pd - len(v))


def _prune_sepvit(module: SeparableAttention, s: int, site: GateSite, masks: dict[tuple[int, str], torch.Tensor],
                  parts: tuple[str, ...]) -> dict[str, int]:
    h, d = module.num_heads, module.head_dim
    C = h * d
    mask = _qk_mask(s, site, masks, "", parts)
    per_head = [_kept(None if mask is None else mask[i * d:(i + 1) * d], d) + i * d for i in range(h)]
    qk = torch.cat(per_head)
    module.qkv = select_out_channels(module.qkv, torch.cat([qk, C + qk, torch.arange(2 * C, 3 * C)]))
    module.qk_dims = [len(p) for p in per_head]
    return dict(q=C - len(qk), k=C - len(qk), v=0)


def prune_channels(
    model: nn.Module, sites: list[GateSite], masks: dict[tuple[int, str], torch.Tensor],
    parts: Iterable[str] = PRUNABLE_PARTS, img_size: int | tuple[int, int] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Physically remove the channels ``masks`` drop (``masks`` from :func:`kept_channels` on these ``sites``),
    in place, by exact slicing; returns (model, {params/MACs before and after, channels removed per part}).

    What is pruned (``parts`` selects among "q", "k", "v", "ffn"):

    - FFN hidden channels everywhere (leanvit ConvFFN ``pw1``/``pw2`` with their BatchNorms; timm ``Mlp``).
    - Q and K (either part name prunes both), at the same indices: q_c k_c is one logit term (with
      ``qk="separate"`` gates, the channels both gates keep survive). Per head, for EfficientViT-M (each head's ``qkvs`` conv and its q depthwise ``dws`` conv),
      SHViT (``qkv``) and SepViT (the depthwise attention's ``qkv`` Linear). The attention scale is left as it
      was, so removing channels whose q or k is exactly zero leaves every logit unchanged.
    - V: SHViT (``qkv`` value rows and ``proj``'s matching input columns); EfficientViT-M only the last head's
      (every head's with ``cascade=False``), since each earlier head's output is added channel by channel to the
      next head's input.

    EfficientViT-M's Q gate sits on the qkv conv output, before the q depthwise conv: a zero there leaves q at the
    depthwise BatchNorm's shift, so "removing" a channel means removing the term q_c k_c (both convs' rows), which
    the gate's first-order estimate only approximates.

    Not pruned: SepViT values (its inner residual adds the block input to the attention output channel by
    channel, and the pointwise attention mixes whole head maps), SepViT's pointwise-attention ``pw_qk``, and
    timm Attention / WindowAttention Q/K/V (FFN only). Every layer keeps at least one channel (per head for
    Q/K), the lowest-index one if the mask drops all. Attention modules with pruned Q/K/V record their per-head
    widths (``key_dims`` / ``val_dims``, ``qk_dim`` / ``v_dim``, ``qk_dims``) and run them as they are (same
    state_dict keys, smaller tensors).
    """
    parts = tuple(parts)
    unknown = set(parts) - set(PRUNABLE_PARTS)
    if unknown:
        raise InvalidValueError(f"unknown parts {sorted(unknown)}; choose from {PRUNABLE_PARTS}")
    stats: dict[str, Any] = dict(params_before=count_params(model), macs_before=count_macs(model, img_size))
    removed = dict(q=0, k=0, v=0, ffn=0)
    parents = _parents(model)
    cga: dict[int, list[tuple[int, GateSite]]] = {}
    attn = {"q", "k", "v"} & set(parts)
    for s, site in enumerate(sites):
        if site.layout[0][0] == "FFN":
            if "ffn" in parts:
                removed["ffn"] += _prune_ffn(model, parents, site, masks[(s, site.layout[0][1])])
            continue
        if not attn:
            continue
        owner, _ = parents[id(site.module)]
        if isinstance(owner, nn.ModuleList):  # EfficientViT-M: one site per head's qkvs entry
            owner = next(m for m in model.modules() if isinstance(m, CascadedGroupAttention) and m.qkvs is owner)
            cga.setdefault(id(owner), [owner]).append((s, site))
            continue
        if isinstance(owner, SingleHeadAttention):
            got = _prune_shsa(owner, s, site, masks, parts)
        elif isinstance(owner, SeparableAttention):
            got = _prune_sepvit(owner, s, site, masks, parts)
        else:
            continue  # timm attention: FFN only
        for key in got:
            removed[key] += got[key]
    for owner, *heads in cga.values():
        got = _prune_cga(owner, heads, masks, parts)
        for key in got:
            removed[key] += got[key]
    stats.update(params_after=count_params(model), macs_after=count_macs(model, img_size),
                 removed_channels=removed, parts=list(parts))
    return model, stats


def finetune_pruned(
    model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], epochs: int, *, lr: float = 1e-4,
    weight_decay: float = 0.05, loss_fn: nn.Module | None = None, seed: int = 0,
) -> list[float]:
    """Fine-tune a pruned ``model`` in place on in-memory labelled ``batches`` for ``epochs`` passes (AdamW,
    cosine learning rate to zero, batch order shuffled from ``seed``); returns the mean loss of each epoch.

    A plain short loop rather than :class:`leanvit.train.Trainer`: the Trainer builds its model and loaders from a
    config and a dataset path, while here the model is the pruned object and the data the Taylor sample. A
    non-finite loss raises :class:`leanvit.train.NonFiniteLossError` before the bad update, as in training.
    """
    if epochs < 0:
        raise InvalidValueError(f"epochs must be >= 0, got {epochs}")
    if epochs and not batches:
        raise InvalidValueError("no images to fine-tune on: the data gave no batch")
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * len(batches)))
    g = torch.Generator().manual_seed(seed)
    losses = []
    was_training = model.training
    model.train()
    try:
        for _ in range(epochs):
            total = 0.0
            for b in torch.randperm(len(batches), generator=g).tolist():
                x, y = batches[b]
                out = model(x)
                loss = loss_fn(out[0] if isinstance(out, (tuple, list)) else out, y)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(f"fine-tune loss is {loss.item()}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item()
            losses.append(total / len(batches))
    finally:
        model.train(was_training)
    return losses


# --------------------------------------------------------------------------------------------- files
_MASK_PREFIX = "taylor_mask/"


def save_pruned(path: str | Path, model: nn.Module, masks: dict[tuple[int, str], torch.Tensor], *,
                model_name: str, img_size: int, num_classes: int, qk: str, parts: Sequence[str]) -> Path:
    """Write a pruned model as one safetensors file: its weights, the channel masks and how it was built.

    No pickle: :func:`load_pruned` rebuilds the architecture (the named model, pruned by the same masks)
    and loads the weights into it.
    """
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"{_MASK_PREFIX}{i}:{key}": m.to(torch.uint8).contiguous() for (i, key), m in masks.items()})
    meta = dict(model=model_name, img_size=str(img_size), num_classes=str(num_classes), qk=qk, parts=",".join(parts),
                format="leanvit-taylor-pruned-1")
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_pruned(path: str | Path) -> nn.Module:
    """The eval model :func:`save_pruned` wrote (weights only; a file of another kind is refused)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "leanvit-taylor-pruned-1":
            raise InvalidValueError(f"{path} is not a pruned model written by leanvit analyze taylor --prune")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    masks = {}
    for name in [k for k in tensors if k.startswith(_MASK_PREFIX)]:
        index, key = name[len(_MASK_PREFIX):].split(":", 1)
        masks[(int(index), key)] = tensors.pop(name).bool()
    side = int(meta["img_size"])
    model = create_model(meta["model"], img_size=side, num_classes=int(meta["num_classes"])).eval()
    model, _ = prune_channels(model, find_gate_sites(model, meta["qk"]), masks, meta["parts"].split(","), img_size=side)
    model.load_state_dict(tensors)
    return model.eval()
