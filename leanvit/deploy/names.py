"""Names of the runtimes and precisions leanvit runs (no heavy imports: the command line reads them
for its help text)."""
from __future__ import annotations

__all__ = ["BACKENDS", "PRECISIONS"]

BACKENDS = ("eager", "jit", "compile", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16")
