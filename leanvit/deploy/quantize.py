"""int8 post-training quantisation with measured accuracy: OpenVINO (NNCF), ONNX Runtime (QDQ), ExecuTorch
(PT2E + XNNPACK quantizer).

:func:`quantize_for` quantises a model already fused for its runtime, calibrated on *real* images (random
noise calibrates the activation ranges of the wrong distribution: OpenVINO's int8 lost 49-70 top-1 points in
the digits protocol, docs/deploy.md), and writes the int8 artifact; :func:`top1_report` pairs fp32 and int8
predictions on the same labelled images with the flip count and McNemar's exact test
(:class:`AccuracyReport`). :func:`leanvit.deploy.int8.quantize_model` does all of it from image folders.

Schemes (``scheme``): ``"default"`` quantises every op the runtime's quantiser takes; ``"weights"`` keeps
activation x activation products (attention ``q @ k`` and ``attn @ v`` MatMuls / bmms) in float and
quantises the layers with weights (ExecuTorch: conv and linear; ONNX Runtime: conv only, see
:func:`quantize_onnxruntime`): measured on real digits, the mixed precision both runtimes need. For
OpenVINO, NNCF's transformer preset (``model_type=TRANSFORMER``) does this and more (it keeps softmax and
norm inputs in float), and is always used.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .._io import atomic_write, atomic_write_bytes
from ..errors import InvalidValueError
from . import capabilities
from .capabilities import preserved_signal_stack, quiet_deprecations, require, torch_threads
from .int8_policy import INT8_CPU_KEY, int8_recipe, resolve_target_cpu
from .mobile import as_nchw, lower_to_executorch
from .routes import SCHEMES, int8_route
from .pt2e import (ACTIVATION_AVERAGING, QAT_RUNTIMES, converted_qat, float_classifier, quantize_pytorch,
                   xnnpack_quantizer)
from .runtime import ExecuTorchRuntime, OnnxRuntime, OpenVinoRuntime, Runtime, open_pytorch_int8, run_in_batches
from .writers import export_onnx, to_openvino

__all__ = [
    "SCHEMES", "AccuracyReport", "QuantizedArtifact", "mcnemar_exact", "top1_report",
    "quantize_openvino", "quantize_onnxruntime", "quantize_executorch", "quantize_for", "quantize_qat", "predict",
]

@dataclass
class QuantizedArtifact:
    """An int8 file and how it was made."""
    runtime: str
    path: str
    scheme: str
    calibration_images: int
    description: str
    keep_float: tuple[str, ...] = ()  # modules left in float (mixed precision)
    target_cpu: str = ""  # the CPU class it was quantised for (leanvit.deploy.int8_policy.CPU_CLASSES)

    def open(self, threads: int | None = 1, *, batch_size: int = 16, compiled: bool = True) -> Runtime:
        """The artifact in its runtime. The PyTorch graph is compiled by inductor for ``batch_size`` (~1 min;
        ``compiled=False`` runs the same quantised graph eagerly, with reference kernels: slow, and close to
        but not bit-equal to the compiled int8 kernels)."""
        if self.runtime == "pytorch":
            with torch_threads(threads):
                return open_pytorch_int8(self.path, batch_size=batch_size, compiled=compiled)
        if self.runtime == "openvino":
            return OpenVinoRuntime(self.path, threads=threads, precision=None, batch_size=batch_size)
        if self.runtime == "onnxruntime":
            return OnnxRuntime(self.path, threads=threads)
        return ExecuTorchRuntime(self.path, threads=threads)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (a binomial test of b vs b + c at 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@dataclass
class AccuracyReport:
    """fp32 vs int8 top-1 on the same labelled images, paired."""
    images: int
    fp32_top1: float
    int8_top1: float
    flips: int  # images whose predicted class changed
    fp32_only: int  # right in fp32, wrong in int8
    int8_only: int  # wrong in fp32, right in int8
    mcnemar_p: float

    @property
    def drop(self) -> float:
        """fp32 minus int8 top-1, in points."""
        return self.fp32_top1 - self.int8_top1

    def summary(self) -> str:
        """One line for people."""
        return (f"top-1 fp32 {self.fp32_top1:.2f} % -> int8 {self.int8_top1:.2f} % (drop {self.drop:+.2f} points; "
                f"{self.flips} of {self.images} predictions changed ({100 * self.flips / self.images:.1f} %); "
                f"McNemar p = {self.mcnemar_p:.3g})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly fields, the drop included."""
        return dict(asdict(self), drop=self.drop)


