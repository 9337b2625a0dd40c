"""The deploy commands' options, declared once: :class:`ExportOptions` is what ``export_model()`` takes and
what the ``leanvit export`` flags are generated from; :class:`QuantizeOptions` the ``leanvit quantize`` flags
(no torch import here, so ``--help`` is instant)."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .._flags import add_dataclass_flags, changed_flags, dataclass_from_args, flag_name, option
from ..errors import InvalidValueError
from .int8_policy import CPU_CLASSES
from .routes import CALIBRATION_IMAGES, DENSE_EXPORT_OPTIONS, INT8_RUNTIMES, PRECISIONS, SCHEMES, Route

__all__ = ["ExportOptions", "QuantizeOptions", "add_export_flags", "export_options_from_args", "check_route_options"]


@dataclass(frozen=True)
class ExportOptions:
    """How to export and verify one model (the model, format and output file are ``export_model``'s arguments)."""

    checkpoint: Path | None = option(None, "weights to load before fusing", type=Path)
    img_size: int | None = option(None, "input side (default: the size --checkpoint was trained at, else the model's "
                                  "native size)", type=int)
    batch_size: int | None = option(None, "traced batch (default 1; 2 with --dynamo --dynamic-batch)", type=int)
    dynamic_batch: bool = option(False, "leave the batch dimension dynamic")
    precision: str | None = option(None, "precision of the artifact (default: the format's first in "
                                   "route's precisions in leanvit.deploy.routes: fp16 for coreml, fp32 otherwise; int8 "
                                   "needs --calibration)", choices=PRECISIONS)
    calibration: Path | None = option(None, "int8: folder of calibration images (class folders or flat; "
                                      "real images of the task, not noise)", type=Path)
    calibration_images: int = option(CALIBRATION_IMAGES, "int8: calibration images used", type=int)
    target_cpu: str = option("auto", "int8: CPU class the artifact will run on (as leanvit quantize --target-cpu): "
                             "vnni or no-vnni; auto: this machine's", choices=("auto", *CPU_CLASSES))
    dynamo: bool = option(False, "ONNX: torch.export-based exporter (default: TorchScript-based, opset 17)")
    opset: int | None = option(None, "ONNX opset (default: 17 legacy, exporter default dynamo)", type=int)
    verify: bool = option(True, "skip the check against PyTorch", flag="--no-verify")
    threads: int | None = option(1, "torch and runtime threads for the export and its verification", type=int)
    seed: int = option(0, "seed of the traced example and the verification images", type=int)

    def replace(self, **changes: Any) -> "ExportOptions":
        """A copy with ``changes`` applied (unknown names raise TypeError)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class QuantizeOptions:
    """What ``leanvit quantize`` makes and measures (the model is its positional argument); the flags are
    generated from these fields (:func:`leanvit._flags.add_dataclass_flags`)."""

    checkpoint: Path | None = option(None, "weights to load (a leanvit train checkpoint or published weights)",
                                     type=Path)
    calibration: Path | None = option(None, "folder of calibration images of the task", type=Path, required=True)
    val: Path | None = option(None, "labelled validation folder (ROOT/<class>/<image>)", type=Path)
    out: Path | None = option(None, "output folder", type=Path, required=True)
    runtime: tuple[str, ...] = option(INT8_RUNTIMES, "runtimes to quantise for (default: all)", nargs="+",
                                      choices=INT8_RUNTIMES)
    scheme: str = option("default", "default: every op the quantiser takes; weights: conv / linear only (ONNX "
                         "Runtime: conv only, its classifier in float), attention in float", choices=SCHEMES)
    img_size: int | None = option(None, "input side (default: the size the checkpoint was trained at, else the "
                                  "model's)", type=int)
    target_cpu: str = option("auto", "CPU class the int8 artifacts will run on: vnni (AVX512-VNNI / AVX-VNNI / AMX) "
                             "or no-vnni (AVX2, AVX-512 without VNNI: 7-bit operands for ONNX Runtime and PyTorch); "
                             "auto: this machine's", choices=("auto", *CPU_CLASSES))
    calibration_images: int = option(CALIBRATION_IMAGES, f"calibration images used (default {CALIBRATION_IMAGES}, as "
                                     "leanvit export --precision int8)", type=int)
    val_images: int | None = option(None, "use the first N validation images (default: all)", type=int)
    max_drop: float | None = option(None, "top-1 points int8 may lose: exit 1 when a runtime loses more on --val; "
                                    "with --tune, also keep the fewest modules in float that meet it on the tuning "
                                    "images", type=float)
    tune: Path | None = option(None, "labelled tuning folder for the keep-float search (class folders, disjoint from "
                               "--val: e.g. held-out training images); needs --max-drop", type=Path)
    tune_images: int | None = option(None, "use the first N tuning images (default: all)", type=int)
    eager: bool = option(False, "evaluate the pytorch int8 graph eagerly (no inductor compile; reference kernels, "
                         "close to but not bit-equal to the compiled ones)")


def add_export_flags(parser: argparse.ArgumentParser, exclude: Sequence[str] = (), **defaults: Any) -> None:
    """Add one flag per :class:`ExportOptions` field; ``defaults`` override the dataclass defaults."""
    add_dataclass_flags(parser, ExportOptions, exclude, **defaults)


def export_options_from_args(args: argparse.Namespace) -> ExportOptions:
    """The :class:`ExportOptions` an argparse namespace (from :func:`add_export_flags`) describes."""
    return dataclass_from_args(ExportOptions, args)


def check_route_options(options: ExportOptions, route: Route, *, dense: bool = False) -> None:
    """Refuse every option set away from its default that does not apply to an export through ``route``
    (:attr:`Route.export_options`; ``dense``: a segmentation checkpoint's export, which takes
    :data:`~leanvit.deploy.routes.DENSE_EXPORT_OPTIONS`), naming the flags and the route."""
    allowed = DENSE_EXPORT_OPTIONS if dense else route.export_options
    refused = changed_flags(options, exclude=allowed)
    if refused:
        what = f"a segmentation checkpoint ({route.format} export;" if dense else f"the {route.format} export route ("
        takes = ", ".join(flag_name(f) for f in dataclasses.fields(ExportOptions) if f.name in allowed)
        raise InvalidValueError(f"{', '.join(refused)} do(es) not apply to {what} it takes {takes}); drop the flag(s)")
