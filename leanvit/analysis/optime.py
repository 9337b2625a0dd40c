"""Op-time breakdown (EfficientViT Fig. 2, SHViT's latency breakdown): where inference time goes, by op
category, stage and block, with bytes moved and arithmetic intensity, so "memory-bound share" is a number.

- **Time**: ``torch.profiler`` over ``iters`` calls after warm-up; time is attributed to *top-level* aten ops
  (no aten ancestor), their inclusive CPU time: a leaf's self time misleads (timm DeiT's ``copy_`` is the
  bias broadcast inside ``addmm``, not a reshape cost). Category shares sum to 100 % of top-level time.
- **Scopes**: every non-leaf module down to ``scope_depth`` runs inside a ``record_function`` scope named by
  its FQN (a forward pre-hook enters, a forward hook exits); an op belongs to its innermost scope and to the
  stage (first one or two FQN components). Eager only: a jit trace has no module hooks.
- **Bytes / FLOPs**: one more eager call under a ``TorchFunctionMode`` that sees the same top-level calls
  (nested calls run with the mode off): bytes = input + output tensor bytes (0 when the output is a view of an
  input), FLOPs from ``torch.utils.flop_counter`` inside the call (leanvit's CPU-SDPA formula included).
- **Roofline reading**: an op is memory-bound when FLOPs / bytes < peak matmul FLOP/s / copy bandwidth,
  both measured here on one thread (:func:`machine_balance`).
- **OpenVINO**: :func:`openvino_breakdown` reads the plugin's per-layer counters (``PERF_COUNT``).

Shares are backend-specific (jit, OpenVINO and ORT fuse element-wise ops): every output names the backend.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

from ..errors import InvalidValueError
from ..models.counting import flop_formulas
from ..deploy.capabilities import check_precision, quiet_deprecations
from ..deploy.runtime import OPENVINO_PRECISION_HINTS
from ..deploy.writers import compile_openvino, to_openvino
from .taxonomy import COMPUTE, MEMORY_BOUND, base_name, category_of

__all__ = ["op_breakdown", "summarize", "count_bytes_and_flops", "machine_balance", "openvino_breakdown"]

_SCOPE = "scope::"


@contextlib.contextmanager
def module_scopes(model: nn.Module, depth: int = 5, stack: list[str] | None = None) -> Iterator[list[str]]:
    """``record_function`` scopes around every non-leaf module with at most ``depth`` FQN components; the
    optional ``stack`` is kept in step (innermost scope last) for counters that run outside the profiler."""
    stack = [] if stack is None else stack
    handles = []
    for name, module in model.named_modules():
        if not name or name.count(".") >= depth or not any(True for _ in module.children()):
            continue

        def pre(mod: nn.Module, args: tuple, _name: str = name) -> None:
            rf = record_function(_SCOPE + _name)
            rf.__enter__()
            stack.append(_name)
            mod._leanvit_scope = getattr(mod, "_leanvit_scope", []) + [rf]

        def post(mod: nn.Module, args: tuple, out: Any) -> None:
            mod._leanvit_scope.pop().__exit__(None, None, None)
            stack.pop()

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def stage_of(scope: str) -> str:
    """'stages.1.blocks.0.mixer' -> 'stages.1'; 'patch_embed.conv1' -> 'patch_embed'."""
    parts = scope.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1].isdigit() else parts[0] if scope else "(top level)"


def _conv_groups(event: Any) -> tuple[int | None, int | None]:
    shapes, concrete = getattr(event, "input_shapes", None) or [], getattr(event, "concrete_inputs", None) or []
    groups = concrete[-1] if concrete and isinstance(concrete[-1], int) else None
    channels = shapes[0][1] if shapes and len(shapes[0]) > 1 else None
    return groups, channels


def _top_level_ops(events: Any) -> list[dict[str, Any]]:
    rows = []
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        scope, parent, nested = "", e.cpu_parent, False
        while parent is not None:
            if parent.name.startswith("aten::"):
                nested = True
                break
            if not scope and parent.name.startswith(_SCOPE):
                scope = parent.name[len(_SCOPE):]
            parent = parent.cpu_parent
        if nested:
            continue
        groups, channels = _conv_groups(e) if "conv" in e.name else (None, None)
        rows.append(dict(op=base_name(e.name), category=category_of(e.name, groups, channels), scope=scope,
                         us=float(e.cpu_time_total)))
    return rows


class _ByteCounter(TorchFunctionMode):
    """Top-level torch calls: bytes in + out (0 for views) and FLOPs, per (op, category, scope)."""

    def __init__(self, stack: list[str]) -> None:
        super().__init__()
        self.stack = stack
        self.rows: list[dict[str, Any]] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        counter = FlopCounterMode(display=False, custom_mapping=flop_formulas())
        with counter:
            out = func(*args, **kwargs)
        outs = [t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]
        if not outs or name in ("__get__", "size", "dim", "numel", "is_contiguous", "__format__"):
            return out
        ins = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        storages = {a.untyped_storage().data_ptr() for a in ins}
        is_view = all(t.untyped_storage().data_ptr() in storages for t in outs)
        nbytes = 0 if is_view else sum(t.numel() * t.element_size() for t in (*ins, *outs))
        groups = args[6] if "conv" in name and len(args) > 6 else kwargs.get("groups")
        channels = args[0].shape[1] if groups is not None and ins else None
        self.rows.append(dict(op=base_name(name), category=category_of(name, groups, channels),
                              scope=self.stack[-1] if self.stack else "", bytes=nbytes,
                              flops=counter.get_total_flops()))
        return out


@torch.no_grad()
def count_bytes_and_flops(model: nn.Module, x: torch.Tensor, scope_depth: int = 5) -> list[dict[str, Any]]:
    """One eager forward: a row (op, category, scope, bytes, flops) per top-level torch call."""
    stack: list[str] = []
    with module_scopes(model, scope_depth, stack):
        counter = _ByteCounter(stack)
        with counter:
            model(x)
    return counter.rows


def machine_balance(duration_s: float = 0.3) -> dict[str, float]:
    """Single-thread fp32 matmul peak (FLOP/s), copy bandwidth (bytes/s) and their ratio (FLOP per byte)."""
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    src = torch.empty(16 * 2 ** 20 // 4)
    dst = torch.empty_like(src)

    def rate(fn: Any, work: float) -> float:
        fn()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < duration_s:
            fn()
            n += 1
        return work * n / (time.perf_counter() - start)

    peak = rate(lambda: a @ b, 2 * 512 ** 3)
    bandwidth = rate(lambda: dst.copy_(src), 2 * src.numel() * 4)
    return dict(peak_flops=peak, copy_bandwidth=bandwidth, balance=peak / bandwidth)


def _profile(fn: Any, iters: int) -> list[dict[str, Any]]:
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(iters):
            fn()
    return _top_level_ops(prof.events())


@torch.no_grad()
def op_breakdown(
    model: nn.Module, x: torch.Tensor, *, backend: str = "eager", iters: int = 5, warmup: int = 3,
    scope_depth: int = 5,
) -> dict[str, list[dict[str, Any]]]:
    """Profile ``model(x)`` (``backend`` 'eager' or 'jit' = ``torch.jit.trace``): the raw per-call op rows
    (``time``, microseconds summed over ``iters``) and the byte/FLOP rows (``counts``, one eager forward)."""
    if backend not in ("eager", "jit"):
        raise InvalidValueError(f"backend must be 'eager' or 'jit' (OpenVINO: openvino_breakdown), got {backend!r}")
    model = model.eval()
    counts = count_bytes_and_flops(model, x, scope_depth)
    torch.set_flush_denormal(True)  # denormals would time the weights, not the model
    try:
        if backend == "jit":
            with quiet_deprecations():
                runner = torch.jit.trace(model, x, check_trace=False)
            for _ in range(warmup):
                runner(x)
            timed = _profile(lambda: runner(x), iters)
        else:
            for _ in range(warmup):
                model(x)
            with module_scopes(model, scope_depth):
                timed = _profile(lambda: model(x), iters)
    finally:
        torch.set_flush_denormal(False)  # torch's default
    return dict(time=timed, counts=counts)


def _group(rows: list[dict[str, Any]], keys: tuple[str, ...], field: str) -> dict[tuple, list[float]]:
    out: dict[tuple, list[float]] = {}
    for r in rows:
        acc = out.setdefault(tuple(r[k] for k in keys), [0.0, 0])
        acc[0] += r[field]
        acc[1] += 1
    return out


def summarize(result: dict[str, list[dict[str, Any]]], iters: int, balance: float | None = None) -> dict[str, Any]:
    """Tables from :func:`op_breakdown`: ``ops`` (op, category: calls, ms per forward, share, MACs, bytes,
    intensity), ``categories``, ``stages`` (share per stage and category) and the memory-bound shares."""
    timed, counts = result["time"], result["counts"]
    total = sum(r["us"] for r in timed) or 1.0
    t_ops = _group(timed, ("op", "category"), "us")
    b_ops, f_ops = _group(counts, ("op", "category"), "bytes"), _group(counts, ("op", "category"), "flops")
    ops = []
    for key in sorted(set(t_ops) | set(b_ops), key=lambda k: -t_ops.get(k, [0])[0]):
        us, calls = t_ops.get(key, [0.0, 0])
        nbytes, flops = b_ops.get(key, [0.0])[0], f_ops.get(key, [0.0])[0]
        intensity = flops / nbytes if nbytes else None
        row = dict(op=key[0], category=key[1], calls=int(calls) // max(iters, 1), ms=us / iters / 1e3,
                   share=100 * us / total, macs=flops / 2, bytes=nbytes, intensity=intensity)
        if balance is not None:
            row["roofline"] = "compute" if intensity is not None and intensity >= balance else "memory"
        ops.append(row)
    cats = []
    t_cat, b_cat, f_cat = (_group(timed, ("category",), "us"), _group(counts, ("category",), "bytes"),
                           _group(counts, ("category",), "flops"))
    for (cat,), (us, _) in sorted(t_cat.items(), key=lambda kv: -kv[1][0]):
        nbytes, flops = b_cat.get((cat,), [0.0])[0], f_cat.get((cat,), [0.0])[0]
        cats.append(dict(category=cat, ms=us / iters / 1e3, share=100 * us / total, macs=flops / 2, bytes=nbytes,
                         intensity=flops / nbytes if nbytes else None,
                         kind="compute" if cat in COMPUTE else "memory-bound" if cat in MEMORY_BOUND else cat))
    stages = []
    for (stage, cat), (us, _) in sorted(_group([dict(r, stage=stage_of(r["scope"])) for r in timed],
                                               ("stage", "category"), "us").items()):
        stages.append(dict(stage=stage, category=cat, ms=us / iters / 1e3, share=100 * us / total))
    share = {c["category"]: c["share"] for c in cats}
    summary = dict(total_ms=total / iters / 1e3,
                   memory_bound_share=sum(share.get(c, 0.0) for c in MEMORY_BOUND),
                   memory_bound_share_with_dwconv=sum(share.get(c, 0.0) for c in (*MEMORY_BOUND, "dwconv")),
                   compute_share=sum(share.get(c, 0.0) for c in COMPUTE))
    if balance is not None:
        summary["roofline_memory_share"] = sum(r["share"] for r in ops if r.get("roofline") == "memory")
    return dict(ops=ops, categories=cats, stages=stages, summary=summary)


_OV_CATEGORIES = {
    "MatMul": "matmul", "FullyConnected": "matmul", "Convolution": "conv", "GroupConvolution": "dwconv",
    "ScaledDotProductAttention": "attention_fused", "Transpose": "copy_reshape", "Reorder": "copy_reshape",
    "Reshape": "view", "Concat": "concat", "Split": "view", "VariadicSplit": "view", "StridedSlice": "index",
    "Gather": "index", "Eltwise": "elementwise", "Subgraph": "elementwise", "MVN": "norm", "Softmax": "softmax",
    "SoftMax": "softmax", "Pooling": "pool_reduce", "Reduce": "pool_reduce", "ReduceMean": "pool_reduce",
    "Interpolate": "copy_reshape", "Broadcast": "copy_reshape", "Pad": "copy_reshape", "Input": "view",
    "Output": "view", "Parameter": "view", "Result": "view", "Const": "view", "Convert": "copy_reshape",
}


def openvino_breakdown(
    model: nn.Module, x: torch.Tensor, iters: int = 20, threads: int = 1, precision: str = "fp32",
) -> list[dict[str, Any]]:
    """OpenVINO per-layer counters: rows (node_type, exec_type, category, ms per call) summed over nodes.

    ``precision`` is set as OpenVINO's ``INFERENCE_PRECISION_HINT`` (its own default would be bf16 on some CPUs,
    and the profile would not be of the exact route); bf16 is refused where the CPU does not run it natively.
    Fused nodes report zero time (exec type 'undef'); exec types name the kernels (``brgconv_avx512``, ...)."""
    check_precision(precision, "openvino")
    config = {"PERF_COUNT": "YES", "INFERENCE_NUM_THREADS": threads,
              "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION_HINTS[precision]}
    compiled = compile_openvino(to_openvino(model, x), config)
    request = compiled.create_infer_request()
    totals: dict[tuple[str, str], float] = {}
    request.infer([x.numpy()])
    for _ in range(iters):
        request.infer([x.numpy()])
        for info in request.get_profiling_info():
            key = (info.node_type, info.exec_type)
            totals[key] = totals.get(key, 0.0) + info.real_time.total_seconds() * 1e3
    total = sum(totals.values()) or 1.0
    return [dict(node_type=t, exec_type=e, category=_OV_CATEGORIES.get(t, "other"), ms=ms / iters,
                 share=100 * ms / total) for (t, e), ms in sorted(totals.items(), key=lambda kv: -kv[1])]
