"""What an int8 artifact stores, read from the file itself (never from the graph that wrote it): the share of its
convolution / linear / matmul weights kept as int8 (:func:`int8_weight_storage`), and the CPU class it was
quantised for (:func:`artifact_target_cpu`; :func:`warn_if_other_cpu` when it is not this machine's).

* OpenVINO IR (``.xml``): ``openvino.Core().read_model``; each Convolution / GroupConvolution / MatMul weight
  input traced up through Convert / Subtract / Multiply / Reshape / Transpose / FakeQuantize to its Constant.
* ONNX (``.onnx``): ``onnx.load``; each Conv / MatMul / Gemm weight traced through DequantizeLinear to its
  initializer.
* ExecuTorch (``.pte``): the program deserialised by ExecuTorch's own flatbuffer schema, the XNNPACK delegate's
  payload decoded with XNNPACK's schema (``XNNGraph``): the datatype of every Conv2d / DepthwiseConv2d /
  FullyConnected filter and constant BatchMatrixMultiply operand; a convolution or linear left outside the
  delegate counts as float.
* PyTorch (``.safetensors``): the fused weights are stored in float by design (the file keeps the calibrated
  observers and rebuilds the int8 graph): counted on the graph rebuilt from the file
  (:func:`~leanvit.deploy.pt2e.load_pytorch_int8`), whose conv / linear weights are folded int8 tensors.

Activation x activation products (attention MatMuls / bmms) have no weights and are not counted.
"""
from __future__ import annotations

import json
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import safe_open

from ..errors import InvalidValueError, MissingFileError
from . import capabilities
from .capabilities import require
from .int8_policy import CPU_CLASSES, INT8_CPU_KEY, cpu_class_of
from .pt2e import load_pytorch_int8

__all__ = ["WeightStorage", "int8_weight_storage", "artifact_target_cpu", "other_cpu_problem", "warn_if_other_cpu"]

_INT8 = {"int8", "uint8"}


