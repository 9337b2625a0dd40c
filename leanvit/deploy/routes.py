"""The deployment routes: one record per runtime, read by every deploy module and by the command line.

A :class:`Route` says everything leanvit knows about one runtime: its names in the three vocabularies of
the command line (``leanvit bench --backend``, ``leanvit export --format``, ``leanvit quantize --runtime``),
the ``leanvit.fuse`` target its graphs are built in, the files it writes, the precisions it exports, the
functions that write / open / quantise its artifacts (named, resolved by the module that owns them:
``writers``, ``runtime``, ``quantize``), what the capability check asks of it and which export options
apply to it. :data:`ROUTES` is the table (the ultralytics exporter's ``export_formats()`` is the model);
:func:`leanvit.deploy.options.check_route_options` refuses a flag that does not apply to a route.

No torch here: ``leanvit export --help`` / ``leanvit bench --help`` read their choices from this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..errors import InvalidValueError

__all__ = [
    "Route", "ROUTES", "PRECISIONS", "CALIBRATION_IMAGES", "SCHEMES", "COMMON_EXPORT_OPTIONS", "INT8_EXPORT_OPTIONS",
    "DENSE_EXPORT_OPTIONS", "BACKENDS", "FORMATS", "INT8_RUNTIMES", "DENSE_FORMATS",
    "backend_route", "format_route", "int8_route", "suffix_route", "target_for",
]

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# calibration images an int8 artifact is calibrated on by default, whichever command makes it (leanvit quantize,
# leanvit export --precision int8): the int8 protocol of docs/deploy.md measured its drops with 256
CALIBRATION_IMAGES = 256
# int8 schemes (leanvit.deploy.quantize): every op the quantiser takes, or the layers with weights only
SCHEMES = ("default", "weights")
# ExportOptions fields every export route takes (the model, its size and the verification)
COMMON_EXPORT_OPTIONS = ("checkpoint", "img_size", "batch_size", "precision", "verify", "threads", "seed")
# ... and those an int8 export adds (routes whose precisions include int8)
INT8_EXPORT_OPTIONS = ("calibration", "calibration_images", "target_cpu")
# what a segmentation checkpoint's export takes: fp32, verified at two sizes, a free image size traced at
# --img-size (leanvit segment export --fixed-size / --size H W for the rest)
DENSE_EXPORT_OPTIONS = ("img_size",)


@dataclass(frozen=True)
class Route:
    """One runtime and everything leanvit does with it (``None``: the route has no such step)."""

    name: str
    fuse_target: str  # ``leanvit.fuse(target=...)``: the deploy form its graphs are built from
    backend: str | None = None  # ``leanvit bench --backend`` name (a runtime built from a module)
    format: str | None = None  # ``leanvit export --format`` name
    suffixes: tuple[str, ...] = ()  # the exported file's suffixes (the first is the canonical one)
    precisions: tuple[str, ...] = ()  # export precisions; the first is the default
    precision_note: str = ""  # why a precision it lacks is not offered (the refusal says it)
    writer: str | None = None  # the writer function in ``leanvit.deploy.writers``
    writer_options: tuple[str, ...] = ()  # the keywords its writer takes
    options: tuple[str, ...] = ()  # ExportOptions fields that apply to it besides the common (and int8) ones
    builder: str | None = None  # the ``build_runtime`` step in ``leanvit.deploy.runtime``
    loader: str | None = None  # the ``load_artifact`` step in ``leanvit.deploy.runtime`` (by suffix)
    int8: str | None = None  # ``leanvit quantize --runtime`` name of its int8 artifact
    int8_suffix: str | None = None
    quantizer: str | None = None  # the int8 writer in ``leanvit.deploy.quantize``
    packages: tuple[tuple[str, str], ...] = ()  # (module, pip extra) the backend needs
    cuda: bool = True  # whether the backend runs on CUDA devices here
    mixed_precision: str | None = None  # bf16 / fp16 support: "torch" (autocast / cast), "openvino" (hint)
    dense: bool = False  # exports segmentors (maps at the input size, a free image size)
    companions: tuple[str, ...] = ()  # suffixes of the files written beside the artifact

    @property
    def export_options(self) -> tuple[str, ...]:
        """The ExportOptions fields that apply to an export through this route."""
        if self.format is None:
            return ()
        return COMMON_EXPORT_OPTIONS + self.options + (INT8_EXPORT_OPTIONS if "int8" in self.precisions else ())

    @property
    def files(self) -> str:
        """Its file suffixes in words ('.pt or .ts')."""
        return " or ".join(self.suffixes)


# The order is the vocabularies' order: int8 runtimes are made in this order by default (PyTorch's, whose
# compile takes ~1 min, last).
ROUTES: tuple[Route, ...] = (
    Route("eager", "torch", backend="eager", builder="_torch_runtime", mixed_precision="torch"),
    Route("jit", "torch", backend="jit", format="torchscript", suffixes=(".pt", ".ts"), precisions=("fp32", "bf16"),
          writer="export_torchscript", writer_options=("precision",), options=("dynamic_batch",),
          builder="_torch_runtime", loader="_load_torchscript", mixed_precision="torch"),
    Route("openvino", "openvino", backend="openvino", format="openvino", suffixes=(".xml",),
          precisions=("fp32", "bf16", "int8"), writer="export_openvino",
          writer_options=("dynamic_batch", "precision", "dense", "dynamic_size"), options=("dynamic_batch",),
          builder="_openvino_runtime", loader="_load_openvino", int8="openvino", int8_suffix=".xml",
          quantizer="quantize_openvino",
          packages=(("openvino", "openvino"),), cuda=False, mixed_precision="openvino", dense=True,
          companions=(".bin",)),
    Route("onnxruntime", "onnx", backend="onnxruntime", format="onnx", suffixes=(".onnx",), precisions=("fp32", "int8"),
          writer="export_onnx", writer_options=("dynamic_batch", "dynamo", "opset", "dense", "dynamic_size"),
          options=("dynamic_batch", "dynamo", "opset"), builder="_onnx_runtime", loader="_load_onnx",
          int8="onnxruntime", int8_suffix=".onnx", quantizer="quantize_onnxruntime",
          packages=(("onnxruntime", "onnx"), ("onnx", "onnx")), dense=True,
          precision_note="onnxruntime's CPU provider has no bf16 kernels, so bf16 ONNX cannot be verified: export "
                         "fp32 ONNX, or use --format openvino / torchscript with bf16"),
    Route("executorch", "executorch", backend="executorch", format="executorch", suffixes=(".pte",),
          precisions=("fp32", "int8"), writer="export_executorch", builder="_executorch_runtime",
          loader="_load_executorch", int8="executorch", int8_suffix=".pte", quantizer="quantize_executorch",
          packages=(("executorch", "mobile"),), cuda=False),
    Route("compile", "torch", backend="compile", builder="_torch_runtime", loader="_load_pytorch_int8",
          int8="pytorch", int8_suffix=".safetensors", quantizer="quantize_pytorch", mixed_precision="torch"),
    # fp16 is Core ML's own default (elsewhere a GPU inference setting); predictions run on macOS only
    Route("coreml", "coreml", format="coreml", suffixes=(".mlpackage",), precisions=("fp16", "fp32"),
          writer="export_coreml", writer_options=("precision",), loader="_refuse_coreml"),
)

BACKENDS = tuple(r.backend for r in ROUTES if r.backend)
FORMATS = tuple(r.format for r in ROUTES if r.format)
INT8_RUNTIMES = tuple(r.int8 for r in ROUTES if r.int8)
DENSE_FORMATS = tuple(sorted(r.format for r in ROUTES if r.dense and r.format))


def _find(value: str, key: str, what: str, names: Iterable[str]) -> Route:
    for r in ROUTES:
        if getattr(r, key) == value:
            return r
    raise InvalidValueError(f"unknown {what} {value!r}; choose from {', '.join(names)}")


def backend_route(backend: str) -> Route:
    """The route of a ``leanvit bench`` backend."""
    return _find(backend, "backend", "backend", BACKENDS)


def format_route(fmt: str) -> Route:
    """The route of a ``leanvit export`` format."""
    return _find(fmt, "format", "export format", FORMATS)


def int8_route(runtime: str) -> Route:
    """The route of an int8 runtime (``leanvit quantize --runtime``)."""
    return _find(runtime, "int8", "int8 runtime", INT8_RUNTIMES)


def suffix_route(suffix: str) -> Route | None:
    """The route whose artifacts end in ``suffix`` (an exported file or an int8 artifact), or None."""
    suffix = suffix.lower()
    return next((r for r in ROUTES if r.loader and (suffix in r.suffixes or suffix == r.int8_suffix)), None)


def target_for(name: str) -> str:
    """The ``leanvit.fuse`` target for a bench backend, export format or int8 runtime name (anything else:
    PyTorch's, ``"torch"``)."""
    return next((r.fuse_target for r in ROUTES if name in (r.name, r.backend, r.format, r.int8)), "torch")

