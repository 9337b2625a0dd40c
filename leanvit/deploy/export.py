"""The one exporter: fuse a model, write it in a route's format, verify it, keep failures.

:func:`export_model` exports a classifier (a leanvit / timm name or module), :func:`export_segmentor` a
segmentor (free image size, ``dynamic_size``); both go through :func:`_write_and_verify`. Always on the
fused (BN-folded) model, in the form for the format's runtime (``leanvit.fuse(target=...)``, the route's
``fuse_target``: an OpenVINO IR gets EfficientViT-M's split-qkv attention, ONNX and TorchScript the PyTorch
graph; timm models are fused the same way for every format; segmentors take the ONNX form for both of their
formats, their OpenVINO IR being converted from the ONNX graph). The file is written next to ``output``
under a temporary name by the route's writer (:mod:`.writers`; int8: :mod:`.quantize`), opened with its
runtime and compared with that fused PyTorch model in fp32 by :mod:`.verify` (bounds:
:func:`~leanvit.deploy.verify.tolerance_for`). One failure policy: only a verified artifact is moved to
``output``; a failed one (wrong logits, or a graph that cannot run a checked input) is kept as
``output + '.failed'`` and :class:`ExportVerificationError` reports the measured difference. Options a
route does not take are refused (:func:`~leanvit.deploy.options.check_route_options`).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .._flags import changed_flags
from ..errors import InvalidValueError, OperationError
from ..models import create_model, fuse
from ..models.checkpoint import checkpoint_img_size
from ..zoo import fuse_model, resolve_model
from .capabilities import UnsupportedPrecisionError, check_precision, torch_threads
from .images import load_image_folder, model_eval_transform
from .mobile import coreml_can_predict
from .options import ExportOptions, check_route_options
from .quantize import quantize_for
from .routes import DENSE_FORMATS, INT8_EXPORT_OPTIONS, PRECISIONS, Route, format_route, target_for
from .verify import ArtifactRunError, tolerance_for, verify_artifact
from .writers import check_output_path, write_artifact

__all__ = ["ExportResult", "ExportVerificationError", "export_model", "export_segmentor"]


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
    checked_sizes: list[tuple[int, int]] = field(default_factory=list)  # (H, W) per checked batch
    max_abs_diff: float | None = None
    rel_err: float | None = None  # max abs diff / the reference logits' spread across the checked images
    top1_agreement: float | None = None
    correlation: float | None = None  # of the input-dependent logits (logit_agreement's input_correlation)
    tolerance: str = ""
    verified: bool | None = None  # None: verification skipped
    failure: str = ""  # why the artifact could not be checked (it failed to run a checked input)
    files: list[str] = field(default_factory=list)

    def errors(self) -> str:
        """The measured differences in words."""
        if self.failure:
            return self.failure
        return (f"max abs diff {self.max_abs_diff:.3g}, error / logit spread {self.rel_err:.3g}, "
                f"top-1 agreement {self.top1_agreement:.2f}, input correlation {self.correlation:.3f}")

    def summary(self) -> str:
        """One line for people."""
        if self.verified is None:
            check = "not verified" + (f" ({self.tolerance})" if self.tolerance else "")
        else:
            sizes = sorted(set(self.checked_sizes))
            at = f" at {', '.join(f'{h}x{w}' for h, w in sizes)}" if len(sizes) > 1 else ""
            check = (f"{'OK' if self.verified else 'FAILED'}: {self.errors()} vs PyTorch fp32 ({self.tolerance}; "
                     f"batches {self.checked_batches}{at})")
        return f"{self.format} ({self.exporter}, {self.precision}) -> {self.path}: {check}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly fields."""
        return asdict(self)


class ExportVerificationError(OperationError):
    """The exported artifact does not reproduce the PyTorch model; ``result`` has the numbers."""
    def __init__(self, message: str, result: ExportResult) -> None:
        super().__init__(message)
        self.result = result