def predict(runtime: Runtime | Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
            batch_size: int) -> torch.Tensor:
    """Predicted classes of ``images``, run in chunks of ``batch_size`` (the last one padded for static shapes)."""
    return run_in_batches(runtime, images, batch_size, pad=True).argmax(-1)


def top1_report(fp32_preds: torch.Tensor, int8_preds: torch.Tensor, labels: torch.Tensor) -> AccuracyReport:
    """Pair two runs' predictions on the same labelled images."""
    right32, right8 = fp32_preds == labels, int8_preds == labels
    b, c = int((right32 & ~right8).sum()), int((~right32 & right8).sum())
    n = len(labels)
    return AccuracyReport(n, 100.0 * float(right32.float().mean()), 100.0 * float(right8.float().mean()),
                          int((fp32_preds != int8_preds).sum()), b, c, mcnemar_exact(b, c))


def _check_calibration(calibration: torch.Tensor, example: torch.Tensor) -> None:
    if calibration.dim() != 4 or calibration.shape[1:] != example.shape[1:]:
        raise InvalidValueError(f"calibration images must be (N, {', '.join(map(str, example.shape[1:]))}) like the "
                                f"model's input, got {tuple(calibration.shape)}")
    if len(calibration) == 0:
        raise InvalidValueError("no calibration images: pass real images of the task (a few hundred)")


def in_modules(module_path: str, modules: Sequence[str]) -> bool:
    """Whether the layer at dotted ``module_path`` lies inside one of ``modules`` (dotted module names)."""
    return any(module_path == m or module_path.startswith(m + ".") for m in modules)


def _openvino_module_path(op_name: str) -> str:
    # ov.convert_model names ops "__module.stages.1.blocks.0.mixer.qkv/aten::_convolution/Convolution"
    return op_name.split("/", 1)[0].removeprefix("__module.")


def _onnx_module_path(node_name: str) -> str:
    # torch.onnx scopes: "/stages/stages.1/blocks/blocks.2/ffn/m/pw1/Conv" -> "stages.1.blocks.2.ffn.m.pw1"
    parts: list[str] = []
    for scope in node_name.strip("/").split("/")[:-1]:
        if parts and scope.startswith(parts[-1] + "."):
            parts[-1] = scope  # a container's element repeats the container's name
        else:
            parts.append(scope)
    return ".".join(parts)


def quantize_openvino(fused: nn.Module, example: torch.Tensor, calibration: torch.Tensor, path: Path,
                      scheme: str = "default", keep_float: Sequence[str] = (), target_cpu: str = "vnni") -> str:
    """NNCF post-training quantisation of the OpenVINO model (transformer preset, mixed preset: symmetric
    weights, asymmetric activations), saved as an int8 IR with a dynamic batch. The ops of the modules in
    ``keep_float`` go to NNCF's ignored scope; ``target_cpu`` is recorded in the IR's rt_info."""
    nncf = require("nncf", "quantize", "OpenVINO int8 (NNCF)")
    ov = require("openvino", "openvino", "OpenVINO int8")
    _check_calibration(calibration, example)
    ov_model = to_openvino(fused, example, dynamic_batch=True)
    ignored = [op.get_friendly_name() for op in ov_model.get_ops()
               if in_modules(_openvino_module_path(op.get_friendly_name()), keep_float)]
    scope = nncf.IgnoredScope(names=ignored, validate=False) if ignored else None
    batches = [b.numpy() for b in calibration.split(1)]  # NNCF counts subset_size in dataset items
    with quiet_deprecations(), preserved_signal_stack():  # NNCF compiles OpenVINO models to collect statistics
        quantized = nncf.quantize(ov_model, nncf.Dataset(batches), preset=nncf.QuantizationPreset.MIXED,
                                  model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration),
                                  ignored_scope=scope)
    quantized.set_rt_info(target_cpu, INT8_CPU_KEY)
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    return (f"NNCF {nncf.__version__} post-training int8 (transformer preset; "
            f"{int8_recipe('openvino', target_cpu).note}) on OpenVINO {ov.__version__}")


