"""What a benchmark ran on: CPU/GPU model, instruction-set extras, library versions."""
from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from typing import Any

import torch

__all__ = ["ISA_CAP_VARIABLES", "cpu_model", "cpu_flags", "has_amx", "gpu_name", "versions", "device_label", "environment"]

# Variables that cap the instruction set PyTorch's kernels use (oneDNN, MKL, ATen): a run under them emulates an
# older CPU (e.g. AVX2 on an AVX-512 core), and its record must say so.
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")

_PACKAGES = ("leanvit", "torch", "torchvision", "timm", "numpy", "onnx", "onnxruntime", "onnxscript", "openvino")


@functools.lru_cache(maxsize=None)
def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key and key not in info:  # the first processor describes them all
                    info[key] = value.strip()
    except OSError:  # not Linux
        pass
    return info


def cpu_model() -> str:
    """CPU model name, e.g. 'Intel(R) Xeon(R) Processor' (as the papers' speed tests print it)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """Instruction-set flags from /proc/cpuinfo (empty off Linux)."""
    return set(_cpuinfo().get("flags", "").split())


def has_amx() -> bool:
    """True when the CPU has AMX bf16 tiles (oneDNN then runs bf16 matmuls/convs on them)."""
    return "amx_bf16" in cpu_flags()


def gpu_name() -> str | None:
    """Name of CUDA device 0, or None without one."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def versions() -> dict[str, str]:
    """Installed versions of the packages that affect speed (missing ones are left out)."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def device_label(device: str) -> str:
    """Human-readable device, e.g. 'cpu: Intel(R) Xeon(R) Processor (2 cores, AMX)'."""
    if device.startswith("cuda"):
        return f"cuda: {gpu_name()}"
    extras = [f"{os.cpu_count()} cores"]
    if has_amx():
        extras.append("AMX")
    elif "avx512_bf16" in cpu_flags():
        extras.append("AVX512-BF16")
    return f"cpu: {cpu_model()} ({', '.join(extras)})"


def environment(device: str = "cpu") -> dict[str, Any]:
    """Everything recorded next to each result."""
    return {
        "device": device_label(device),
        "cpu": cpu_model(),
        "gpu": gpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_caps": {name: os.environ[name] for name in ISA_CAP_VARIABLES if os.environ.get(name)},
        "platform": platform.platform(),
        "versions": versions(),
    }
