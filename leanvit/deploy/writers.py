"""Writers: one function per export format that turns an (already fused) eval model into a file.

ONNX exporter: ``dynamo=False`` (default) is the TorchScript-based exporter at opset 17, one file;
``dynamo=True`` is ``torch.export``-based (the exporter's default opset) with ``external_data=False``
for a single file, and with a dynamic batch it traces batch >= 2 (a batch-1 trace would pin the
batch dimension to 1). ``dynamo=`` is always passed explicitly: its default flipped in torch 2.9.
``dense``: the model's output is a map at the input size (segmentors: input ``images``, their OpenVINO IR
converted from the ONNX graph); ``dynamic_size`` (as timm's ``onnx_export``) leaves its height and width free.

:func:`write_artifact` is the one dispatch: the format's :class:`~leanvit.deploy.routes.Route` names its
writer and the options the writer takes.

:func:`to_openvino` (the in-memory conversion) lives here too: the OpenVINO writer saves what it returns
and the OpenVINO runtime compiles it, so both import it from below.
"""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import InvalidValueError, MissingFileError
from .capabilities import preserved_signal_stack, quiet_deprecations, require
from .mobile import export_coreml, export_executorch
from .routes import Route, format_route

__all__ = [
    "LEGACY_OPSET", "export_onnx", "export_openvino", "export_torchscript", "to_openvino", "compile_openvino",
    "check_output_path", "write_artifact", "export_executorch", "export_coreml",
]

LEGACY_OPSET = 17


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
    dense: bool = False,
    dynamic_size: bool = False,
) -> str:
    """Write a single-file ONNX model; returns a description of the exporter used. ``dense``: the model's
    output is a map at the input size (a segmentor; its input is named ``images``); ``dynamic_size``: its
    height and width stay free in the input and the output."""
    require("onnx", "onnx", "ONNX export")
    if dynamic_size and not dense:
        raise InvalidValueError("dynamic_size needs a dense model (logits at the input size): a classifier's graph "
                                "holds for the size it was traced at")
    input_name = "images" if dense else "input"
    names = dict(input_names=[input_name], output_names=["logits"])
    with quiet_deprecations(), torch.no_grad():
        if dynamo:
            require("onnxscript", "onnx", "the dynamo ONNX exporter")
            if dynamic_size:
                raise InvalidValueError("dynamic_size exports through the TorchScript-based exporter: drop dynamo")
            if dynamic_batch and example.shape[0] < 2:
                raise InvalidValueError("the dynamo exporter specialises a batch-1 trace to batch 1: "
                                        "trace with batch >= 2 for --dynamic-batch")
            shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
            torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False, opset_version=opset,
                              dynamic_shapes=shapes, optimize=True, verbose=False, **names)
            return f"torch.onnx dynamo=True opset {opset or 'default'}"
        dims = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
        axes = {input_name: dims, "logits": dims} if dynamic_batch or dynamic_size else None
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset or LEGACY_OPSET,
                          dynamic_axes=axes, do_constant_folding=True, **names)
        return f"torch.onnx dynamo=False (TorchScript) opset {opset or LEGACY_OPSET}"


@contextlib.contextmanager
def _no_openvino_telemetry() -> Iterator[None]:
    """Inside the block, ``ov.convert_model`` sends no usage telemetry; the user's consent is restored after.

    Why: each conversion queues ~12 Google Analytics events on a pool of sender threads (openvino_telemetry,
    on by default). Measured on the 2-core Zen 4 class EPYC, 2026-12-07, without network: 0.8 s of system time
    per conversion, and the threads kept running into whatever came next, so the process CPU clock that
    ``leanvit bench`` / ``leanvit demo`` time with charged their work to the timed calls."""
    try:  # the singleton ovc itself uses (openvino_telemetry is optional: without it ovc sends nothing)
        from openvino.tools.ovc.telemetry_utils import init_ovc_telemetry
        telemetry = init_ovc_telemetry()
        consent = telemetry.consent
    except Exception:  # noqa: BLE001 - another openvino_telemetry layout: convert as OpenVINO would
        telemetry = None
    if telemetry is None:
        yield
        return
    telemetry.consent = False
    try:
        yield
    finally:
        telemetry.consent = consent


def to_openvino(model: nn.Module, example: torch.Tensor, dynamic_batch: bool = False) -> Any:
    """Convert a torch module to an in-memory ``openvino.Model`` with the example's shape
    (batch left dynamic when asked)."""
    ov = require("openvino", "openvino", "OpenVINO conversion")
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    shape = list(example.shape)
    if dynamic_batch:
        shape[0] = -1
    with quiet_deprecations(), torch.no_grad(), _no_openvino_telemetry():
        # OpenVINO's own trace of the module, without torch.jit.trace's default check (a second trace and run
        # compared with the first): the same graph at half the conversion time (efficientvit_m0 2.6 -> 1.5 s CPU).
        # A module traced beforehand converts to another graph (no ScaledDotProductAttention fusion, more shape ops).
        decoder = TorchScriptPythonDecoder(model.eval(), example_input=(example,), trace_kwargs={"check_trace": False})
        return ov.convert_model(decoder, example_input=example, input=[ov.PartialShape(shape)])


