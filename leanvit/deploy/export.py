"""``export_model``: fuse a model, write it as ONNX / OpenVINO IR / TorchScript, verify it, keep failures.

Always on the fused (BN-folded) model, in the form for the format's runtime (``leanvit.fuse(target=...)``
via :func:`~leanvit.zoo.target_for`: an OpenVINO IR gets EfficientViT-M's split-qkv attention,
ONNX and TorchScript the PyTorch graph; timm models are fused the same way for every format). The file
is written next to ``output`` under a temporary name by :mod:`.writers`, run with its runtime (ONNX
Runtime / OpenVINO / ``torch.jit.load``) and compared with that fused PyTorch model in fp32 by
:mod:`.verify` (bounds: :func:`~leanvit.deploy.verify.tolerance_for`). Only a verified artifact is moved
to ``output``; a failed one is kept as ``output + '.failed'`` and :class:`ExportVerificationError`
reports the measured difference.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InvalidValueError, OperationError
from ..zoo import fuse_model, resolve_model, target_for
from .capabilities import UnsupportedPrecisionError, check_precision, torch_threads
from .int8 import build_for, eval_transform, load_image_folder
from .mobile import coreml_can_predict
from .names import EXPORT_PRECISIONS, FORMAT_PRECISIONS
from .quantize import quantize_for
from .options import ExportOptions
from .verify import tolerance_for, verify_artifact
from .writers import check_output_path, write_artifact

__all__ = ["ExportResult", "ExportVerificationError", "export_model"]

# export format -> the runtime its int8 artifact is quantised for
INT8_FORMAT_RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino", "executorch": "executorch"}


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
    rel_err: float | None = None  # max abs diff / the reference logits' spread across the checked images
    top1_agreement: float | None = None
    correlation: float | None = None  # of the input-dependent logits (logit_agreement's input_correlation)
    tolerance: str = ""
    verified: bool | None = None  # None: verification skipped
    files: list[str] = field(default_factory=list)

    def errors(self) -> str:
        """The measured differences in words."""
        return (f"max abs diff {self.max_abs_diff:.3g}, error / logit spread {self.rel_err:.3g}, "
                f"top-1 agreement {self.top1_agreement:.2f}, input correlation {self.correlation:.3f}")

    def summary(self) -> str:
        """One line for people."""
        if self.verified is None:
            check = "not verified" + (f" ({self.tolerance})" if self.tolerance else "")
        else:
            check = (f"{'OK' if self.verified else 'FAILED'}: {self.errors()} vs PyTorch fp32 ({self.tolerance}; "
                     f"batches {self.checked_batches})")
        return f"{self.format} ({self.exporter}, {self.precision}) -> {self.path}: {check}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly fields."""
        return asdict(self)


class ExportVerificationError(OperationError):
    """The exported artifact does not reproduce the PyTorch model; ``result`` has the numbers."""
    def __init__(self, message: str, result: ExportResult) -> None:
        super().__init__(message)
        self.result = result


def _check_arguments(fmt: str, output: Path, opts: ExportOptions) -> None:
    check_output_path(fmt, output)
    if opts.precision not in EXPORT_PRECISIONS:
        raise UnsupportedPrecisionError(f"export precision must be one of {', '.join(EXPORT_PRECISIONS)}, "
                                        f"got {opts.precision!r}")
    if opts.precision == "bf16" and fmt == "onnx":
        raise UnsupportedPrecisionError("bf16 ONNX cannot be verified: onnxruntime's CPU provider has no bf16 "
                                        "kernels. Export fp32 ONNX, or use --format openvino / torchscript with bf16")
    if opts.precision not in FORMAT_PRECISIONS[fmt]:
        raise UnsupportedPrecisionError(f"{fmt} exports in {' or '.join(FORMAT_PRECISIONS[fmt])}, not "
                                        f"{opts.precision} (fp16 is Core ML's precision; elsewhere a GPU setting)")
    if opts.precision == "int8" and opts.calibration is None:
        raise InvalidValueError("int8 export calibrates on real images: pass --calibration DIR (a folder of images of the "
                                "task; random noise calibrates badly, docs/deploy.md)")
    if opts.precision == "bf16" and fmt == "openvino":
        check_precision("bf16", "openvino")
    if opts.img_size is not None and opts.img_size < 32:
        raise InvalidValueError(f"img_size must be >= 32 (the models downsample by 16 or more), got {opts.img_size}")
    if opts.batch_size is not None and opts.batch_size < 1:
        raise InvalidValueError(f"batch_size must be >= 1, got {opts.batch_size}")
    if fmt == "onnx" and opts.dynamo and opts.dynamic_batch and opts.batch_size == 1:
        raise InvalidValueError("the dynamo exporter specialises a batch-1 trace to batch 1: trace with batch >= 2 "
                                "(--batch-size 2, the default) for --dynamic-batch")


