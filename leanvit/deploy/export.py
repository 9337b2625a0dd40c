"""Export a fused model to ONNX, OpenVINO IR or TorchScript, then check the artifact against PyTorch.

Always on the fused (BN-folded) model, in the form for the format's runtime (``leanvit.fuse(target=...)``
via :func:`~leanvit.zoo.target_for`: an OpenVINO IR gets EfficientViT-M's split-qkv attention,
ONNX and TorchScript the PyTorch graph; timm models are fused the same way for every format). The file
is written next to ``output`` under a temporary name, run with its runtime (ONNX Runtime / OpenVINO /
``torch.jit.load``) on random input and compared with that fused PyTorch model in fp32:

* fp32: max abs difference <= :data:`FP32_ATOL` (1e-4);
* bf16: max relative logit error (per image ``max|diff| / max|logit|``) <= :data:`BF16_RTOL` (2e-2).

Only a verified artifact is moved to ``output``; a failed one is kept as ``output + '.failed'`` and
:class:`ExportVerificationError` reports the measured difference.

ONNX exporter: ``dynamo=False`` (default) is the TorchScript-based exporter at opset 17, one file;
``dynamo=True`` is ``torch.export``-based (opset 20 by default here) with ``external_data=False``
for a single file, and with a dynamic batch it traces batch >= 2 (a batch-1 trace would pin the
batch dimension to 1). ``dynamo=`` is always passed explicitly: its default flipped in torch 2.9.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_weights
from ..zoo import build_model, fuse_model, resolve_model, target_for
from .runtime import (
    UnsupportedPrecisionError, check_precision, load_artifact, quiet_deprecations, require, to_openvino, torch_threads,
)

__all__ = [
    "FORMATS", "FP32_ATOL", "BF16_RTOL", "ExportResult", "ExportVerificationError",
    "export_onnx", "export_openvino", "export_torchscript", "export_model", "logit_errors",
]

FORMATS = {"onnx": (".onnx",), "openvino": (".xml",), "torchscript": (".pt", ".ts")}
FP32_ATOL = 1e-4
BF16_RTOL = 2e-2
LEGACY_OPSET = 17


@dataclass
class ExportResult:
    """What was written and how well it matches PyTorch."""
    path: str
    format: str
    precision: str
    exporter: str
    input_shape: tuple[int, ...]
    dynamic_batch: bool
    checked_batches: list[int] = field(default_factory=list)
    max_abs_diff: float | None = None
    max_rel_err: float | None = None
    tolerance: str = ""
    verified: bool | None = None  # None: verification skipped
    files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for people."""
        if self.verified is None:
            check = "not verified"
        else:
            check = (f"{'OK' if self.verified else 'FAILED'}: max abs diff {self.max_abs_diff:.3g}, "
                     f"max rel logit err {self.max_rel_err:.3g} vs PyTorch fp32 ({self.tolerance}; "
                     f"batches {self.checked_batches})")
        return f"{self.format} ({self.exporter}, {self.precision}) -> {self.path}: {check}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly fields."""
        return asdict(self)


class ExportVerificationError(RuntimeError):
    """The exported artifact does not reproduce the PyTorch model; ``result`` has the numbers."""
    def __init__(self, message: str, result: ExportResult) -> None:
        super().__init__(message)
        self.result = result


def logit_errors(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    """(max abs diff, max over images of max|diff| / max|ref logit|) in float64."""
    ref, out = ref.double().reshape(ref.shape[0], -1), out.double().reshape(out.shape[0], -1)
    if ref.shape != out.shape:
        raise ValueError(f"output shape {tuple(out.shape)} differs from PyTorch's {tuple(ref.shape)}")
    diff = (ref - out).abs()
    rel = diff.amax(1) / ref.abs().amax(1).clamp_min(1e-12)
    return float(diff.max()), float(rel.max())


class _CastTo(nn.Module):
    """Float32 in and out around a model whose weights were cast to ``dtype`` (portable bf16)."""
    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).to(dtype)  # never cast the caller's module
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    *,
    dynamo: bool = False,
    opset: int | None = None,
    dynamic_batch: bool = False,
) -> str:
    """Write a single-file ONNX model; returns a description of the exporter used."""
    require("onnx", "onnx", "ONNX export")
    names = dict(input_names=["input"], output_names=["logits"])
    with quiet_deprecations(), torch.no_grad():
        if dynamo:
            require("onnxscript", "onnx", "the dynamo ONNX exporter")
            if dynamic_batch and example.shape[0] < 2:
                raise ValueError("the dynamo exporter specialises a batch-1 trace to batch 1: "
                                 "trace with batch >= 2 for --dynamic-batch")
            shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
            torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False, opset_version=opset,
                              dynamic_shapes=shapes, optimize=True, verbose=False, **names)
            return f"torch.onnx dynamo=True opset {opset or 'default'}"
        axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset or LEGACY_OPSET,
                          dynamic_axes=axes, do_constant_folding=True, **names)
        return f"torch.onnx dynamo=False (TorchScript) opset {opset or LEGACY_OPSET}"


