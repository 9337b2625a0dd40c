"""Runtimes that execute a model: PyTorch eager / TorchScript trace / torch.compile, ONNX Runtime, OpenVINO.

Every runtime has the same three steps so that timing loops measure only the runtime:
``prepare(x)`` turns a torch tensor into the runtime's input once, ``run(prepared)`` executes,
``to_torch(out)`` turns the output back into a float torch tensor. ``runtime(x)`` does all three.

``TorchRuntime(mode="jit", jit_optimize=True)`` adds ``torch.jit.freeze`` + ``torch.jit.optimize_for_inference``
after the trace (CPU only; model-dependent gain, see :func:`~leanvit.deploy.capabilities.check_jit_optimize`).

Capability checks and refusals live in :mod:`.capabilities`; the ONNX Runtime backend exports through
:mod:`.writers` first. Threads are explicit per runtime: PyTorch's are process-global
(:func:`~leanvit.deploy.capabilities.torch_threads`), ONNX Runtime
gets ``intra_op_num_threads`` / ``inter_op_num_threads`` and OpenVINO ``INFERENCE_NUM_THREADS`` when
their sessions are created (``torch.set_num_threads`` does not reach either of them).
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import InvalidValueError
from .capabilities import (
    MissingBackendError, UnsupportedPrecisionError, check_jit_optimize, quiet_deprecations, require, require_backend,
)
from .int8_storage import warn_if_other_cpu
from .mobile import export_executorch
from .pt2e import load_pytorch_int8
from .routes import ROUTES, backend_route, suffix_route
from .writers import compile_openvino, export_onnx, to_openvino

__all__ = ["Runtime", "TorchRuntime", "OnnxRuntime", "OpenVinoRuntime", "ExecuTorchRuntime", "build_runtime",
           "load_artifact", "open_pytorch_int8", "run_in_batches", "OPENVINO_PRECISION_HINTS"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# OpenVINO's names for INFERENCE_PRECISION_HINT
OPENVINO_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_PRECISION_OF_HINT = {hint: precision for precision, hint in OPENVINO_PRECISION_HINTS.items()}


class Runtime:
    """Base class: ``prepare`` once, ``run`` per call, ``to_torch`` for the result."""

    backend: str = ""
    precision: str = "fp32"
    device: str = "cpu"

    def prepare(self, x: torch.Tensor) -> Any:
        """Convert a float torch input into what :meth:`run` takes."""
        return x

    def run(self, prepared: Any) -> Any:  # pragma: no cover - abstract
        """Execute once on a prepared input."""
        raise NotImplementedError

    def to_torch(self, out: Any) -> torch.Tensor:
        """The output as a float32 CPU tensor."""
        return out.float().cpu()

    def synchronize(self) -> None:
        """Wait for asynchronous work (CUDA) so wall time covers the whole call."""
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_torch(self.run(self.prepare(x)))


class TorchRuntime(Runtime):
    """PyTorch: ``mode`` 'eager', 'jit' (``torch.jit.trace``, the papers' protocol) or 'compile'.

    ``channels_last`` runs in NHWC memory format. bf16/fp16 use autocast (``bf16_mode='autocast'``,
    GPU AMP, CPU oneDNN/AMX); on CPU
    ``bf16_mode='convert'`` instead casts weights and inputs to bf16 (less casting, more rounding).
    ``jit_optimize`` (mode 'jit', CPU) freezes the trace and runs ``torch.jit.optimize_for_inference`` on
    it: weights become constants and fp32 convolutions run oneDNN with pre-packed weights. Not the
    default: it is exact, but whether it is faster depends on the model and the memory layout (every
    converted convolution pays a dense <-> oneDNN reorder, which EfficientViT-M0's many small ones do
    not earn back; benchmarks/NOTES.md entry 15). Refusals: :func:`check_jit_optimize`.
    Takes ownership of ``model``: it may be moved to ``device`` / cast in place.
    """

    def __init__(
        self,
        model: nn.Module,
        example: torch.Tensor,
        *,
        mode: str = "eager",
        precision: str = "fp32",
        device: str = "cpu",
        bf16_mode: str = "autocast",
        compile_mode: str | None = None,
        channels_last: bool = False,
        jit_optimize: bool = False,
    ) -> None:
        if mode not in ("eager", "jit", "compile"):
            raise InvalidValueError(f"unknown PyTorch mode {mode!r}; choose eager, jit or compile")
        if jit_optimize:
            check_jit_optimize(mode, device)  # before the model moves anywhere
        if bf16_mode not in ("autocast", "convert"):
            raise InvalidValueError(f"bf16_mode must be 'autocast' or 'convert', got {bf16_mode!r}")
        self.backend, self.precision, self.device = mode, precision, device
        self.jit_optimize = jit_optimize
        self.convert = precision == "bf16" and bf16_mode == "convert" and not device.startswith("cuda")
        self.autocast = precision != "fp32" and not self.convert
        # NHWC lets oneDNN / cuDNN run convolutions without layout reorders around every call.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if not isinstance(model, torch.fx.GraphModule):  # exported graphs have no train / eval modes
            model = model.eval()
        model = model.to(device=device, memory_format=self.memory_format)
        if self.convert:
            model = model.to(torch.bfloat16)
        x = self.prepare(example)
        with quiet_deprecations(), self._freezing(mode):
            if mode == "jit":
                with torch.no_grad(), self._amp():
                    model = torch.jit.trace(model, x, check_trace=False)
                if jit_optimize:
                    # Outside autocast: the trace already holds its casts as graph ops. Freezing's constant
                    # folding executes ops on the weights (e.g. their bf16 casts) and must compute exactly
                    # what the graph says, not what an active autocast would re-cast.
                    with torch.no_grad():
                        model = torch.jit.optimize_for_inference(torch.jit.freeze(model))
            elif mode == "compile":
                model = torch.compile(model, mode=compile_mode)
            self.fn = model
            # First call in run()'s exact context (inference mode, autocast): compilation and graph
            # optimisation happen here, in set-up; under another grad mode dynamo would recompile later.
            self.run(x)

    @staticmethod
    def _freezing(mode: str) -> contextlib.AbstractContextManager:
        # Inductor's freezing treats the (inference-only) weights as constants: it folds them and
        # pre-packs conv/linear weights for oneDNN, fusing conv + ReLU (NOTES.md entry 8). It is read
        # when the graph compiles, i.e. during the first call made inside this context.
        if mode != "compile":
            return contextlib.nullcontext()
        import torch._inductor.config as inductor_config

        return inductor_config.patch(freezing=True)

    def _amp(self) -> contextlib.AbstractContextManager:
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast("cuda" if self.device.startswith("cuda") else "cpu", dtype=_DTYPES[self.precision])

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device).contiguous(memory_format=self.memory_format)
        return x.to(torch.bfloat16) if self.convert else x

    def run(self, prepared: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self._amp():
            return self.fn(prepared)


class OnnxRuntime(Runtime):
    """ONNX Runtime session on an ``.onnx`` file with explicit thread counts (0 = ORT's default)."""

    def __init__(self, path: str | Path, *, threads: int | None = 1, device: str = "cpu") -> None:
        ort = require("onnxruntime", "onnx", "the onnxruntime backend")
        self.backend, self.precision, self.device = "onnxruntime", "fp32", device
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 0
        opts.inter_op_num_threads = 1 if threads else 0
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise MissingBackendError("onnxruntime on CUDA needs the GPU build: pip install onnxruntime-gpu")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.threads = threads

    def prepare(self, x: torch.Tensor) -> dict[str, Any]:
        return {self.input_name: x.detach().float().cpu().contiguous().numpy()}

    def run(self, prepared: dict[str, Any]) -> Any:
        return self.session.run(None, prepared)[0]

    def to_torch(self, out: Any) -> torch.Tensor:
        return torch.from_numpy(out).float()

    def synchronize(self) -> None:
        pass  # session.run returns host arrays: already synchronous


class OpenVinoRuntime(Runtime):
    """OpenVINO on CPU, from a torch module (converted in memory) or an IR ``.xml`` path.

    ``precision=None`` keeps OpenVINO's default INFERENCE_PRECISION_HINT (bf16 on AMX CPUs!) or the
    hint an exported IR carries; 'fp32' / 'bf16' set it explicitly. ``effective_precision`` says
    what the compiled model really uses.

    An IR whose batch is its only free dimension (``--dynamic-batch`` exports, every int8 artifact) is
    compiled once per batch size it is called with, each at that static shape: OpenVINO's kernels for a
    dynamic batch ran leanvit's int8 EfficientViT-M4 18 % slower at batch 16 and 41 % slower at batch 1
    (benchmarks/NOTES.md entry 17). ``batch_size`` is the first one compiled (default 1). Free spatial sizes
    (dense models) stay dynamic: one compile for every image size would cost more than it gains.
    """

    def __init__(
        self,
        model: nn.Module | str | Path,
        *,
        example: torch.Tensor | None = None,
        threads: int | None = 1,
        precision: str | None = "fp32",
        performance_hint: str = "LATENCY",
        batch_size: int | None = None,
    ) -> None:
        ov = require("openvino", "openvino", "the openvino backend")
        self.backend, self.device = "openvino", "cpu"
        core = ov.Core()
        if isinstance(model, (str, Path)):
            ov_model = core.read_model(str(model))
            if precision is None and ov_model.has_rt_info(["runtime_options", "INFERENCE_PRECISION_HINT"]):
                hint = str(ov_model.get_rt_info(["runtime_options", "INFERENCE_PRECISION_HINT"]).astype(str))
                precision = _PRECISION_OF_HINT.get(hint, precision)
        else:
            if example is None:
                raise InvalidValueError("converting a torch module to OpenVINO needs an example input")
            ov_model = to_openvino(model, example)
        config: dict[str, Any] = {"PERFORMANCE_HINT": performance_hint}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = OPENVINO_PRECISION_HINTS[precision]
        self._model, self._config = ov_model, config
        shape = ov_model.input(0).get_partial_shape()
        self.per_batch = shape.rank.is_static and shape[0].is_dynamic and all(d.is_static for d in list(shape)[1:])
        self._requests: dict[int | None, Any] = {}
        first = (batch_size or 1) if self.per_batch else None
        self.compiled = self._compile(first)
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type, e.g. bf16
        self.effective_precision = _PRECISION_OF_HINT.get(hint.get_type_name(), str(hint))
        self.precision = self.effective_precision
        self.request = self._requests[first]
        self.threads = threads

    def _compile(self, batch: int | None) -> Any:
        """Compile the model (``batch``: at that static batch) and keep an infer request for it."""
        model = self._model
        if batch is not None:
            model = model.clone()
            model.reshape([batch, *(d.get_length() for d in list(model.input(0).get_partial_shape())[1:])])
        compiled = compile_openvino(model, self._config)
        self._requests[batch] = compiled.create_infer_request()
        return compiled

    def prepare(self, x: torch.Tensor) -> Any:
        return x.detach().float().cpu().contiguous().numpy()

    def run(self, prepared: Any) -> Any:
        batch = int(prepared.shape[0]) if self.per_batch else None
        request = self._requests.get(batch)
        if request is None:  # a batch size not seen yet: its own static compile (once)
            self._compile(batch)
            request = self._requests[batch]
        return request.infer({0: prepared}, share_inputs=True)[0]

    def to_torch(self, out: Any) -> torch.Tensor:
        return torch.from_numpy(out.copy()).float()

    def synchronize(self) -> None:
        pass  # infer() is synchronous


class ExecuTorchRuntime(Runtime):
    """ExecuTorch's runtime (the pip package's pybindings, XNNPACK and portable kernels) on a ``.pte`` file.

    ``threads`` sizes ExecuTorch's process-wide thread pool (XNNPACK's): the last runtime created decides.
    """

    def __init__(self, path: str | Path, *, threads: int | None = 1) -> None:
        et = require("executorch.runtime", "mobile", "the ExecuTorch runtime")
        bindings = require("executorch.extension.pybindings.portable_lib", "mobile", "the ExecuTorch runtime")
        self.backend, self.precision, self.device = "executorch", "fp32", "cpu"
        if threads:
            bindings._unsafe_reset_threadpool(int(threads))
        self._program_bytes = Path(path).read_bytes()  # in memory: the file may be temporary
        self._program = et.Runtime.get().load_program(self._program_bytes)
        self.method = self._program.load_method("forward")
        self.threads = threads

    def prepare(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x.detach().float().cpu().contiguous()]

    def run(self, prepared: list[torch.Tensor]) -> torch.Tensor:
        return self.method.execute(prepared)[0]

    def to_torch(self, out: torch.Tensor) -> torch.Tensor:
        return out.float().clone()  # the output buffer belongs to the method and is reused by the next call

    def synchronize(self) -> None:
        pass  # execute() is synchronous


def build_runtime(
    model: nn.Module,
    backend: str,
    example: torch.Tensor,
    *,
    precision: str = "fp32",
    device: str = "cpu",
    threads: int | None = 1,
    bf16_mode: str = "autocast",
    compile_mode: str | None = None,
    channels_last: bool = False,
    jit_optimize: bool = False,
) -> Runtime:
    """A ready runtime for an (already fused) eval ``model`` at the example's shape (the backend's route
    names the step that builds it). Fuse leanvit models for the runtime: ``leanvit.fuse(model,
    target=leanvit.deploy.routes.target_for(backend))`` (OpenVINO runs EfficientViT-M 9-18% faster in its
    own deploy form; NOTES.md entry 12). ``jit_optimize``: freeze + ``optimize_for_inference`` the jit trace
    (CPU; :class:`TorchRuntime`)."""
    require_backend(backend)
    if jit_optimize:
        check_jit_optimize(backend, device)  # also refuses onnxruntime / openvino, which never see a trace
    route = backend_route(backend)
    if device.startswith("cuda") and not route.cuda:
        raise InvalidValueError(f"the {backend} backend runs on CPU only here; use --device cpu")
    build = globals()[route.builder]
    return build(model, example, mode=backend, precision=precision, device=device, threads=threads,
                 bf16_mode=bf16_mode, compile_mode=compile_mode, channels_last=channels_last,
                 jit_optimize=jit_optimize)


def _torch_runtime(model: nn.Module, example: torch.Tensor, *, threads: int | None, **settings: Any) -> Runtime:
    return TorchRuntime(model, example, **settings)  # PyTorch's threads are process-global (torch_threads)


def _onnx_runtime(model: nn.Module, example: torch.Tensor, *, precision: str, device: str, threads: int | None,
                  **_: Any) -> Runtime:
    if precision != "fp32":
        raise UnsupportedPrecisionError(f"onnxruntime runs fp32 models here, not {precision}")
    with tempfile.TemporaryDirectory(prefix="leanvit-ort-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model.cpu(), example.cpu(), path)
        return OnnxRuntime(path, threads=threads, device=device)  # the session holds the graph


def _executorch_runtime(model: nn.Module, example: torch.Tensor, *, precision: str, threads: int | None,
                        **_: Any) -> Runtime:
    if precision != "fp32":
        raise UnsupportedPrecisionError("the executorch backend runs fp32 XNNPACK programs on CPU here "
                                        "(int8: leanvit.deploy.quantize)")
    with tempfile.TemporaryDirectory(prefix="leanvit-et-") as tmp:
        path = Path(tmp) / "model.pte"
        export_executorch(model.cpu(), example.cpu(), path)
        return ExecuTorchRuntime(path, threads=threads)  # the program is read into memory


def _openvino_runtime(model: nn.Module, example: torch.Tensor, *, precision: str, threads: int | None,
                      **_: Any) -> Runtime:
    return OpenVinoRuntime(model, example=example, threads=threads, precision=precision)


def load_artifact(path: str | Path, *, threads: int | None = 1, precision: str | None = None) -> Runtime:
    """Open an exported file by its suffix (the route whose artifacts end in it names its loader):
    ``.onnx`` (ONNX Runtime), ``.xml`` (OpenVINO IR), ``.pt`` / ``.ts`` (TorchScript), ``.pte`` (ExecuTorch),
    ``.safetensors`` (a PyTorch int8 artifact, compiled for batch 1: inductor recompiles for other batches).
    Core ML packages run only on macOS (coremltools)."""
    path = Path(path)
    route = suffix_route(path.suffix)
    if route is None:
        known = sorted({s for r in ROUTES if r.loader for s in (*r.suffixes, r.int8_suffix) if s})
        raise InvalidValueError(f"cannot tell the format of {path}: expected one of {', '.join(known)}")
    warn_if_other_cpu(path)  # an int8 artifact quantised for another CPU class than this one
    return globals()[route.loader](path, threads=threads, precision=precision)


def _load_onnx(path: Path, *, threads: int | None, **_: Any) -> Runtime:
    return OnnxRuntime(path, threads=threads)


def _load_openvino(path: Path, *, threads: int | None, precision: str | None) -> Runtime:
    return OpenVinoRuntime(path, threads=threads, precision=precision)


def _load_executorch(path: Path, *, threads: int | None, **_: Any) -> Runtime:
    return ExecuTorchRuntime(path, threads=threads)


def _load_pytorch_int8(path: Path, **_: Any) -> Runtime:
    return open_pytorch_int8(path)


def _load_torchscript(path: Path, **_: Any) -> Runtime:
    with quiet_deprecations():
        module = torch.jit.load(str(path), map_location="cpu")
    return _LoadedTorchScript(module)


def _refuse_coreml(path: Path, **_: Any) -> Runtime:
    raise InvalidValueError(f"{path} is a Core ML package: Core ML runs it on macOS / iOS only "
                            "(coremltools.models.MLModel(path).predict there)")


def open_pytorch_int8(path: str | Path, *, batch_size: int = 1, compiled: bool = True) -> TorchRuntime:
    """A PyTorch int8 artifact (:mod:`leanvit.deploy.pt2e`: rebuilt, not unpickled) compiled by inductor for
    ``batch_size`` (~1 min), or run eagerly (``compiled=False``: reference kernels, close to but not
    bit-equal to the compiled int8 ones)."""
    graph, meta = load_pytorch_int8(path)
    example = torch.zeros(batch_size, 3, meta["img_size"], meta["img_size"])
    return TorchRuntime(graph, example, mode="compile" if compiled else "eager")


def run_in_batches(runtime: Runtime | Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                   batch_size: int, *, pad: bool = False) -> torch.Tensor:
    """``runtime``'s float outputs on ``images`` in chunks of ``batch_size``; ``pad`` fills the last chunk
    (repeating its last image) for runtimes with a static batch, and drops the padding from the result."""
    outputs = []
    with torch.inference_mode():
        for chunk in images.split(batch_size):
            n = len(chunk)
            if pad and n < batch_size:
                chunk = torch.cat([chunk, chunk[-1:].expand(batch_size - n, *chunk.shape[1:])])
            outputs.append(runtime(chunk).float().cpu()[:n])
    return torch.cat(outputs)


class _LoadedTorchScript(Runtime):
    """A ``torch.jit.load``-ed module (its precision handling is baked into the graph)."""

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        self.backend, self.device, self.module = "torchscript", "cpu", module

    def run(self, prepared: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(prepared)
