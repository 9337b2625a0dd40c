"""PyTorch int8: PT2E post-training quantisation with torchao's X86 inductor quantizer, and its artifact.

The quantised graph runs oneDNN int8 convolutions / linears (VNNI) once ``torch.compile`` lowers it with
inductor's freezing (``TorchRuntime(mode="compile")``); eagerly it runs reference quantise / dequantise ops,
which compute the same numbers slowly (what the unit tests use).

The artifact is a safetensors file, not a pickled ``torch.export.save`` archive (``torch.export.load``
unpickles with ``weights_only=False``): the fused float weights (``model.*``), the calibrated observer
state (``observer.*``) and, in the metadata, how to rebuild the graph. Opening it rebuilds the leanvit
model, fuses it, exports it, prepares it with the same quantizer, loads the observers and converts: the
same int8 graph, without executing anything from the file.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .._io import atomic_write
from ..models.checkpoint import QAT_STATE_PREFIX
from ..errors import InvalidValueError
from ..models import create_model
from ..zoo import fuse_model
from .capabilities import quiet_deprecations, require
from .int8_policy import INT8_CPU_KEY, int8_recipe

__all__ = ["PT2E_FORMAT", "ACTIVATION_AVERAGING", "QAT_QUANTIZERS", "QAT_RUNTIMES", "x86_quantizer", "xnnpack_quantizer",
           "float_classifier", "pytorch_int8_quantizer", "prepare_qat_graph", "converted_qat", "export_for_pt2e", "calibrated_pt2e",
           "converted_pt2e", "quantize_pytorch", "load_pytorch_int8"]

PT2E_FORMAT = "leanvit-int8-pt2e-x86"

# Post-training activation ranges: the moving average (this constant) of each calibration image's min / max,
# one image per observer step (calibrated_pt2e), instead of the quantizers' HistogramObserver. The histogram
# kept the rare extreme activations in range and coarsened every other value: digits protocol, shvit_s1 at
# 64 px on a VNNI CPU (docs/deploy.md): X86 int8 93.5 -> 96.6 % (fp32 97.4), XNNPACK 94.4 -> 96.9 %.
ACTIVATION_AVERAGING = 0.01


def float_classifier(fused: nn.Module) -> tuple[str, ...]:
    """The top-level module(s) of ``fused``'s classifier (its data config's ``classifier``, e.g. ``head``), which
    the default int8 recipes of ONNX Runtime and PyTorch keep in float: the single most sensitive layer of the
    digits protocol (64 px, VNNI CPU; quantising it cost shvit_s1 0.5 and efficientvit_m0 0.5-0.9 top-1 points),
    and a small share of the weights (efficientvit_m0 with 1000 classes: 9 %)."""
    classifier = (getattr(fused, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    tops = dict.fromkeys(name.split(".")[0] for name in names)
    return tuple(t for t in tops if t and hasattr(fused, t))


def _averaged_activations(config: Any) -> Any:
    """``config`` (a PT2E QuantizationConfig) with its activations observed by the moving average of the
    calibration images' ranges (:data:`ACTIVATION_AVERAGING`); dtype, range and scheme unchanged."""
    observer = require("torchao.quantization.pt2e.observer", "quantize", "int8 (torchao PT2E)")
    ctr = observer.MovingAverageMinMaxObserver.with_args(averaging_constant=ACTIVATION_AVERAGING, eps=2 ** -12)
    return dataclasses.replace(
        config, input_activation=dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=ctr),
        output_activation=dataclasses.replace(config.output_activation, observer_or_fake_quant_ctr=ctr))


