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
from typing import Any, Iterable

import torch
from torch import nn

from ..models.efficientvit_m import CascadedGroupAttention
from ..models.sepvit import SeparableAttention
from ..models.shvit import SingleHeadAttention

__all__ = ["GateSite", "find_gate_sites", "taylor_importance", "kept_channels", "prune_ffn_channels"]


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
            raise ValueError(f"joint Q/K gates need equal q and k widths, got {q} and {k}")
        return [("Q", f"{prefix}qk"), ("K", f"{prefix}qk"), ("V", f"{prefix}v")], {f"{prefix}qk": q, f"{prefix}v": v}
    if qk != "separate":
        raise ValueError(f"qk must be 'joint' or 'separate', got {qk!r}")
    return ([("Q", f"{prefix}q"), ("K", f"{prefix}k"), ("V", f"{prefix}v")],
            {f"{prefix}q": q, f"{prefix}k": k, f"{prefix}v": v})


def _ffn_site(block: str, module: nn.Module, embed_dim: int, dim: int, key: str) -> GateSite:
    conv = getattr(module, "conv", module)
    width = conv.out_channels if isinstance(conv, nn.Conv2d) else conv.out_features
    return GateSite(block, module, dim, [("FFN", key)], {key: width}, embed_dim)


def find_gate_sites(model: nn.Module, qk: str = "joint") -> list[GateSite]:
    """Gate sites of every attention block: timm ViT/DeiT/Swin (fused ``qkv`` Linear + ``mlp.fc1``), leanvit
    SepViT (the same), EfficientViT-M (per-head ``qkvs`` + both FFNs' ``pw1``) and SHViT (``qkv`` + ``pw1``)."""
    from timm.layers.attention import Attention
    from timm.models.swin_transformer import WindowAttention

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
        raise ValueError(f"{type(model).__name__} has no supported attention block for Taylor importance")
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
        raise ValueError("no images: the data gave no batch")
    return sites, {k: v / count for k, v in sums.items()}, count


def kept_channels(
    sites: list[GateSite], importance: dict[tuple[int, str], torch.Tensor], keep: float, normalize: str = "mean",
) -> tuple[dict[tuple[int, str], torch.Tensor], list[dict[str, Any]]]:
    """Keep the globally top ``keep`` fraction of gated channels: ({gate: bool mask}, rows per block/component)."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if normalize not in ("mean", "none"):
        raise ValueError(f"normalize must be 'mean' or 'none', got {normalize!r}")
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


def prune_ffn_channels(model: nn.Module, sites: list[GateSite], masks: dict[tuple[int, str], torch.Tensor],
                       example: torch.Tensor) -> int:
    """Physically remove the FFN hidden channels the masks drop, through torch-pruning's dependency graph
    (the following norm / activation / second layer shrink with them). Returns the channels removed."""
    try:
        import torch_pruning as tp
    except ImportError as e:
        raise ImportError("physical pruning needs torch-pruning: pip install 'leanvit[analysis]'") from e
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its notes on unwrapped parameters (window tokens, biases)
        try:
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        except Exception as e:  # its tracer does not follow every reshape (e.g. SHViT's partial split)
            raise RuntimeError(f"torch-pruning could not trace {type(model).__name__} ({type(e).__name__}: {e}); "
                               "physical pruning is verified on SepViT and timm ViT/DeiT only") from e
    removed = 0
    for i, site in enumerate(sites):
        if site.layout[0][0] != "FFN":
            continue
        layer = getattr(site.module, "conv", site.module)
        drop = (~masks[(i, site.layout[0][1])]).nonzero().flatten().tolist()
        if not drop or len(drop) == site.sizes[site.layout[0][1]]:
            continue  # nothing to remove, or everything (torch-pruning cannot make a zero-width layer)
        fn = tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) else tp.prune_linear_out_channels
        graph.get_pruning_group(layer, fn, idxs=drop).prune()
        removed += len(drop)
    return removed