def export_openvino(
    model: nn.Module, example: torch.Tensor, path: str | Path, *, dynamic_batch: bool = False, precision: str = "fp32",
) -> str:
    """Write an OpenVINO IR (``.xml`` + ``.bin``, fp32 weights) whose runtime options carry ``precision``."""
    ov = require("openvino", "openvino", "OpenVINO export")
    ov_model = to_openvino(model, example, dynamic_batch=dynamic_batch)
    # Precision is a compile-time hint in OpenVINO (its CPU default is bf16 on AMX CPUs), so the IR
    # records the one it was verified with; leanvit's loader applies it.
    ov_model.set_rt_info({"fp32": "f32", "bf16": "bf16"}[precision], ["runtime_options", "INFERENCE_PRECISION_HINT"])
    ov.save_model(ov_model, str(path), compress_to_fp16=False)  # fp16 weights would cost ~1e-3 accuracy
    return f"openvino.convert_model {ov.__version__}"


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | Path, *, precision: str = "fp32") -> str:
    """Write a traced TorchScript module (bf16: weights in bf16, float32 in/out)."""
    if precision == "bf16":
        model = _CastTo(model, torch.bfloat16)
    with quiet_deprecations(), torch.no_grad():
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
        torch.jit.save(traced, str(path))
    return "torch.jit.trace"


def _check_output(fmt: str, output: Path) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if output.suffix.lower() not in FORMATS[fmt]:
        raise ValueError(f"{fmt} output must end in {' or '.join(FORMATS[fmt])}, got {output.name!r}")
    if not output.parent.exists():
        raise FileNotFoundError(f"output directory {output.parent} does not exist")


def _write(fmt: str, model: nn.Module, example: torch.Tensor, path: Path, *, dynamo: bool, opset: int | None,
           dynamic_batch: bool, precision: str) -> str:
    """Write one artifact (a seam the tests use to corrupt exports)."""
    if fmt == "onnx":
        return export_onnx(model, example, path, dynamo=dynamo, opset=opset, dynamic_batch=dynamic_batch)
    if fmt == "openvino":
        return export_openvino(model, example, path, dynamic_batch=dynamic_batch, precision=precision)
    return export_torchscript(model, example, path, precision=precision)


def _verify(result: ExportResult, fused: nn.Module, artifact: Path, batches: list[int], side: int,
            threads: int | None, seed: int) -> None:
    runtime = load_artifact(artifact, threads=threads, precision=result.precision)
    gen = torch.Generator().manual_seed(seed)
    worst_abs = worst_rel = 0.0
    for b in batches:
        x = torch.randn(b, 3, side, side, generator=gen)
        with torch.no_grad():
            ref = fused(x)
        abs_diff, rel = logit_errors(ref, runtime(x))
        worst_abs, worst_rel = max(worst_abs, abs_diff), max(worst_rel, rel)
    result.checked_batches = batches
    result.max_abs_diff, result.max_rel_err = worst_abs, worst_rel
    if result.precision == "fp32":
        result.tolerance = f"max abs diff <= {FP32_ATOL:g}"
        result.verified = worst_abs <= FP32_ATOL
    else:
        result.tolerance = f"max rel logit err <= {BF16_RTOL:g}"
        result.verified = worst_rel <= BF16_RTOL


