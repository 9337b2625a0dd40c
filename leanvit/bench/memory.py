"""Process memory on CPU (Linux RSS high-water mark) and CUDA allocator peaks.

PyTorch's CPU tensors bypass tracemalloc, so CPU memory is the resident set size: the peak
(``VmHWM``) can be reset by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0), which lets one
process measure the peak of one phase. Elsewhere ``ru_maxrss`` (never reset) is the fallback.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
import sys

import torch

__all__ = ["rss_mb", "peak_rss_mb", "reset_peak_rss", "release_freed_memory", "PeakMemory"]


def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0  # kB -> MiB
    except OSError:
        pass
    return None


def _maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024.0  # bytes on macOS, kB on Linux


def rss_mb() -> float:
    """Current resident set size in MiB."""
    value = _status_mb("VmRSS")
    return value if value is not None else _maxrss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size in MiB since start or the last :func:`reset_peak_rss`."""
    value = _status_mb("VmHWM")
    return value if value is not None else _maxrss_mb()


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark to the current RSS; False where the OS cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_freed_memory() -> None:
    """Collect garbage and return freed heap pages to the OS, so RSS deltas mean something."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


class PeakMemory:
    """Peak memory of the code inside ``with``, in MiB, above ``baseline_mb``.

    CPU: RSS high-water mark during the block minus ``baseline_mb`` (default: RSS at entry).
    CUDA: ``torch.cuda.max_memory_allocated`` during the block (tensors only; includes weights).
    """

    def __init__(self, device: str = "cpu", baseline_mb: float | None = None) -> None:
        self.device = device
        self.baseline_mb = baseline_mb
        self.peak_mb: float | None = None
        self.method = ""

    def __enter__(self) -> "PeakMemory":
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.method = "cuda max_memory_allocated"
        else:
            release_freed_memory()
            if self.baseline_mb is None:
                self.baseline_mb = rss_mb()
            self.method = "RSS high-water mark" if reset_peak_rss() else "ru_maxrss (not resettable)"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.peak_mb = max(0.0, peak_rss_mb() - float(self.baseline_mb or 0.0))