def x86_quantizer(scheme: str = "default", keep_float: Sequence[str] = (), qat: bool = False,
                  reduce_range: bool = False) -> Any:
    """torchao's X86InductorQuantizer (per-channel symmetric int8 weights, uint8 activations; post-training:
    their ranges averaged over the calibration images, :data:`ACTIVATION_AVERAGING`). ``scheme="weights"``
    annotates only convolutions and linears; the modules named in
    ``keep_float`` stay in float; ``qat`` gives its fake-quantising configuration for training;
    ``reduce_range`` quantises the weights to 7 bits (-64..63), exact for oneDNN's int8 kernels on CPUs
    without VNNI (``vpmaddubsw`` saturates the int16 sum of two u8 x s8 products otherwise: 2 x 255 x 64
    fits). Not torchao's own ``reduce_range`` (7-bit activations): on the digits with oneDNN capped to AVX2
    (``ONEDNN_MAX_CPU_ISA=AVX2``), shvit_s1 with its classifier quantised scored 93.0 % with 7-bit weights,
    89.2 % with 7-bit activations and 87.4 % with neither (fp32 97.4; 96.6 with VNNI); with the classifier in
    float (:func:`float_classifier`) and 7-bit weights, 96.7 %."""
    xq = require("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer", "quantize",
                 "PyTorch int8 (torchao PT2E)")
    config = xq.get_default_x86_inductor_quantization_config(is_qat=qat)
    if reduce_range:
        config = dataclasses.replace(config, weight=dataclasses.replace(config.weight, quant_min=-64, quant_max=63))
    if not qat:
        config = _averaged_activations(config)
    quantizer = xq.X86InductorQuantizer()
    if scheme == "weights":
        # this quantizer maps a module type to its aten operator: functional convolutions match too
        for layer in (nn.Conv2d, nn.Linear):
            quantizer.set_module_type_qconfig(layer, config)
    else:
        quantizer.set_global(config)
    for name in keep_float:
        quantizer.set_module_name_qconfig(name, None)
    return quantizer


# The operators the XNNPACK quantizer's conv / linear patterns start from. leanvit's fused and mobile forms
# call their convolutions functionally, so selecting by module type (nn.Conv2d) matched only the classifier.
_XNNPACK_WEIGHT_OPERATORS = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)


def _outside(modules: Sequence[str]) -> Callable[[torch.fx.Node], bool]:
    """A node filter: true for nodes outside every module in ``modules`` (dotted names)."""
    utils = require("torchao.quantization.pt2e.quantizer.utils", "quantize", "int8 keep-float")
    inside = [utils.get_module_name_filter(name) for name in modules]
    return lambda node: not any(f(node) for f in inside)


def xnnpack_quantizer(scheme: str = "default", keep_float: Sequence[str] = (), qat: bool = False) -> Any:
    """ExecuTorch's XNNPACK quantizer: symmetric per-channel int8 weights, int8 activations (post-training:
    ranges averaged over the calibration images, as for :func:`x86_quantizer`); ``scheme`` and
    ``keep_float`` and ``qat`` as for :func:`x86_quantizer`. XNNPACK's int8 kernels widen to 16 bits before
    multiplying: exact on every CPU, so there is no reduced range."""
    xq = require("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "mobile", "ExecuTorch int8")
    config = xq.get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)
    if not qat:
        config = _averaged_activations(config)
    quantizer = xq.XNNPACKQuantizer()
    if scheme == "weights":
        for operator in _XNNPACK_WEIGHT_OPERATORS:
            quantizer.set_operator_type(operator, config)
    else:
        quantizer.set_global(config)
    if keep_float:  # this quantizer refuses set_module_name(name, None): filter those modules' nodes out
        quantizer.set_filter_function(_outside(keep_float))
    return quantizer


def export_for_pt2e(fused: nn.Module, side: int) -> torch.fx.GraphModule:
    """``fused`` exported, in the mode it is in, with a dynamic batch (one int8 graph serves batch 1 and
    batch 16)."""
    example = torch.zeros(2, 3, side, side)  # 2, not 1: a size-1 dimension would be specialised
    with quiet_deprecations():
        return torch.export.export(fused, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},)).module()


# QAT schemes: ExecuTorch's XNNPACK quantizer only. The X86 inductor quantizer's QAT mode annotates
# conv-BN by module partitions, and leanvit's ConvNorm runs its conv and norm functionally (recompute):
# it fake-quantised 14 of efficientvit_m0's 117 layers, against 552 fake-quant points with XNNPACK's.
QAT_QUANTIZERS = {"xnnpack": xnnpack_quantizer}
# the int8 runtime whose quantizer each QAT scheme simulates
QAT_RUNTIMES = {"xnnpack": "executorch"}