class _TensorReader:
    """An ONNX Runtime CalibrationDataReader over a tensor of images."""

    def __init__(self, name: str, images: torch.Tensor, batch_size: int) -> None:
        self.items = iter([{name: b.numpy()} for b in images.split(batch_size)])

    def get_next(self) -> dict[str, Any] | None:
        return next(self.items, None)


def quantize_onnxruntime(fused: nn.Module, example: torch.Tensor, calibration: torch.Tensor, path: Path,
                         scheme: str = "default", keep_float: Sequence[str] = (), target_cpu: str = "vnni") -> str:
    """ONNX Runtime static quantisation: QDQ format, per-channel symmetric int8 weights, uint8 activations whose
    ranges are the moving average of single calibration images' min / max (``CalibMovingAverage``, one image
    per step). The global min-max of all images kept rare extremes in range and coarsened every other value:
    in the digits protocol (shvit_s1, 64 px, VNNI CPU) int8 top-1 went from 93.8 to 96.9 % (fp32 97.4);
    percentile / entropy calibration did not help. The classifier stays fp32
    (:func:`~leanvit.deploy.pt2e.float_classifier`). ``scheme="weights"`` quantises the convolutions only:
    attention MatMuls and residual adds stay fp32 too. ``target_cpu="no-vnni"`` quantises
    the weights to uint8 (U8U8), which ONNX Runtime's kernels widen to int16 before multiplying: exact on CPUs
    without VNNI, where the int8 weights' ``vpmaddubsw`` sums saturate (:mod:`leanvit.deploy.int8_policy`);
    the class is recorded in the model's metadata_props."""
    ort = require("onnxruntime", "onnx", "ONNX Runtime int8")
    import onnx
    from onnxruntime import quantization as q

    _check_calibration(calibration, example)
    ops = ["Conv"] if scheme == "weights" else None
    with tempfile.TemporaryDirectory(prefix="leanvit-int8-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(fused, example[:1], fp32, dynamic_batch=True)
        prepared = Path(tmp) / "prepared.onnx"
        q.quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        kept = (*keep_float, *float_classifier(fused))
        excluded = [n.name for n in onnx.load(str(prepared)).graph.node
                    if in_modules(_onnx_module_path(n.name), kept)]
        reader = _TensorReader("input", calibration, 1)  # one image per moving-average step
        recipe = int8_recipe("onnxruntime", target_cpu)
        quantized = Path(tmp) / "int8.onnx"
        q.quantize_static(str(prepared), str(quantized), reader, quant_format=q.QuantFormat.QDQ, per_channel=True,
                          reduce_range=recipe.reduce_range, activation_type=q.QuantType.QUInt8,
                          weight_type=q.QuantType.QUInt8 if recipe.unsigned_weights else q.QuantType.QInt8,
                          op_types_to_quantize=ops, nodes_to_exclude=excluded,
                          calibrate_method=q.CalibrationMethod.MinMax,
                          extra_options={"CalibMovingAverage": True,
                                         "CalibMovingAverageConstant": ACTIVATION_AVERAGING})
        model = onnx.load(str(quantized))
        onnx.helper.set_model_props(model, dict({p.key: p.value for p in model.metadata_props},
                                                **{INT8_CPU_KEY: target_cpu}))
        atomic_write(path, lambda tmp_path: onnx.save(model, tmp_path))
    return (f"onnxruntime {ort.__version__} static QDQ int8 (per-channel weights{', Conv only' if ops else ''}, "
            "moving-average activation ranges, classifier in float; "
            f"for {target_cpu} CPUs: {recipe.note})")


def quantize_executorch(fused: nn.Module, example: torch.Tensor, calibration: torch.Tensor, path: Path,
                        scheme: str = "default", keep_float: Sequence[str] = (), target_cpu: str = "vnni") -> str:
    """PT2E quantisation with :func:`xnnpack_quantizer`, lowered to an XNNPACK ``.pte`` at the example's
    (static) batch. ``scheme="weights"`` leaves the attention ``bmm``s unquantised."""
    pt2e = require("torchao.quantization.pt2e.quantize_pt2e", "mobile", "ExecuTorch int8 (torchao PT2E)")
    _check_calibration(calibration, example)
    batch = example.shape[0]
    if len(calibration) < batch:
        raise InvalidValueError(f"{len(calibration)} calibration images cannot fill one batch of the program ({batch}): "
                                "pass more images or a smaller example batch")
    quantizer = xnnpack_quantizer(scheme, keep_float)
    with quiet_deprecations(), torch.no_grad():
        graph = torch.export.export(as_nchw(fused), (example,)).module()
        prepared = pt2e.prepare_pt2e(graph, quantizer)
        for chunk in calibration[: len(calibration) // batch * batch].split(batch):
            prepared(chunk)
        converted = pt2e.convert_pt2e(prepared)
        program = torch.export.export(converted, (example,))
    lowered = lower_to_executorch(program, example)
    atomic_write_bytes(path, lowered.buffer)
    return (f"PT2E XNNPACKQuantizer int8 (per-channel{', conv/linear only' if scheme == 'weights' else ''}; "
            f"{int8_recipe('executorch', target_cpu).note}), {lowered.describe()}")


def quantize_qat(runtime: str, model: nn.Module, example: torch.Tensor, scheme: str, state: dict[str, torch.Tensor],
                 path: Path) -> QuantizedArtifact:
    """The int8 artifact of a quantisation-aware fine-tuned ``model`` (unfused, its learned fake-quant
    ``state``) for the runtime its ``scheme`` simulated (:data:`~leanvit.deploy.pt2e.QAT_RUNTIMES`)."""
    if QAT_RUNTIMES.get(scheme) != runtime:
        raise InvalidValueError(f"a {scheme} QAT checkpoint converts for {QAT_RUNTIMES.get(scheme)}, not {runtime}")
    side = int(example.shape[-1])
    with quiet_deprecations(), torch.no_grad():
        program = torch.export.export(converted_qat(model, side, scheme, state), (example,))
    lowered = lower_to_executorch(program, example)
    atomic_write_bytes(path, lowered.buffer)
    description = f"QAT ({scheme}) fine-tuned, converted by PT2E XNNPACKQuantizer, {lowered.describe()}"
    return QuantizedArtifact(runtime, str(path), "qat", 0, description)


def quantize_for(runtime: str, fused: nn.Module, example: torch.Tensor, calibration: torch.Tensor, path: Path,
                 *, scheme: str = "default", keep_float: Sequence[str] = (),
                 threads: int | None = 1, target_cpu: str | None = None) -> QuantizedArtifact:
    """Quantise an already fused eval model (fused for ``runtime``: ``leanvit.deploy.routes.target_for``) to ``path``;
    the modules named in ``keep_float`` (dotted names in ``fused``, e.g. ``stages.1.blocks.0.mixer``) stay
    in float (:func:`leanvit.deploy.tuning.search_keep_float` finds them). ``target_cpu``: the CPU class
    the artifact will run on (``"vnni"`` / ``"no-vnni"``; ``None`` or ``"auto"``: this machine's), which picks
    the quantisation exact for its int8 instructions (:data:`leanvit.deploy.int8_policy.INT8_RECIPES`)."""
    route = int8_route(runtime)  # its quantiser, named in the route table, lives in this module
    if scheme not in SCHEMES:
        raise InvalidValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    suffix = route.int8_suffix
    if Path(path).suffix != suffix:
        raise InvalidValueError(f"{runtime} int8 output must end in {suffix}, got {Path(path).name!r}")
    target = resolve_target_cpu(target_cpu, capabilities.cpu_has_int8_dot())
    with torch_threads(threads):
        quantizer = globals()[route.quantizer]
        description = quantizer(fused, example, calibration.float(), Path(path), scheme, tuple(keep_float), target)
    return QuantizedArtifact(runtime, str(path), scheme, len(calibration), description, tuple(keep_float), target)