def compile_openvino(model: Any, config: dict[str, Any] | None = None, device: str = "CPU") -> Any:
    """``ov.Core().compile_model(model, device, config)`` (``model``: an ``ov.Model`` or an IR path), keeping
    the thread's alternate signal stack (:func:`~leanvit.deploy.capabilities.preserved_signal_stack`: without
    it, compiled models freed out of order leave a dangling one and the next signal crashes the process).
    Every OpenVINO compile in leanvit goes through here."""
    ov = require("openvino", "openvino", "OpenVINO")
    with preserved_signal_stack():
        return ov.Core().compile_model(model if not isinstance(model, Path) else str(model), device, config or {})


def export_openvino(
    model: nn.Module, example: torch.Tensor, path: str | Path, *, dynamic_batch: bool = False,
    dense: bool = False, dynamic_size: bool = False, precision: str = "fp32",
) -> str:
    """Write an OpenVINO IR (``.xml`` + ``.bin``, fp32 weights) whose runtime options carry ``precision``.
    ``dense`` (segmentors; ``dynamic_size`` as for :func:`export_onnx`): converted from the ONNX graph of
    :func:`export_onnx`: one tracing path for both formats, and OpenVINO's own torch frontend returned empty
    outputs for EfficientViT-M at untraced sizes."""
    ov = require("openvino", "openvino", "OpenVINO export")
    if dense:
        onnx_path = Path(path).with_suffix(".onnx")
        export_onnx(model, example, onnx_path, dynamic_batch=dynamic_batch, dense=True, dynamic_size=dynamic_size)
        with _no_openvino_telemetry():
            ov_model = ov.convert_model(str(onnx_path))
        onnx_path.unlink()
    elif dynamic_size:
        raise InvalidValueError("dynamic_size needs a dense model (logits at the input size)")
    else:
        ov_model = to_openvino(model, example, dynamic_batch=dynamic_batch)
    # Precision is a compile-time hint in OpenVINO (its CPU default is bf16 on AMX CPUs), so the IR
    # records the one it was verified with; leanvit's loader applies it.
    ov_model.set_rt_info({"fp32": "f32", "bf16": "bf16"}[precision], ["runtime_options", "INFERENCE_PRECISION_HINT"])
    ov.save_model(ov_model, str(path), compress_to_fp16=False)  # fp16 weights would cost ~1e-3 accuracy
    return f"openvino.convert_model {ov.__version__}" + (" (from ONNX)" if dense else "")


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | Path, *, precision: str = "fp32") -> str:
    """Write a traced TorchScript module (bf16: weights in bf16, float32 in/out)."""
    if precision == "bf16":
        model = _CastTo(model, torch.bfloat16)
    with quiet_deprecations(), torch.no_grad():
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
        torch.jit.save(traced, str(path))
    return "torch.jit.trace"


def check_output_path(route: Route, output: Path) -> None:
    """Raise unless ``output`` has one of the ``route``'s suffixes and its directory exists."""
    if output.suffix.lower() not in route.suffixes:
        raise InvalidValueError(f"{route.format} output must end in {route.files}, got {output.name!r}")
    if not output.parent.exists():
        raise MissingFileError(f"output directory {output.parent} does not exist")


def write_artifact(fmt: str, model: nn.Module, example: torch.Tensor, path: Path, **options: Any) -> str:
    """Write ``model`` as ``fmt`` to ``path`` with that format's writer (its route's ``writer``); returns the
    exporter's description. ``options``: the writer's keywords (``dynamo``, ``opset``, ``dynamic_batch``,
    ``dense``, ``dynamic_size``, ``precision``); one the route's writer does not take must be left at its default
    (false / None / the route's default precision). (int8 artifacts are written by :mod:`.quantize`.)"""
    route = format_route(fmt)
    defaults = (None, False, route.precisions[0])
    refused = [k for k, v in options.items() if k not in route.writer_options and v not in defaults]
    if refused:
        raise InvalidValueError(f"{', '.join(refused)} do(es) not apply to the {fmt} writer ({route.writer}): "
                                f"it takes {', '.join(route.writer_options) or 'no options'}")
    writer = globals()[route.writer]
    return writer(model, example, path, **{k: v for k, v in options.items() if k in route.writer_options})