def prepare_qat_graph(model: nn.Module, side: int, scheme: str) -> torch.fx.GraphModule:
    """``model`` (unfused, trained) exported in training mode and prepared for quantisation-aware training
    with ``scheme``'s quantizer (``xnnpack``): BN-folded fake-quantised convs / linears."""
    if scheme not in QAT_QUANTIZERS:
        raise InvalidValueError(f"QAT scheme must be one of {', '.join(QAT_QUANTIZERS)}, got {scheme!r}")
    graph = export_for_pt2e(copy.deepcopy(model).train(), side)
    with quiet_deprecations():
        return _pt2e().prepare_qat_pt2e(graph, QAT_QUANTIZERS[scheme](qat=True))


def converted_qat(model: nn.Module, side: int, scheme: str, state: dict[str, torch.Tensor]) -> torch.fx.GraphModule:
    """The int8 graph of a QAT fine-tuned ``model`` with its learned fake-quant ``state``."""
    graph = prepare_qat_graph(model, side, scheme)
    _restore_observers(graph, state, f"the {scheme} QAT checkpoint")
    require("torchao.quantization.pt2e", "quantize", "QAT").move_exported_model_to_eval(graph)
    return converted_pt2e(graph)


def _pt2e() -> Any:
    return require("torchao.quantization.pt2e.quantize_pt2e", "quantize", "PyTorch int8 (torchao PT2E)")