def _export_and_verify(module: nn.Module, fmt: str, output: Path, side: int, batch_size: int, dynamic_batch: bool,
                       precision: str, dynamo: bool, opset: int | None, verify: bool, threads: int | None,
                       seed: int) -> tuple[ExportResult, bool]:
    """Fuse for the format's runtime, write under a temporary name, verify, then move to ``output``
    (or ``output.failed``)."""
    fused = fuse_model(module, target=target_for(fmt)).float().cpu().eval()
    example = torch.randn(batch_size, 3, side, side, generator=torch.Generator().manual_seed(seed))

    tmpdir = Path(tempfile.mkdtemp(prefix=".leanvit-export-", dir=output.parent))
    try:
        tmp = tmpdir / f"model{output.suffix}"
        exporter = _write(fmt, fused, example, tmp, dynamo=dynamo, opset=opset, dynamic_batch=dynamic_batch,
                          precision=precision)
        result = ExportResult(str(output), fmt, precision, exporter, tuple(example.shape), dynamic_batch)
        if verify:
            batches = [batch_size] + ([batch_size + 1] if dynamic_batch else [])
            _verify(result, fused, tmp, batches, side, threads, seed + 1)
        ok = result.verified is not False
        # .xml travels with its .bin; other formats are one file.
        pairs = [(tmp, output)]
        if fmt == "openvino":
            pairs.append((tmp.with_suffix(".bin"), output.with_suffix(".bin")))
        for src, dst in pairs:
            final = dst if ok else dst.with_name(dst.name + ".failed")
            os.replace(src, final)
            result.files.append(str(final))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return result, ok


def export_model(
    model: str | nn.Module,
    format: str,
    output: str | Path,
    *,
    checkpoint: str | Path | None = None,
    img_size: int | None = None,
    batch_size: int | None = None,
    dynamic_batch: bool = False,
    precision: str = "fp32",
    dynamo: bool = False,
    opset: int | None = None,
    verify: bool = True,
    threads: int | None = 1,
    seed: int = 0,
) -> ExportResult:
    """Fuse ``model`` (a leanvit/timm name or an eval module), export it to ``output`` and verify it.

    Raises :class:`ExportVerificationError` (file kept as ``output.failed``) when the artifact does not
    match, and ValueError / :class:`UnsupportedPrecisionError` on bad arguments.
    """
    output = Path(output)
    _check_output(format, output)
    if precision not in ("fp32", "bf16"):
        raise UnsupportedPrecisionError(f"export precision must be fp32 or bf16, got {precision!r} "
                                        "(fp16 is a GPU inference setting, not an export format here)")
    if precision == "bf16" and format == "onnx":
        raise UnsupportedPrecisionError("bf16 ONNX cannot be verified: onnxruntime's CPU provider has no bf16 "
                                        "kernels. Export fp32 ONNX, or use --format openvino / torchscript with bf16")
    if precision == "bf16" and format == "openvino":
        check_precision("bf16", "openvino")
    if img_size is not None and img_size < 32:
        raise ValueError(f"img_size must be >= 32 (the models downsample by 16 or more), got {img_size}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if format == "onnx" and dynamo and dynamic_batch and batch_size == 1:
        raise ValueError("the dynamo exporter specialises a batch-1 trace to batch 1: trace with batch >= 2 "
                         "(--batch-size 2, the default) for --dynamic-batch")
    if isinstance(model, str):
        spec = resolve_model(model)
        side = img_size or spec.img_size
        module = build_model(spec, side)
        if checkpoint is not None:
            load_weights(module, checkpoint)
    else:
        if checkpoint is not None:
            raise ValueError("pass checkpoint= only with a model name; load weights into a module yourself")
        module = model.eval()
        side = img_size or int(getattr(module, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[-1])
    if batch_size is None:
        batch_size = 2 if (dynamo and dynamic_batch) else 1
    # One torch thread by default as well: on a busy small machine multi-threaded tracing of many
    # small ops can be orders of magnitude slower (OpenMP barriers wait for descheduled threads).
    with torch_threads(threads):
        result, ok = _export_and_verify(module, format, output, side, batch_size, dynamic_batch, precision, dynamo,
                                        opset, verify, threads, seed)
    if not ok:
        raise ExportVerificationError(
            f"exported {format} does not match PyTorch: max abs diff {result.max_abs_diff:.3g}, max rel logit "
            f"err {result.max_rel_err:.3g} (needs {result.tolerance}); kept for inspection as "
            f"{', '.join(result.files)}", result)
    return result