def _check_arguments(route: Route, output: Path, opts: ExportOptions) -> None:
    check_output_path(route, output)
    fmt = route.format
    if opts.precision not in PRECISIONS:
        raise UnsupportedPrecisionError(f"export precision must be one of {', '.join(PRECISIONS)}, "
                                        f"got {opts.precision!r}")
    if opts.precision not in route.precisions:
        why = route.precision_note or "fp16 is Core ML's precision; elsewhere a GPU setting"
        raise UnsupportedPrecisionError(f"{fmt} exports in {' or '.join(route.precisions)}, not {opts.precision} ({why})")
    if opts.precision == "int8" and opts.calibration is None:
        raise InvalidValueError("int8 export calibrates on real images: pass --calibration DIR (a folder of images of "
                                "the task; random noise calibrates badly, docs/deploy.md)")
    if opts.precision != "int8":
        int8_only = changed_flags(opts, exclude=[f.name for f in fields(opts) if f.name not in INT8_EXPORT_OPTIONS])
        if int8_only:
            raise InvalidValueError(f"{', '.join(int8_only)} calibrate(s) int8 exports: add --precision int8 or drop "
                                    "the flag(s)")
    if opts.precision == "bf16" and route.mixed_precision == "openvino":
        check_precision("bf16", route.backend)
    if opts.img_size is not None and opts.img_size < 32:
        raise InvalidValueError(f"img_size must be >= 32 (the models downsample by 16 or more), got {opts.img_size}")
    if opts.batch_size is not None and opts.batch_size < 1:
        raise InvalidValueError(f"batch_size must be >= 1, got {opts.batch_size}")
    if opts.dynamo and opts.dynamic_batch and opts.batch_size == 1:
        raise InvalidValueError("the dynamo exporter specialises a batch-1 trace to batch 1: trace with batch >= 2 "
                                "(--batch-size 2, the default) for --dynamic-batch")