def _observer_state(prepared: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    # PT2E names its observers / fake-quantisers activation_post_process_<n>: the prefix QAT checkpoints use
    return {k: v for k, v in prepared.state_dict().items() if k.startswith(QAT_STATE_PREFIX)}


def _restore_observers(prepared: torch.fx.GraphModule, stored: dict[str, torch.Tensor], source: str) -> None:
    """Put calibrated / learned observer state into a freshly prepared graph; ``source`` names where it
    came from in the error when the graphs differ."""
    expected = set(_observer_state(prepared))
    if set(stored) != expected:
        raise InvalidValueError(f"the observer state of {source} ({len(stored)} tensors) does not fit this install's "
                                f"graph ({len(expected)}): made with another model, scheme or torch / torchao version; "
                                "quantise (or fine-tune) again here")
    # Buffer by buffer: load_state_dict skips some observer buffers (per-channel observers' eps), and the
    # per-channel ranges change shape from their empty initial value.
    for key, value in stored.items():
        owner, _, name = key.rpartition(".")
        prepared.get_submodule(owner)._buffers[name] = value.clone()


def _identity(fused: nn.Module) -> dict[str, Any]:
    """What rebuilds ``fused``: a leanvit model's registry name, class count and distillation head."""
    cfg = getattr(fused, "pretrained_cfg", None) or {}
    if getattr(fused, "leanvit_cfg", None) is None or not cfg.get("architecture"):
        raise InvalidValueError("PyTorch int8 artifacts are rebuilt from leanvit's architectures: quantise timm models "
                                "for openvino or onnxruntime instead")
    if getattr(fused, "fuse_target", "torch") != "torch":
        raise InvalidValueError(f"the PyTorch int8 route quantises fuse(target='torch'), got {fused.fuse_target!r}")
    return {"model": cfg["architecture"], "num_classes": int(fused.num_classes),
            "distillation": bool(getattr(fused, "distillation", False))}


def calibrated_pt2e(fused: nn.Module, calibration: torch.Tensor, quantizer: Any,
                    batch_size: int = 1) -> torch.fx.GraphModule:
    """``fused`` exported, prepared with ``quantizer`` and calibrated on ``calibration``, ``batch_size`` images
    per observer step (1, the default: the moving-average ranges of :data:`ACTIVATION_AVERAGING` average
    single images' extremes): convert_pt2e's input."""
    with quiet_deprecations(), torch.no_grad():
        prepared = _pt2e().prepare_pt2e(export_for_pt2e(fused, int(calibration.shape[-1])), quantizer)
        for chunk in calibration.split(max(1, batch_size)):
            prepared(chunk)
    return prepared


def converted_pt2e(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The int8 graph of calibrated observers (reference quantise / dequantise ops when run eagerly)."""
    with quiet_deprecations(), torch.no_grad():
        return _pt2e().convert_pt2e(prepared)


def pytorch_int8_quantizer(fused: nn.Module, scheme: str = "default", keep_float: Sequence[str] = (),
                           target_cpu: str = "vnni") -> tuple[Any, tuple[str, ...]]:
    """The quantizer of the PyTorch int8 artifact of ``fused`` for ``target_cpu`` (its recipe, the classifier in
    float: :func:`float_classifier`) and the modules it keeps in float: what :func:`quantize_pytorch` writes and
    the keep-float search (:mod:`leanvit.deploy.tuning`) scores."""
    keep = tuple(dict.fromkeys((*keep_float, *float_classifier(fused))))
    return x86_quantizer(scheme, keep, reduce_range=int8_recipe("pytorch", target_cpu).reduce_range), keep


def quantize_pytorch(fused: nn.Module, example: torch.Tensor, calibration: torch.Tensor, path: Path,
                     scheme: str = "default", keep_float: Sequence[str] = (), target_cpu: str = "vnni") -> str:
    """Calibrate PT2E observers on ``calibration`` (one image per step) and write the artifact, with
    7-bit weights for ``target_cpu="no-vnni"`` (:mod:`leanvit.deploy.int8_policy`)."""
    identity = _identity(fused)
    side = int(example.shape[-1])
    recipe = int8_recipe("pytorch", target_cpu)
    quantizer, keep_float = pytorch_int8_quantizer(fused, scheme, keep_float, target_cpu)
    prepared = calibrated_pt2e(fused, calibration, quantizer)
    tensors = {f"model.{k}": v.contiguous() for k, v in fused.state_dict().items()}
    tensors.update({f"observer.{k}": v.contiguous() for k, v in _observer_state(prepared).items()})
    _write_artifact(tensors, dict(identity, img_size=side, scheme=scheme, keep_float=list(keep_float),
                                  reduce_range=recipe.reduce_range, **{INT8_CPU_KEY: target_cpu}), path)
    return ("PT2E X86InductorQuantizer int8 (per-channel"
            f"{', conv/linear only' if scheme == 'weights' else ''}, classifier in float; "
            f"for {target_cpu} CPUs: {recipe.note}); "
            "runs compiled by inductor")


def _write_artifact(tensors: dict[str, torch.Tensor], metadata: dict[str, Any], path: Path) -> None:
    # safetensors metadata holds strings: every value JSON-encoded
    torchao = require("torchao", "quantize", "PyTorch int8 (torchao PT2E)")
    metadata = dict(metadata, format=PT2E_FORMAT, torch=torch.__version__, torchao=torchao.__version__)
    encoded = {k: json.dumps(v) for k, v in metadata.items()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=encoded))


def load_pytorch_int8(path: str | Path) -> tuple[torch.fx.GraphModule, dict[str, Any]]:
    """The converted int8 graph of a :func:`quantize_pytorch` artifact, and its metadata."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any decoder failure is one clear error
        raise InvalidValueError(f"{path} is not a readable safetensors file (missing, truncated or corrupt?): {e}") from e
    if raw.get("format") != json.dumps(PT2E_FORMAT):
        raise InvalidValueError(f"{path} is not a leanvit PyTorch int8 artifact (a checkpoint? quantise it: "
                                "leanvit quantize MODEL --checkpoint FILE --runtime pytorch)")
    meta = {k: json.loads(v) for k, v in raw.items()}
    model = create_model(meta["model"], num_classes=meta["num_classes"], img_size=meta["img_size"],
                         distillation=meta["distillation"]).eval()
    fused = fuse_model(model, target="torch")
    fused.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    quantizer = x86_quantizer(meta["scheme"], meta.get("keep_float", ()), reduce_range=meta.get("reduce_range", False))
    with quiet_deprecations(), torch.no_grad():
        prepared = _pt2e().prepare_pt2e(export_for_pt2e(fused, meta["img_size"]), quantizer)
        stored = {k[9:]: v for k, v in tensors.items() if k.startswith("observer.")}
        _restore_observers(prepared, stored, f"{path} (torch {meta.get('torch')}, torchao {meta.get('torchao')})")
    return converted_pt2e(prepared), meta