def _export_and_verify(module: nn.Module, fmt: str, output: Path, side: int, batch_size: int,
                       opts: ExportOptions) -> tuple[ExportResult, bool]:
    """Fuse for the format's runtime, write under a temporary name, verify, then move to ``output``
    (or ``output.failed``)."""
    fused = fuse_model(module, target=target_for(fmt)).float().cpu().eval()
    example = torch.randn(batch_size, 3, side, side, generator=torch.Generator().manual_seed(opts.seed))

    tmpdir = Path(tempfile.mkdtemp(prefix=".leanvit-export-", dir=output.parent))
    try:
        tmp = tmpdir / f"model{output.suffix}"
        calibration = None
        if opts.precision == "int8":
            calibration, _, _ = load_image_folder(opts.calibration, eval_transform(module, side), labelled=False,
                                                  limit=opts.calibration_images, what="calibration")
            exporter = quantize_for(INT8_FORMAT_RUNTIMES[fmt], fused, example, calibration, tmp,
                                    threads=opts.threads).description
        else:
            exporter = write_artifact(fmt, fused, example, tmp, dynamo=opts.dynamo, opset=opts.opset,
                                      dynamic_batch=opts.dynamic_batch, precision=opts.precision)
        result = ExportResult(str(output), fmt, opts.precision, exporter, tuple(example.shape), opts.dynamic_batch)
        if fmt == "coreml" and not coreml_can_predict():
            result.tolerance = "conversion checked; Core ML predictions need macOS"
        elif opts.verify:
            batches = [batch_size] + ([batch_size + 1] if opts.dynamic_batch else [])
            check, result.verified = verify_artifact(tmp, fused, precision=opts.precision, batches=batches,
                                                     img_size=side, threads=opts.threads, seed=opts.seed + 1,
                                                     images=calibration)
            result.checked_batches, result.tolerance = batches, tolerance_for(opts.precision)
            result.max_abs_diff, result.rel_err, result.top1_agreement, result.correlation = (
                check.max_abs_diff, check.rel_err, check.top1_agreement, check.correlation)
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
    options: ExportOptions | None = None,
    **overrides: Any,
) -> ExportResult:
    """Fuse ``model`` (a leanvit/timm name or an eval module), export it to ``output`` and verify it.

    ``options`` (:class:`~leanvit.deploy.options.ExportOptions`, default: its defaults) says how;
    keyword ``overrides`` replace single fields (``export_model(name, "onnx", "m.onnx", img_size=160)``).
    Raises :class:`ExportVerificationError` (file kept as ``output.failed``) when the artifact does not
    match, and ValueError / :class:`~leanvit.deploy.capabilities.UnsupportedPrecisionError` on bad arguments.
    """
    opts = (options or ExportOptions()).replace(**overrides)
    if format in FORMAT_PRECISIONS and opts.precision is None:
        opts = opts.replace(precision=FORMAT_PRECISIONS[format][0])
    output = Path(output)
    _check_arguments(format, output, opts)
    if isinstance(model, str):
        spec = resolve_model(model)
        side = opts.img_size or spec.img_size
        module = build_for(spec, side, opts.checkpoint)
    else:
        if opts.checkpoint is not None:
            raise InvalidValueError("pass checkpoint= only with a model name; load weights into a module yourself")
        module = model.eval()
        side = opts.img_size or int(getattr(module, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[-1])
    batch_size = opts.batch_size or (2 if (opts.dynamo and opts.dynamic_batch) else 1)
    # One torch thread by default as well: on a busy small machine multi-threaded tracing of many
    # small ops can be orders of magnitude slower (OpenMP barriers wait for descheduled threads).
    with torch_threads(opts.threads):
        result, ok = _export_and_verify(module, format, output, side, batch_size, opts)
    if not ok:
        raise ExportVerificationError(
            f"exported {format} does not match PyTorch: {result.errors()} (needs {result.tolerance}); kept for "
            f"inspection as {', '.join(result.files)}", result)
    return result
