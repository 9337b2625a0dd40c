"""Export a segmentor to ONNX (dynamic batch, height and width) or OpenVINO IR, verified against PyTorch.

The exported graph is ``Segmentor.forward(images) -> logits at the input size`` on the BN-fused eval copy
(``leanvit.fuse``). UperNet's pyramid pooling is built from the run-time size
(:func:`~leanvit.dense.seg_heads.adaptive_avg_pool2d_exportable`), so one file serves every input size.
Verification runs the artifact with ONNX Runtime / OpenVINO (fp32) at two sizes other than the trace
size and compares with PyTorch; only a verified artifact is moved onto ``output`` (atomically), and a
failure raises :class:`SegExportError` with the measured differences.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..deploy.capabilities import require
from ..deploy.verify import FP32_ATOL
from ..deploy.writers import compile_openvino
from ..errors import InvalidValueError, OperationError
from ..models import fuse

__all__ = ["SegExportError", "SegExportResult", "export_segmentor", "FORMATS"]

FORMATS = ("onnx", "openvino")
ATOL = FP32_ATOL  # fp32 logits, the classification exports' bound; measured here <= 5e-7 (docs/segmentation.md)


class SegExportError(OperationError):
    """The artifact's outputs differ from PyTorch's beyond the tolerance (or it could not be run)."""


@dataclass
class SegExportResult:
    """What was written and how it was checked."""

    path: Path
    format: str
    trace_size: tuple[int, int]
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # "HxW" -> max |artifact - torch|

    def summary(self) -> str:
        """One line for people."""
        diffs = ", ".join(f"{k}: {v:.2e}" for k, v in self.max_abs_diff.items())
        return f"{self.format} -> {self.path} (traced at {self.trace_size[0]}x{self.trace_size[1]}; max |diff| {diffs})"


def _write_onnx(model: nn.Module, example: torch.Tensor, path: str, opset: int, dynamic_size: bool) -> None:
    require("onnx", "onnx", "segmentor export")
    dims = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    axes = {"images": dims, "logits": dims}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints taken from shapes
        torch.onnx.export(model, (example,), path, dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=["logits"], dynamic_axes=axes, do_constant_folding=True)


def _run_onnx(path: str) -> Any:
    ort = require("onnxruntime", "onnx", "verifying an ONNX segmentor")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def _write_openvino(onnx_path: str, path: str) -> None:
    # Through the ONNX graph: one tracing path for both formats (OpenVINO's own torch frontend returned
    # empty outputs for EfficientViT-M at untraced sizes).
    ov = require("openvino", "openvino", "OpenVINO segmentor export")
    ov.save_model(ov.convert_model(onnx_path), path, compress_to_fp16=False)


def _run_openvino(path: str) -> Any:
    require("openvino", "openvino", "OpenVINO segmentor export")
    # fp32 explicitly: OpenVINO's CPU default is bf16 on AMX machines.
    compiled = compile_openvino(path, {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    return lambda x: torch.from_numpy(compiled(x.numpy())[0].copy())


def export_segmentor(
    model: nn.Module,
    output: str | os.PathLike,
    format: str = "onnx",
    *,
    trace_size: tuple[int, int] = (512, 512),
    verify_sizes: Sequence[tuple[int, int]] = ((384, 640), (448, 320)),
    dynamic_size: bool = True,
    opset: int = 17,
    atol: float = ATOL,
) -> SegExportResult:
    """Export ``model`` (a :class:`~leanvit.dense.segmentors.Segmentor`) and verify it.

    ``format``: ``onnx`` (one ``.onnx`` file) or ``openvino`` (``.xml`` + ``.bin``). Sizes are (H, W).
    ``dynamic_size``: height and width stay free, checked at ``verify_sizes``; otherwise only the batch is
    free and the check runs at ``trace_size`` (SepViT's window padding is decided in Python from the input
    size, so its graphs only hold for the traced size).
    """
    if format not in FORMATS:
        raise InvalidValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if not verify_sizes:
        raise InvalidValueError("verify_sizes is empty: the export is checked at sizes other than the trace size")
    output = Path(output)
    suffix = ".onnx" if format == "onnx" else ".xml"
    if output.suffix != suffix:
        raise InvalidValueError(f"{format} output must end in {suffix}, got {output}")
    fused = fuse(model, target="onnx")
    sizes = list(verify_sizes) if dynamic_size else [tuple(trace_size)] * 2
    example = torch.randn(1, 3, *trace_size)
    result = SegExportResult(output, format, tuple(trace_size))
    output.parent.mkdir(parents=True, exist_ok=True)
    # The temporary folder sits beside the output, so the final os.replace is a rename on one file system.
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        artifact = os.path.join(tmp, "model" + suffix)
        onnx_path = os.path.join(tmp, "model.onnx")
        _write_onnx(fused, example, onnx_path, opset, dynamic_size)
        if format == "onnx":
            run = _run_onnx(artifact)
        else:
            _write_openvino(onnx_path, artifact)
            run = _run_openvino(artifact)
        generator = torch.Generator().manual_seed(0)
        for batch, (h, w) in enumerate(sizes, start=1):
            x = torch.randn(batch, 3, h, w, generator=generator)
            with torch.no_grad():
                ref = fused(x)
            try:
                out = run(x)
            except Exception as e:  # runtime errors of a graph whose shapes were frozen at the trace size
                raise SegExportError(f"the {format} graph fails at input {batch}x3x{h}x{w} ({str(e).strip()[:300]}); "
                                     "this backbone's graph depends on the input size: export with "
                                     "dynamic_size=False (--fixed-size) at the size you will run") from e
            if out.shape != ref.shape:
                raise SegExportError(f"{format} output {tuple(out.shape)} at input {batch}x3x{h}x{w}; PyTorch gives "
                                     f"{tuple(ref.shape)}: export with dynamic_size=False (--fixed-size)")
            result.max_abs_diff[f"{batch}x{h}x{w}"] = (out - ref).abs().max().item()
        worst = max(result.max_abs_diff.values())
        if worst > atol:
            hint = ("; a graph right at one size and wrong at another depends on the input size: export with "
                    "dynamic_size=False (--fixed-size) at the size you will run") if dynamic_size else ""
            raise SegExportError(f"{format} export differs from PyTorch: {result.summary()}; tolerance {atol}{hint}")
        if format == "openvino":  # weights first, so a finished .xml always has its .bin
            os.replace(os.path.join(tmp, "model.bin"), output.with_suffix(".bin"))
        os.replace(artifact, output)
    return result
