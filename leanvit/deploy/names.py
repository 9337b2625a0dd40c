"""Names of the runtimes, precisions and export formats leanvit runs (no heavy imports: the command line
reads them for its help text)."""
from __future__ import annotations

__all__ = ["BACKENDS", "PRECISIONS", "FORMATS", "EXPORT_PRECISIONS", "FORMAT_PRECISIONS", "INT8_RUNTIMES",
           "INT8_BACKENDS", "CALIBRATION_IMAGES"]

BACKENDS = ("eager", "jit", "compile", "onnxruntime", "openvino", "executorch")
# int8: post-training quantised artifacts (leanvit.deploy.quantize) for onnxruntime / openvino / executorch /
# pytorch (the compile backend)
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# export format -> the file suffixes it writes (.mlpackage is a directory)
FORMATS = {"onnx": (".onnx",), "openvino": (".xml",), "torchscript": (".pt", ".ts"), "executorch": (".pte",),
           "coreml": (".mlpackage",)}
# export format -> the precisions it is written and verified in (the first is the default). fp16 is a GPU
# inference setting in PyTorch, but Core ML's own default; int8 artifacts come from leanvit.deploy.quantize.
FORMAT_PRECISIONS = {"onnx": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8"), "torchscript": ("fp32", "bf16"),
                     "executorch": ("fp32", "int8"), "coreml": ("fp16", "fp32")}
EXPORT_PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# runtime -> the suffix of its int8 artifact (leanvit.deploy.quantize)
# (pytorch: PT2E X86 inductor, a safetensors file the graph is rebuilt from: leanvit.deploy.pt2e)
INT8_RUNTIMES = {"openvino": ".xml", "onnxruntime": ".onnx", "executorch": ".pte", "pytorch": ".safetensors"}
# bench backend -> the int8 runtime it times (compile: the PT2E graph compiled by inductor)
INT8_BACKENDS = {"onnxruntime": "onnxruntime", "openvino": "openvino", "executorch": "executorch", "compile": "pytorch"}
# calibration images an int8 artifact is calibrated on by default, whichever command makes it (leanvit quantize,
# leanvit export --precision int8): the int8 protocol of docs/deploy.md measured its drops with 256
CALIBRATION_IMAGES = 256
