"""Names of the runtimes, precisions and export formats leanvit runs (no heavy imports: the command line
reads them for its help text)."""
from __future__ import annotations

__all__ = ["BACKENDS", "PRECISIONS", "FORMATS", "EXPORT_PRECISIONS"]

BACKENDS = ("eager", "jit", "compile", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16")
# export format -> the file suffixes it writes
FORMATS = {"onnx": (".onnx",), "openvino": (".xml",), "torchscript": (".pt", ".ts")}
# fp16 is a GPU inference setting (AMP), not an export format here
EXPORT_PRECISIONS = ("fp32", "bf16")
