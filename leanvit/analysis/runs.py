"""One call per tool: compute, then write its tables (markdown, JSON with the environment, CSV) and PNG.

These are what ``leanvit analyze <tool>`` runs; each returns the paths it wrote.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .._io import atomic_write
from ..errors import InvalidValueError
from ..deploy.routes import target_for
from ..deploy.capabilities import torch_threads
from ..models import create_model
from ..models.checkpoint import checkpoint_img_size
from ..zoo import fuse_model, resolve_model
from . import design_space, heads, optime, sepvit_complexity, taylor
from .data import labelled_batches
from .report import run_record, save_figure, write_table

__all__ = [
    "run_op_breakdown", "run_head_similarity", "run_head_ablation", "run_taylor", "run_design_space",
    "run_block_complexity",
]


def _side(name: str, img_size: int | None, checkpoint: str | None) -> int:
    # as every command: a flag, else the size the checkpoint was trained at, else the model's native size
    return checkpoint_img_size(img_size, checkpoint, resolve_model(name).img_size)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def run_op_breakdown(
    models: Sequence[str], out_dir: str | Path, *, backend: str = "eager", img_size: int | None = None,
    batch_size: int = 1, iters: int = 5, warmup: int = 3, threads: int = 1, checkpoint: str | None = None,
    roofline: bool = True, precision: str = "fp32",
) -> list[Path]:
    """Per model: ``ops``, ``categories`` and ``stages`` tables; all models: ``op_breakdown_summary`` + PNG.
    ``precision``: OpenVINO's inference precision (fp32: the exact route; bf16 where the CPU runs it natively);
    eager and jit profile fp32 and refuse anything else."""
    if precision != "fp32" and backend != "openvino":
        raise InvalidValueError(f"--precision {precision} applies to --backend openvino only; {backend} profiles "
                                "fp32: drop --precision or use --backend openvino")
    args = dict(models=list(models), backend=backend, img_size=img_size, batch_size=batch_size, iters=iters,
                warmup=warmup, threads=threads, checkpoint=checkpoint, precision=precision)
    paths, summaries, bars = [], [], {}
    with torch_threads(threads):
        balance = optime.machine_balance() if roofline else None
        for name in models:
            side = _side(name, img_size, checkpoint)
            model = create_model(name, img_size=side, checkpoint=checkpoint).eval()
            fused = fuse_model(model, target_for(backend))
            x = torch.randn(batch_size, 3, side, side)
            meta = run_record("op-breakdown", args, backend=backend, batch_size=batch_size,
                              dtype="float32" if precision == "fp32" else "bfloat16",
                              machine_balance=balance, model=name, img_size=side)
            slug = f"{_slug(name)}_{backend}"
            if backend == "openvino":
                rows = optime.openvino_breakdown(fused, x, iters=iters, threads=threads, precision=precision)
                paths += write_table(out_dir, f"{slug}_layers", rows, meta,
                                     title=f"{name}: OpenVINO per-layer time (PERF_COUNT), batch {batch_size}")
                cats: dict[str, float] = {}
                for r in rows:
                    cats[r["category"]] = cats.get(r["category"], 0.0) + r["share"]
                bars[name] = cats
                continue
            tables = optime.summarize(optime.op_breakdown(fused, x, backend=backend, iters=iters, warmup=warmup),
                                      iters, balance["balance"] if balance else None)
            for key in ("ops", "categories", "stages"):
                paths += write_table(out_dir, f"{slug}_{key}", tables[key], meta,
                                     title=f"{name}: {key}, {backend}, batch {batch_size}, {threads} thread(s)")
            summaries.append(dict(model=name, backend=backend, **tables["summary"]))
            bars[name] = {c["category"]: c["share"] for c in tables["categories"]}
    if summaries:
        meta = run_record("op-breakdown", args, backend=backend, machine_balance=balance)
        paths += write_table(out_dir, f"op_breakdown_summary_{backend}", summaries, meta,
                             title="Memory-bound share of top-level op time (name taxonomy; roofline reading)")
    png = save_figure(Path(out_dir) / f"op_breakdown_{backend}.png", lambda fig: _stacked_bars(fig, bars, backend))
    return paths + ([png] if png else [])


def _stacked_bars(fig: Any, bars: dict[str, dict[str, float]], backend: str) -> None:
    ax = fig.add_subplot(1, 1, 1)
    cats = list(dict.fromkeys(c for shares in bars.values() for c in shares))
    bottom = np.zeros(len(bars))
    for cat in cats:
        values = np.array([bars[m].get(cat, 0.0) for m in bars])
        ax.bar(list(bars), values, bottom=bottom, label=cat)
        bottom += values
    ax.set_ylabel(f"share of op time (%), {backend}")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.tick_params(axis="x", labelsize=7, rotation=20)


def _batches(data: str, model: torch.nn.Module, side: int, images: int, batch_size: int, seed: int,
             split: str = "val") -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(labelled_batches(data, model, side, split=split, batch_size=batch_size, max_images=images, seed=seed))


def run_head_similarity(
    models: Sequence[str], out_dir: str | Path, *, data: str, definition: str | None = "shvit",
    target: str | None = None, reduce: str | None = None, granularity: str = "image", drop_cls: bool = False,
    images: int = 128, batch_size: int = 32, seed: int = 0, img_size: int | None = None,
    checkpoint: str | None = None, num_classes: int | None = None,
) -> list[Path]:
    """Per-layer head similarity of each model under one named definition; a line per model in the PNG."""
    chosen = dict(heads.DEFINITIONS[definition]) if definition else {}
    chosen.update({k: v for k, v in dict(target=target, reduce=reduce).items() if v})
    if set(chosen) != {"target", "reduce"}:
        raise InvalidValueError("give --definition (shvit or efficientvit) or both --target and --reduce")
    args = dict(models=list(models), data=data, definition=definition, granularity=granularity, drop_cls=drop_cls,
                images=images, batch_size=batch_size, seed=seed, img_size=img_size, checkpoint=checkpoint, **chosen)
    rows = []
    for name in models:
        side = _side(name, img_size, checkpoint)
        model = create_model(name, img_size=side, checkpoint=checkpoint, num_classes=num_classes).eval()
        batches = _batches(data, model, side, images, batch_size, seed)
        for r in heads.head_similarity(model, batches, granularity=granularity, drop_cls=drop_cls, **chosen):
            rows.append(dict(model=name, **r, similarity_pct=100 * r["similarity"]))
    label = f"{chosen['target']} / {chosen['reduce']} / {granularity}" + (" / no CLS" if drop_cls else "")
    tag = f"head_similarity_{chosen['target']}_{chosen['reduce']}"
    paths = write_table(out_dir, tag, rows, run_record("head-similarity", args), title=f"Head similarity ({label})",
                        notes=["Random-init weights give meaningless values: use trained weights."])
    png = save_figure(Path(out_dir) / f"{tag}.png", lambda fig: _per_layer(fig, rows, "similarity_pct",
                                                                           f"similarity (%), {label}"))
    return paths + ([png] if png else [])


def _per_layer(fig: Any, rows: list[dict[str, Any]], key: str, ylabel: str, by: str = "model") -> None:
    ax = fig.add_subplot(1, 1, 1)
    for series in dict.fromkeys(r[by] for r in rows):
        pts = [r for r in rows if r[by] == series]
        ax.plot([r["layer"] for r in pts], [r[key] for r in pts], marker="o", label=series)
    ax.set_xlabel("attention layer")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def run_head_ablation(
    model_name: str, out_dir: str | Path, *, data: str, images: int = 128, batch_size: int = 32, seed: int = 0,
    img_size: int | None = None, checkpoint: str | None = None, num_classes: int | None = None,
    cascade_mask: bool = True,
) -> list[Path]:
    """Remove-1 / leave-1 top-1 change per layer (best head of each)."""
    args = dict(model=model_name, data=data, images=images, batch_size=batch_size, seed=seed, img_size=img_size,
                checkpoint=checkpoint, cascade_mask=cascade_mask)
    side = _side(model_name, img_size, checkpoint)
    model = create_model(model_name, img_size=side, checkpoint=checkpoint, num_classes=num_classes).eval()
    rows = heads.head_ablation(model, _batches(data, model, side, images, batch_size, seed), cascade_mask=cascade_mask)
    rows = [dict(model=model_name, **r) for r in rows]
    slug = _slug(model_name)
    paths = write_table(out_dir, f"{slug}_head_ablation", rows, run_record("head-ablation", args),
                        title=f"{model_name}: head ablation on {images} images of {data}",
                        notes=["Deltas in top-1 points vs the full model; subsets are smoke runs "
                               "(the best of h heads is biased upward on few images)."])
    long = [dict(layer=r["layer"], delta=r[k + "_delta"], kind=k) for r in rows for k in ("remove1", "leave1")]
    png = save_figure(Path(out_dir) / f"{slug}_head_ablation.png",
                      lambda fig: _per_layer(fig, long, "delta", "top-1 change (points)", by="kind"))
    return paths + ([png] if png else [])


def run_taylor(
    model_name: str, out_dir: str | Path, *, data: str, keep: float, images: int = 256, batch_size: int = 32,
    seed: int = 0, qk: str = "joint", normalize: str = "mean", img_size: int | None = None,
    checkpoint: str | None = None, num_classes: int | None = None, prune: bool = False,
    parts: Sequence[str] = taylor.PRUNABLE_PARTS, finetune_epochs: int = 0, lr: float = 1e-4,
) -> list[Path]:
    """Taylor importance on training images, kept ratios under ``keep``, the Fig. 5-style plot and an ``.npz``.

    ``prune``: remove the dropped channels of ``parts`` (:func:`taylor.prune_channels`), then fine-tune for
    ``finetune_epochs`` on the same training images; top-1 on held-out (val) images before pruning, after
    pruning and after fine-tuning go into the JSON, and the pruned / fine-tuned models are saved as
    safetensors files that :func:`taylor.load_pruned` rebuilds (no pickle)."""
    if finetune_epochs and not prune:
        raise InvalidValueError("--finetune-epochs needs --prune")
    args = dict(model=model_name, data=data, keep=keep, images=images, batch_size=batch_size, seed=seed, qk=qk,
                normalize=normalize, img_size=img_size, checkpoint=checkpoint, prune=prune, parts=list(parts),
                finetune_epochs=finetune_epochs, lr=lr)
    side = _side(model_name, img_size, checkpoint)
    model = create_model(model_name, img_size=side, checkpoint=checkpoint, num_classes=num_classes).eval()
    batches = _batches(data, model, side, images, batch_size, seed, split="train")
    sites, importance, n = taylor.taylor_importance(model, batches, qk=qk)
    masks, rows = taylor.kept_channels(sites, importance, keep, normalize)
    slug = _slug(model_name)
    meta = run_record("taylor", args, batches=n)
    extra: list[Path] = []
    if prune:
        held_out = _batches(data, model, side, images, batch_size, seed, split="val")
        model.eval()
        with torch.no_grad():
            before = heads.accuracy(model, held_out)
        model, stats = taylor.prune_channels(model, sites, masks, parts, img_size=side)
        model.eval()
        with torch.no_grad():
            pruned_top1 = heads.accuracy(model, held_out)
        meta.update(stats, top1_val_before=before, top1_val_pruned=pruned_top1,
                    val_images=sum(len(y) for _, y in held_out))
        saved = dict(model_name=model_name, img_size=side, num_classes=_classes_of(model), qk=qk, parts=list(parts))
        extra.append(taylor.save_pruned(Path(out_dir) / f"{slug}_taylor_pruned.safetensors", model, masks, **saved))
        if finetune_epochs:
            losses = taylor.finetune_pruned(model, batches, finetune_epochs, lr=lr, seed=seed)
            model.eval()
            with torch.no_grad():
                meta.update(top1_val_finetuned=heads.accuracy(model, held_out), finetune_losses=losses)
            extra.append(taylor.save_pruned(Path(out_dir) / f"{slug}_taylor_finetuned.safetensors", model, masks,
                                            **saved))
    notes = []
    if prune:
        notes.append(f"Pruned {', '.join(f'{k.upper()} {v}' for k, v in meta['removed_channels'].items())} channels: "
                     f"params {meta['params_before']:,} -> {meta['params_after']:,}, MACs {meta['macs_before']:,} -> "
                     f"{meta['macs_after']:,}. Top-1 on {meta['val_images']} held-out images: "
                     f"{meta['top1_val_before']:.2f} % before, {meta['top1_val_pruned']:.2f} % pruned"
                     + (f", {meta['top1_val_finetuned']:.2f} % after {finetune_epochs} fine-tune epochs"
                        if finetune_epochs else "") + ".")
    paths = write_table(out_dir, f"{slug}_taylor_kept", [dict(model=model_name, **r) for r in rows], meta,
                        title=f"{model_name}: kept channels at keep={keep} (Taylor, {qk} Q/K, {n} batches)",
                        notes=notes)
    arrays = {f"{sites[i].block}:{key}": imp.numpy() for (i, key), imp in importance.items()}
    paths.append(atomic_write(Path(out_dir) / f"{slug}_taylor_importance.npz",
                              lambda tmp: np.savez(open(tmp, "wb"), **arrays)))
    png = save_figure(Path(out_dir) / f"{slug}_taylor_kept.png", lambda fig: _kept_plot(fig, rows, model_name, keep))
    return paths + extra + ([png] if png else [])


def _classes_of(model: torch.nn.Module) -> int:
    """The class count of a classifier (leanvit's and timm's models carry ``num_classes``)."""
    return int(getattr(model, "num_classes"))


def _kept_plot(fig: Any, rows: list[dict[str, Any]], model_name: str, keep: float) -> None:
    ax = fig.add_subplot(1, 1, 1)
    for comp in ("Q", "K", "V", "FFN"):
        pts = [r for r in rows if r["component"] == comp]
        line, = ax.plot([r["block_index"] for r in pts], [r["ratio"] for r in pts], marker="o", label=comp)
        ax.plot([r["block_index"] for r in pts], [r["baseline"] for r in pts], linestyle="--", color=line.get_color(),
                alpha=0.5)
    ax.set_xlabel("block")
    ax.set_ylabel("kept channels / embedding dim (dashed: unpruned)")
    ax.set_title(f"{model_name}: Taylor kept ratios at keep={keep}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def run_design_space(
    studies: Sequence[str], out_dir: str | Path, *, batch_size: int = 16, threads: int = 1, duration_s: float = 2.0,
    rounds: int = 3, measure_speed: bool = True, img_size: int | None = None,
) -> list[Path]:
    """One table and bar plot per study (throughput and MACs relative to the study's first row)."""
    paths = []
    for study in studies:
        args = dict(study=study, batch_size=batch_size, threads=threads, duration_s=duration_s, rounds=rounds,
                    measure_speed=measure_speed, img_size=img_size)
        rows = design_space.study_rows(study, batch_size=batch_size, threads=threads, duration_s=duration_s,
                                       rounds=rounds, measure_speed=measure_speed, img_size=img_size)
        title = design_space.STUDIES[study][0]
        meta = run_record("design-space", args, backend="jit", batch_size=batch_size, dtype="float32",
                          clock="process CPU time", weights="random")
        paths += write_table(out_dir, study, rows, meta, title=title,
                             columns=[c for c in rows[0] if c not in ("study", "switches")])
        png = save_figure(Path(out_dir) / f"{study}.png", lambda fig: _ratio_bars(fig, rows, title))
        paths += [png] if png else []
    return paths


def _ratio_bars(fig: Any, rows: list[dict[str, Any]], title: str) -> None:
    ax = fig.add_subplot(1, 1, 1)
    xs = np.arange(len(rows))
    ax.bar(xs - 0.2, [r["macs_ratio"] for r in rows], width=0.4, label="MACs / reference")
    if "speed_ratio" in rows[0]:
        ax.bar(xs + 0.2, [r["speed_ratio"] for r in rows], width=0.4, label="throughput / reference")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(xs, [r["config"] for r in rows], rotation=25, fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def run_block_complexity(
    models: Sequence[str], out_dir: str | Path, *, img_size: int | None = None, time_s: float = 0.0, rounds: int = 3,
    batch_size: int = 16, threads: int = 1,
) -> list[Path]:
    """``sepvit_blocks`` (formula vs counted MACs per block of every variant) and ``sepvit_vs_two_blocks``
    (one DSSA block vs Swin's and Twins' block pairs per stage of the first model), with a bar plot."""
    args = dict(models=list(models), img_size=img_size, time_s=time_s, rounds=rounds, batch_size=batch_size,
                threads=threads)
    blocks = [r for name in models for r in sepvit_complexity.sepvit_block_rows(name, img_size)]
    with torch_threads(threads):
        pairs = sepvit_complexity.block_pair_rows(models[0], img_size, time_s=time_s, rounds=rounds,
                                                  batch_size=batch_size)
    meta = run_record("block-complexity", args)
    mismatched = sum(1 for r in blocks if r["diff"])
    paths = write_table(out_dir, "sepvit_blocks", blocks, meta, title="SepViT: formula vs counted attention MACs",
                        notes=[f"{len(blocks)} blocks, {mismatched} differ from the formula that applies."])
    paths += write_table(out_dir, "sepvit_vs_two_blocks", pairs, meta,
                         title=f"{models[0]}: one SepViT block vs two-block patterns (attention MACs)")
    png = save_figure(Path(out_dir) / "sepvit_vs_two_blocks.png", lambda fig: _pair_bars(fig, pairs))
    return paths + ([png] if png else [])


def _pair_bars(fig: Any, pairs: list[dict[str, Any]]) -> None:
    ax = fig.add_subplot(1, 1, 1)
    xs = np.arange(len(pairs))
    for offset, key, label in ((-0.25, "dssa_counted", "SepViT DSSA"), (0.0, "swin_pair_counted", "Swin W-MSA+SW-MSA"),
                               (0.25, "twins_pair_counted", "Twins LSA+GSA")):
        ax.bar(xs + offset, [r[key] / 1e6 for r in pairs], width=0.25, label=label)
    ax.set_xticks(xs, [f"stage {r['stage']} ({r['H']}², C={r['C']})" for r in pairs], fontsize=7)
    ax.set_ylabel("attention MACs (M), counted")
    ax.legend(fontsize=7)
