"""int8 per CPU class, as data: the quantisation that is exact for the target's int8 instructions, and where
int8 was measured faster or slower than fp32. No torch here (the command line's help reads the classes).

Two x86 CPU classes compute int8 convolutions / matmuls differently:

* ``vnni`` (AVX512-VNNI, AVX-VNNI or AMX-INT8): ``vpdpbusd`` multiplies uint8 activations by int8 weights and
  accumulates in int32: exact over the full 8-bit ranges.
* ``no-vnni`` (AVX2, or AVX-512 without VNNI): oneDNN and ONNX Runtime's MLAS use ``vpmaddubsw``, which adds
  two u8 x s8 products into a *saturating int16*: 2 x 255 x 127 = 64770 overflows it, and the result is
  clamped. The remedies keep every sum within int16, so the AVX2 kernels compute the same integers as the
  VNNI ones: 7-bit weights for PyTorch's oneDNN kernels (2 x 255 x 64 = 32640; 7-bit activations, the X86
  inductor quantizer's own ``reduce_range``, lost more accuracy: :func:`leanvit.deploy.pt2e.x86_quantizer`);
  uint8 weights for ONNX Runtime (U8U8: MLAS widens both operands to int16 and sums pairs with ``vpmaddwd``
  into int32; its documented alternative, 7-bit weights via ``reduce_range``, cost shvit_s1 2.6 top-1 points
  on the digits against 0.9 for U8U8). XNNPACK (ExecuTorch) widens int8 to int16 before multiplying, and
  OpenVINO's NNCF applies its own overflow fix: one recipe for both classes there.

:data:`INT8_RECIPES` says what each int8 runtime does for each class; :data:`INT8_SPEED` holds the measured
int8 / fp32 speed ratios that :func:`int8_speed_check` (``leanvit bench --precision int8``) decides by.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidValueError

__all__ = ["CPU_CLASSES", "INT8_CPU_KEY", "Int8Recipe", "INT8_RECIPES", "Int8Speed", "INT8_SPEED", "cpu_class_of",
           "resolve_target_cpu", "int8_recipe", "int8_speed_check"]

CPU_CLASSES = {
    "vnni": "int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8)",
    "no-vnni": "no int8 dot-product instructions (AVX2, or AVX-512 without VNNI)",
}
# the metadata key every int8 artifact records its target CPU class under (ONNX metadata_props, OpenVINO
# rt_info, safetensors metadata)
INT8_CPU_KEY = "leanvit_int8_cpu"


def cpu_class_of(has_int8_dot: bool) -> str:
    """The CPU class of a machine whose int8 dot-product probe answered ``has_int8_dot``."""
    return "vnni" if has_int8_dot else "no-vnni"


def resolve_target_cpu(target_cpu: str | None, has_int8_dot: bool) -> str:
    """``target_cpu`` checked (``None`` or ``"auto"``: this machine's class, from ``has_int8_dot``)."""
    if target_cpu in (None, "auto"):
        return cpu_class_of(has_int8_dot)
    if target_cpu not in CPU_CLASSES:
        raise InvalidValueError(f"unknown target CPU class {target_cpu!r}; choose auto (this machine) or one of "
                                + ", ".join(f"{k} ({v})" for k, v in CPU_CLASSES.items()))
    return target_cpu


@dataclass(frozen=True)
class Int8Recipe:
    """How one runtime quantises for one CPU class."""
    reduce_range: bool  # 7-bit weights (PyTorch X86 inductor, leanvit.deploy.pt2e.x86_quantizer)
    note: str  # what it means, for reports
    unsigned_weights: bool = False  # uint8 weights (ONNX Runtime's U8U8 kernels) instead of int8


_EXACT_EVERYWHERE = "the same int8 graph for every CPU class"
INT8_RECIPES: dict[tuple[str, str], Int8Recipe] = {
    ("onnxruntime", "vnni"): Int8Recipe(False, "uint8 activations x int8 weights, full 8-bit ranges (VNNI kernels)"),
    ("onnxruntime", "no-vnni"): Int8Recipe(False, "uint8 activations x uint8 weights (U8U8): widened to int16 before "
                                           "multiplying, no vpmaddubsw saturation", unsigned_weights=True),
    ("pytorch", "vnni"): Int8Recipe(False, "uint8 activations x int8 weights, full 8-bit ranges (oneDNN VNNI)"),
    ("pytorch", "no-vnni"): Int8Recipe(True, "7-bit weights (reduce_range): exact in vpmaddubsw's int16 sums"),
    ("openvino", "vnni"): Int8Recipe(False, f"NNCF's own overflow handling: {_EXACT_EVERYWHERE}"),
    ("openvino", "no-vnni"): Int8Recipe(False, f"NNCF's own overflow handling: {_EXACT_EVERYWHERE}"),
    ("executorch", "vnni"): Int8Recipe(False, f"XNNPACK widens to int16 before multiplying: {_EXACT_EVERYWHERE}"),
    ("executorch", "no-vnni"): Int8Recipe(False, f"XNNPACK widens to int16 before multiplying: {_EXACT_EVERYWHERE}"),
}


def int8_recipe(runtime: str, cpu_class: str) -> Int8Recipe:
    """The recipe of int8 ``runtime`` (``leanvit quantize --runtime`` name) for ``cpu_class``."""
    try:
        return INT8_RECIPES[(runtime, cpu_class)]
    except KeyError:
        raise InvalidValueError(f"no int8 recipe for runtime {runtime!r} on CPU class {cpu_class!r}") from None


@dataclass(frozen=True)
class Int8Speed:
    """Measured int8 / fp32 throughput ratios of one int8 runtime on one CPU class (> 1: int8 is faster)."""
    runtime: str
    cpu_class: str
    ratios: dict[str, float]  # "model @ batch" -> int8 img/s / fp32 img/s, the same runtime and machine
    machine: str
    source: str

    @property
    def faster(self) -> bool:
        """int8 is faster than fp32 in most measured cases."""
        return sum(r > 1 for r in self.ratios.values()) * 2 > len(self.ratios)

    def slower_cases(self) -> str:
        """The measured cases where int8 is slower, with their ratios."""
        return ", ".join(f"{case} {ratio:.2f}x" for case, ratio in self.ratios.items() if ratio < 1)


# Ratios are leanvit int8 / leanvit fp32 in the same runtime, one thread, interleaved rounds.
INT8_SPEED: tuple[Int8Speed, ...] = (
    # issue 23's table (2-core AMD EPYC, Zen 3: AVX2, no VNNI / AVX-512 / AMX; NNCF transformer preset): the
    # ratios to timm's OpenVINO fp32 of leanvit int8 over leanvit fp32
    Int8Speed("openvino", "no-vnni",
              {"shvit_s1 @ 1": 1.56 / 1.01, "shvit_s1 @ 16": 1.78 / 1.05, "efficientvit_m0 @ 1": 1.05 / 1.18,
               "efficientvit_m0 @ 16": 1.27 / 1.10, "efficientvit_m4 @ 1": 1.27 / 1.07,
               "efficientvit_m4 @ 16": 1.60 / 1.04},
              "2-core AMD EPYC (Zen 3, AVX2)", "issue 23 (OpenVINO, NNCF transformer preset)"),
)


def int8_speed_check(runtime: str, cpu_class: str) -> tuple[str, str]:
    """``(problem, note)`` for running int8 ``runtime`` on ``cpu_class``: a problem (refuse) where int8 was
    measured slower than fp32 there or never measured on a CPU without VNNI; a note where it is faster overall
    but slower in some measured cases. VNNI CPUs run every int8 route natively (docs/deploy.md)."""
    if cpu_class == "vnni":
        return "", ""
    measured = next((s for s in INT8_SPEED if s.runtime == runtime and s.cpu_class == cpu_class), None)
    if measured is None:
        return (f"{runtime} int8 has not been measured against fp32 on a CPU without int8 dot-product instructions "
                f"(AVX512-VNNI, AVX-VNNI or AMX), where int8 kernels can run slower than fp32; use the openvino backend "
                f"({_openvino_measured()})", "")
    where = f"measured on {measured.machine}"
    if not measured.faster:
        return (f"{runtime} int8 ran slower than fp32 on a CPU without VNNI ({where}: {measured.slower_cases()})", "")
    slower = measured.slower_cases()
    return "", (f"{runtime} int8 is slower than fp32 for {slower} ({where})" if slower else "")


def _openvino_measured() -> str:
    openvino = next(s for s in INT8_SPEED if s.runtime == "openvino" and s.cpu_class == "no-vnni")
    return (f"int8 measured at {min(openvino.ratios.values()):.2f}-{max(openvino.ratios.values()):.2f}x fp32's speed "
            f"on {openvino.machine}")