def _write_and_verify(fused: nn.Module, route: Route, output: Path, example: torch.Tensor, opts: ExportOptions, *,
                      calibration: torch.Tensor | None = None, sizes: list[tuple[int, int]] | None = None,
                      dynamic_size: bool = False) -> ExportResult:
    """Write ``fused`` through ``route`` under a temporary name beside ``output``, verify it (``sizes``: a
    dense model, checked at batches 1, 2, ... at these (H, W); ``dynamic_size``: its height and width are
    free), then move it to ``output`` or, failed, to ``output.failed``; raises
    :class:`ExportVerificationError` after a failure."""
    batch_size = int(example.shape[0])
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        tmp = tmpdir / f"model{output.suffix}"
        if opts.precision == "int8":
            exporter = quantize_for(route.int8, fused, example, calibration, tmp, threads=opts.threads,
                                     target_cpu=opts.target_cpu).description
        else:
            settings = dict(dynamo=opts.dynamo, opset=opts.opset, dynamic_batch=opts.dynamic_batch,
                            dense=sizes is not None, dynamic_size=dynamic_size, precision=opts.precision)
            # the options were checked against the route; its writer takes these of them (TorchScript's
            # dynamic batch, say, is a property of the trace that the verification checks, not a writer setting)
            exporter = write_artifact(route.format, fused, example, tmp,
                                      **{k: v for k, v in settings.items() if k in route.writer_options})
        result = ExportResult(str(output), route.format, opts.precision, exporter, tuple(example.shape),
                              opts.dynamic_batch)
        if route.name == "coreml" and not coreml_can_predict():
            result.tolerance = "conversion checked; Core ML predictions need macOS"
        elif opts.verify:
            if sizes is not None:
                batches = list(range(1, len(sizes) + 1))
            else:
                batches = [batch_size] + ([batch_size + 1] if opts.dynamic_batch else [])
            side = int(example.shape[-1])
            result.checked_batches, result.tolerance = batches, tolerance_for(opts.precision)
            result.checked_sizes = list(sizes) if sizes is not None else [(side, side)] * len(batches)
            try:
                check, result.verified = verify_artifact(tmp, fused, precision=opts.precision, batches=batches,
                                                         img_size=side, threads=opts.threads, seed=opts.seed + 1,
                                                         images=calibration, sizes=sizes)
                result.max_abs_diff, result.rel_err, result.top1_agreement, result.correlation = (
                    check.max_abs_diff, check.rel_err, check.top1_agreement, check.correlation)
            except ArtifactRunError as e:
                result.verified, result.failure = False, str(e)
        ok = result.verified is not False
        for suffix in (output.suffix, *route.companions):  # an OpenVINO .xml travels with its .bin
            src, dst = tmp.with_suffix(suffix), output.with_suffix(suffix)
            final = dst if ok else dst.with_name(dst.name + ".failed")
            os.replace(src, final)
            result.files.append(str(final))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    if not ok:
        hint = ("; a graph right at one size and wrong at another depends on the input size: export with "
                "dynamic_size=False (--fixed-size) at the size you will run") if dynamic_size else ""
        raise ExportVerificationError(
            f"exported {route.format} does not match PyTorch: {result.errors()} (needs {result.tolerance}); kept for "
            f"inspection as {', '.join(result.files)}{hint}", result)
    return result


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
    match, and :class:`~leanvit.errors.InvalidValueError` /
    :class:`~leanvit.deploy.capabilities.UnsupportedPrecisionError` on bad arguments (an option the
    format's route does not take included).
    """
    route = format_route(format)
    opts = (options or ExportOptions()).replace(**overrides)
    check_route_options(opts, route)  # before the default precision is filled in: only what was asked is checked
    if opts.precision is None:
        opts = opts.replace(precision=route.precisions[0])
    output = Path(output)
    _check_arguments(route, output, opts)
    if isinstance(model, str):
        spec = resolve_model(model)
        side = checkpoint_img_size(opts.img_size, opts.checkpoint, spec.img_size)  # the size it was trained at
        module = create_model(spec.ref, img_size=side, checkpoint=opts.checkpoint).eval()  # shaped like the checkpoint
    else:
        if opts.checkpoint is not None:
            raise InvalidValueError("pass checkpoint= only with a model name; load weights into a module yourself")
        module = model.eval()
        side = opts.img_size or int(getattr(module, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[-1])
    batch_size = opts.batch_size or (2 if (opts.dynamo and opts.dynamic_batch) else 1)
    # One torch thread by default as well: on a busy small machine multi-threaded tracing of many
    # small ops can be orders of magnitude slower (OpenMP barriers wait for descheduled threads).
    with torch_threads(opts.threads):
        fused = fuse_model(module, target=route.fuse_target).float().cpu().eval()
        example = torch.randn(batch_size, 3, side, side, generator=torch.Generator().manual_seed(opts.seed))
        calibration = None
        if opts.precision == "int8":
            transform = model_eval_transform(module, side)
            calibration, _, _ = load_image_folder(opts.calibration, transform, labelled=False,
                                                  limit=opts.calibration_images, what="calibration")
        return _write_and_verify(fused, route, output, example, opts, calibration=calibration)


def export_segmentor(
    model: nn.Module,
    output: str | os.PathLike,
    format: str = "onnx",
    *,
    trace_size: tuple[int, int] = (512, 512),
    verify_sizes: Sequence[tuple[int, int]] = ((384, 640), (448, 320)),
    dynamic_size: bool = True,
) -> ExportResult:
    """Export a segmentor (``model(images) -> logits at the input size``, e.g.
    :class:`~leanvit.dense.segmentors.Segmentor`) through the ``onnx`` or ``openvino`` route (input
    ``images``, a free batch) and verify it, as :func:`export_model` does a classifier.

    ``dynamic_size``: height and width stay free too (the ``onnx`` writer's ``dynamic_size``), checked at
    ``verify_sizes`` (batch 1, 2, ...); otherwise the check runs at ``trace_size`` (SepViT's window padding
    is decided in Python from the input size, so its graphs only hold for the traced size). Sizes are
    (H, W). fp32, verified on all of torch's threads (``leanvit export`` refuses the other export options
    for a segmentation checkpoint: :data:`~leanvit.deploy.routes.DENSE_EXPORT_OPTIONS`).
    """
    route = format_route(format)
    if not route.dense:
        raise InvalidValueError(f"segmentors export to {' or '.join(DENSE_FORMATS)}, not {format}")
    opts = ExportOptions(precision="fp32", dynamic_batch=True, threads=torch.get_num_threads())
    if not verify_sizes:
        raise InvalidValueError("verify_sizes is empty: the export is checked at sizes other than the trace size")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    check_output_path(route, output)
    # Both formats take the ONNX graph's form (the OpenVINO IR is converted from it)
    fused = fuse(model, target=target_for("onnx")).eval()
    sizes = [tuple(s) for s in verify_sizes] if dynamic_size else [tuple(trace_size)] * 2
    example = torch.randn(1, 3, *trace_size, generator=torch.Generator().manual_seed(opts.seed))
    return _write_and_verify(fused, route, output, example, opts, sizes=sizes, dynamic_size=dynamic_size)