@dataclass
class WeightStorage:
    """How many conv / linear / matmul weights (layers and elements) an artifact stores as int8, per layer kind."""
    path: str
    kinds: dict[str, list[int]] = field(default_factory=dict)  # kind -> [int8 layers, layers, int8 elements, elements]

    def add(self, kind: str, dtype: str, elements: int) -> None:
        """Count one weight of ``kind`` stored as ``dtype`` (a numpy-style name: "int8", "float32", ...)."""
        row = self.kinds.setdefault(kind, [0, 0, 0, 0])
        int8 = dtype in _INT8
        row[0] += int8
        row[1] += 1
        row[2] += elements if int8 else 0
        row[3] += elements

    @property
    def layers(self) -> int:
        """Weighted layers counted."""
        return sum(r[1] for r in self.kinds.values())

    @property
    def int8_layers(self) -> int:
        """Weighted layers whose weight is stored as int8."""
        return sum(r[0] for r in self.kinds.values())

    @property
    def share(self) -> float:
        """The int8 share of the weights' elements, 0..1 (0 without weighted layers)."""
        total = sum(r[3] for r in self.kinds.values())
        return sum(r[2] for r in self.kinds.values()) / total if total else 0.0

    def summary(self) -> str:
        """One line for people."""
        parts = ", ".join(f"{kind} {r[0]}/{r[1]}" for kind, r in sorted(self.kinds.items()))
        return (f"{100 * self.share:.1f} % of conv/linear/matmul weights stored int8 "
                f"({self.int8_layers} of {self.layers} layers: {parts})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly fields."""
        return {"share": self.share, "int8_layers": self.int8_layers, "layers": self.layers,
                "kinds": {k: dict(zip(("int8_layers", "layers", "int8_elements", "elements"), v))
                          for k, v in self.kinds.items()}}


def int8_weight_storage(path: str | Path) -> WeightStorage:
    """Read the artifact at ``path`` (by suffix: .xml, .onnx, .pte, .safetensors) and count its weight storage."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"artifact {path} does not exist: pass the file leanvit quantize wrote")
    readers = {".xml": _openvino, ".onnx": _onnx, ".pte": _executorch, ".safetensors": _pytorch}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise InvalidValueError(f"cannot read the weight storage of {path.name}: expected one of {', '.join(readers)}")
    storage = WeightStorage(str(path))
    reader(path, storage)
    return storage


_OPENVINO_WEIGHTED = {"Convolution": "conv", "GroupConvolution": "conv", "MatMul": "matmul"}
_OPENVINO_PASS = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "FakeQuantize", "Unsqueeze", "Squeeze"}


def _openvino(path: Path, storage: WeightStorage) -> None:
    ov = require("openvino", "openvino", "reading an OpenVINO artifact")
    for op in ov.Core().read_model(str(path)).get_ops():
        kind = _OPENVINO_WEIGHTED.get(op.get_type_name())
        if kind is None:
            continue
        source = op.input_value(1).get_node()
        while source.get_type_name() in _OPENVINO_PASS:
            source = source.input_value(0).get_node()
        if source.get_type_name() == "Constant":  # else an activation x activation product
            dtype = source.get_output_element_type(0).to_dtype().name
            storage.add(kind, dtype, int(torch.Size(list(source.get_output_shape(0))).numel()))


_ONNX_WEIGHTED = {"Conv": "conv", "MatMul": "matmul", "Gemm": "linear"}


def _onnx(path: Path, storage: WeightStorage) -> None:
    onnx = require("onnx", "onnx", "reading an ONNX artifact")
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    initializers = {t.name: t for t in graph.initializer}
    made_by = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        kind = _ONNX_WEIGHTED.get(node.op_type)
        if kind is None:
            continue
        name = node.input[1]
        while name in made_by and made_by[name].op_type in ("DequantizeLinear", "Transpose", "Reshape"):
            name = made_by[name].input[0]
        if name in initializers:
            array = numpy_helper.to_array(initializers[name])
            storage.add(kind, array.dtype.name, int(array.size))


_XNNPACK_WEIGHTED = {"XNNConv2d": "conv", "XNNDepthwiseConv2d": "conv", "XNNConvTranspose2d": "conv",
                     "XNNFullyConnected": "linear", "XNNBatchMatrixMultiply": "matmul"}
_XNNPACK_INT8 = {"xnn_datatype_qint8", "xnn_datatype_qcint8", "xnn_datatype_quint8", "xnn_datatype_qdint8"}
# ATen kernels that carry a weight when left outside the delegate: (kind, the weight's argument index)
_OUTSIDE_WEIGHTED = {"aten::convolution": ("conv", 1), "aten::linear": ("linear", 1), "aten::addmm": ("linear", 2),
                     "aten::mm": ("matmul", 1)}
_OUTSIDE_LAYOUT = {"aten::permute_copy", "aten::t_copy", "aten::transpose_copy", "aten::view_copy"}
_SCALAR_INT8 = {"CHAR": "int8", "BYTE": "uint8"}  # ExecuTorch's ScalarType names


def _executorch(path: Path, storage: WeightStorage) -> None:
    require("executorch", "mobile", "reading an ExecuTorch artifact")
    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader
    from executorch.exir._serialize._flatbuffer import _flatc_decompile
    from executorch.exir._serialize._program import deserialize_pte_binary

    data = path.read_bytes()
    pte = deserialize_pte_binary(data)
    # the weights' bytes are not needed: the XNNPACK graph records each value's datatype and shape
    for plan in pte.program.execution_plan:
        calls = [i.instr_args for chain in plan.chains for i in chain.instructions if hasattr(i.instr_args, "op_index")]
        made_by = {call.args[-1]: call for call in calls}  # a kernel's last argument is its output
        for call in calls:
            if plan.operators[call.op_index].name not in _OUTSIDE_WEIGHTED:
                continue
            kind, index = _OUTSIDE_WEIGHTED[plan.operators[call.op_index].name]
            value = call.args[index]
            while value in made_by and plan.operators[made_by[value].op_index].name in _OUTSIDE_LAYOUT:
                value = made_by[value].args[0]  # a weight transposed for addmm / mm
            weight = plan.values[value].val
            if getattr(weight, "allocation_info", True) is None:  # a constant tensor: a weight
                dtype = _SCALAR_INT8.get(weight.scalar_type.name, weight.scalar_type.name.lower())
                storage.add(kind, dtype, int(torch.Size(weight.sizes).numel()))
        for delegate in plan.delegates:
            if "xnnpack" not in delegate.id.lower():
                continue
            # deserialize_pte_binary moves segment-stored payloads back inline
            payload = bytes(pte.program.backend_delegate_data[delegate.processed.index].data)
            header = XNNHeader.from_bytes(payload[:XNNHeader.EXPECTED_LENGTH])
            flat = payload[header.flatbuffer_offset:header.flatbuffer_offset + header.flatbuffer_size]
            _count_xnnpack(_decode_xnnpack(flat, _flatc_decompile), storage)


def _decode_xnnpack(flat: bytes, decompile: Any) -> dict[str, Any]:
    schema = resources.files("executorch.backends.xnnpack.serialization") / "schema.fbs"
    with tempfile.TemporaryDirectory(prefix="leanvit-xnn-") as tmp, resources.as_file(schema) as schema_path:
        Path(tmp, "graph.bin").write_bytes(flat)
        decompile(tmp, str(schema_path), str(Path(tmp, "graph.bin")))
        text = Path(tmp, "graph.json").read_text()
    # flatc writes non-finite floats bare (inf, -inf, nan): Python's json reads them as Infinity / NaN
    text = re.sub(r"(?<=[\s:\[,])(-?)inf\b", r"\1Infinity", text)
    return json.loads(re.sub(r"(?<=[\s:\[,])-?nan\b", "NaN", text))


def _count_xnnpack(graph: dict[str, Any], storage: WeightStorage) -> None:
    values = [v["xvalue_union"] for v in graph["xvalues"]]

    def tensor(value_id: int) -> dict[str, Any]:
        value = values[value_id]
        return value.get("tensor_value", value)

    def weight_ids(node_type: str, node: dict[str, Any]) -> Iterable[int]:
        if node_type == "XNNBatchMatrixMultiply":  # a weight only when an operand is a constant
            return [i for i in (node["input1_id"], node["input2_id"]) if tensor(i)["constant_buffer_idx"]]
        return [node["filter_id"]]

    for xnode in graph["xnodes"]:
        node_type = xnode["xnode_union_type"]
        if node_type not in _XNNPACK_WEIGHTED:
            continue
        for value_id in weight_ids(node_type, xnode["xnode_union"]):
            t = tensor(value_id)
            dtype = "int8" if t["datatype"] in _XNNPACK_INT8 else t["datatype"]
            storage.add(_XNNPACK_WEIGHTED[node_type], dtype, int(torch.Size(t["dims"]).numel()))


_TORCH_WEIGHTED = {torch.ops.aten.conv2d.default: "conv", torch.ops.aten.linear.default: "linear",
                   torch.ops.aten.matmul.default: "matmul", torch.ops.aten.bmm.default: "matmul"}


def _pytorch(path: Path, storage: WeightStorage) -> None:
    graph, _ = load_pytorch_int8(path)
    for node in graph.graph.nodes:
        kind = _TORCH_WEIGHTED.get(node.target)
        if kind is None or len(node.args) < 2:
            continue
        source = node.args[1]
        while source.op == "call_function" and "dequantize" in str(source.target):
            source = source.args[0]
        if source.op == "get_attr":
            weight = _attribute(graph, source.target)
            storage.add(kind, str(weight.dtype).removeprefix("torch."), weight.numel())


def _attribute(graph: torch.fx.GraphModule, target: str) -> torch.Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(graph.get_submodule(owner) if owner else graph, name)


def artifact_target_cpu(path: str | Path) -> str | None:
    """The CPU class an int8 artifact was quantised for (ONNX metadata_props, OpenVINO rt_info, safetensors
    metadata), or None where the file does not record one (fp32 exports, ExecuTorch programs: XNNPACK runs one
    int8 program on every class, older artifacts)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        onnx = require("onnx", "onnx", "reading an ONNX artifact")
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return props.get(INT8_CPU_KEY)
    if suffix == ".xml":
        ov = require("openvino", "openvino", "reading an OpenVINO artifact")
        model = ov.Core().read_model(str(path))
        return model.get_rt_info(INT8_CPU_KEY).astype(str) if model.has_rt_info(INT8_CPU_KEY) else None
    if suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            value = (f.metadata() or {}).get(INT8_CPU_KEY)
        return json.loads(value) if value else None
    return None


def other_cpu_problem(target: str | None, has_int8_dot: bool) -> str:
    """What goes wrong running an artifact quantised for CPU class ``target`` on a machine whose int8 probe
    answered ``has_int8_dot``; "" when nothing does."""
    here = cpu_class_of(has_int8_dot)
    if target is None or target == here:
        return ""
    if target == "vnni":
        return (f"it was quantised for CPUs with {CPU_CLASSES['vnni']}, and this one has none: its full-range int8 "
                "products can saturate this CPU's 16-bit int8 sums (accuracy loss); quantise it here, or with "
                "--target-cpu no-vnni")
    return (f"it was quantised for CPUs with {CPU_CLASSES['no-vnni']} (7-bit operands), and this one has "
            "VNNI: it runs correctly, with a little of the accuracy a --target-cpu vnni artifact keeps")


def warn_if_other_cpu(path: str | Path) -> None:
    """Warn when the int8 artifact at ``path`` was quantised for another CPU class than this machine's."""
    try:
        target = artifact_target_cpu(path)
    except Exception:  # noqa: BLE001 - a missing or unreadable file: its loader reports that, with the fix
        return
    problem = other_cpu_problem(target, capabilities.cpu_has_int8_dot())
    if problem:
        warnings.warn(f"{Path(path).name}: {problem}", stacklevel=2)
