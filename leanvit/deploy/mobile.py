"""Mobile formats: ExecuTorch (``.pte``, XNNPACK delegate) and Core ML (``.mlpackage``, mlprogram).

Both start from ``torch.export`` of the fused model in its mobile deploy form (``leanvit.fuse(target=
"executorch" | "coreml")``: NCHW, ``bmm`` attention, norms from 4-D means; ``leanvit.layers.mobile``).

* ExecuTorch: :func:`lower_to_executorch` lowers with the XNNPACK partitioner and reports every operator
  left outside the delegate (those run as ExecuTorch's portable kernels, with a copy at each boundary).
  With ExecuTorch 1.5.1 SHViT and EfficientViT-M keep none; SepViT keeps its window-token ``expand``.
  int8: pass a PT2E-quantised program (:mod:`leanvit.deploy.quantize`).
* Core ML: :func:`convert_coreml` converts to an mlprogram (the papers' iPhone protocol) in fp16 or fp32
  and lists its MIL operations; ops outside :data:`COREML_NEURAL_ENGINE_OPS` (what these models need and
  the Neural Engine runs) are reported. Core ML predictions need macOS: elsewhere the conversion is checked,
  not run.
"""
from __future__ import annotations

import collections
import importlib.metadata
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write_bytes
from ..errors import InvalidValueError
from .capabilities import quiet_deprecations, require

__all__ = [
    "COREML_NEURAL_ENGINE_OPS", "ExecuTorchProgram", "as_nchw", "lower_to_executorch", "export_executorch",
    "convert_coreml", "coreml_operations", "export_coreml", "coreml_can_predict",
]

# MIL operations SHViT / EfficientViT-M / SepViT convert to that Core ML runs on the Neural Engine
# (coremltools 9 op set, iOS 16 target). Anything else is reported as a possible CPU / GPU fallback.
COREML_NEURAL_ENGINE_OPS = frozenset({
    "const", "cast", "conv", "linear", "matmul", "softmax", "add", "sub", "mul", "real_div", "relu", "sigmoid",
    "gelu", "hard_sigmoid", "hard_swish", "reduce_mean", "rsqrt", "sqrt", "reshape", "transpose",
    "slice_by_index", "concat", "layer_norm", "batch_norm", "pad", "tile", "squeeze", "expand_dims",
})


class ExecuTorchProgram:
    """A lowered ExecuTorch program: its ``.pte`` bytes and the operators left outside the delegate."""

    def __init__(self, buffer: bytes, outside_delegate: dict[str, int]) -> None:
        self.buffer = buffer
        self.outside_delegate = outside_delegate

    def describe(self) -> str:
        """The delegation in words."""
        if not self.outside_delegate:
            return "every operator delegated to XNNPACK"
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(self.outside_delegate.items()))
        return f"outside the XNNPACK delegate: {ops}"


def _op_name(target: Any) -> str:
    name = getattr(target, "__name__", None) or str(target).split(":")[0]
    return name.replace("<EdgeOpOverload: ", "").rstrip(">")


def as_nchw(model: nn.Module) -> nn.Module:
    """Mobile delegates want plain NCHW graphs: contiguous weights, activations following the input."""
    if hasattr(model, "set_channels_last"):
        model.set_channels_last(False)
    return model.to(memory_format=torch.contiguous_format).eval()


def lower_to_executorch(program_or_model: nn.Module | torch.export.ExportedProgram,
                        example: torch.Tensor) -> ExecuTorchProgram:
    """``torch.export`` (unless already exported) -> XNNPACK-lowered ExecuTorch program."""
    exir = require("executorch.exir", "mobile", "ExecuTorch export")
    xnnpack = require("executorch.backends.xnnpack.partition.xnnpack_partitioner", "mobile", "ExecuTorch export")
    with quiet_deprecations(), torch.no_grad():
        if isinstance(program_or_model, torch.export.ExportedProgram):
            program = program_or_model
        else:
            program = torch.export.export(as_nchw(program_or_model), (example,))
        edge = exir.to_edge_transform_and_lower(program, partitioner=[xnnpack.XnnpackPartitioner()])
        outside: collections.Counter[str] = collections.Counter()
        for node in edge.exported_program().graph.nodes:
            name = _op_name(node.target) if node.op == "call_function" else ""
            if name and "delegate" not in name and "getitem" not in name:
                outside[name] += 1
        return ExecuTorchProgram(edge.to_executorch().buffer, dict(outside))


def export_executorch(model: nn.Module | torch.export.ExportedProgram, example: torch.Tensor,
                      path: str | Path) -> str:
    """Write an XNNPACK-lowered ``.pte`` (atomically); returns the exporter's description."""
    lowered = lower_to_executorch(model, example)
    atomic_write_bytes(path, lowered.buffer)
    return f"executorch {importlib.metadata.version('executorch')} XNNPACK ({lowered.describe()})"


def convert_coreml(model: nn.Module, example: torch.Tensor, *, precision: str = "fp16") -> Any:
    """A Core ML mlprogram (``coremltools.models.MLModel``) of ``model`` at the example's shape, iOS 16."""
    ct = require("coremltools", "mobile", "Core ML export")
    if precision not in ("fp16", "fp32"):
        raise InvalidValueError(f"Core ML precision must be fp16 or fp32, got {precision!r}")
    with quiet_deprecations(), torch.no_grad():
        program = torch.export.export(as_nchw(model), (example,)).run_decompositions({})
        compute = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
        return ct.convert(program, convert_to="mlprogram", compute_precision=compute,
                          minimum_deployment_target=ct.target.iOS16,
                          inputs=[ct.TensorType(name="input", shape=tuple(example.shape))])


def coreml_operations(mlmodel: Any) -> dict[str, int]:
    """MIL operation type -> count over the mlprogram's main function."""
    ops: collections.Counter[str] = collections.Counter()
    for function in mlmodel.get_spec().mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                ops[op.type] += 1
    return dict(ops)


def coreml_can_predict() -> bool:
    """Core ML runs models only on macOS."""
    return platform.system() == "Darwin"


def export_coreml(model: nn.Module, example: torch.Tensor, path: str | Path, *, precision: str = "fp16") -> str:
    """Write an ``.mlpackage``; returns a description with the operations outside the Neural Engine set."""
    ct = require("coremltools", "mobile", "Core ML export")
    mlmodel = convert_coreml(model, example, precision=precision)
    ops = coreml_operations(mlmodel)
    mlmodel.save(str(path))
    unusual = sorted(set(ops) - COREML_NEURAL_ENGINE_OPS)

    note = f"ops outside the Neural Engine set: {', '.join(unusual)}" if unusual else "all ops in the Neural Engine set"
    return f"coremltools {ct.__version__} mlprogram iOS16 {precision}, {sum(ops.values())} ops ({note})"
