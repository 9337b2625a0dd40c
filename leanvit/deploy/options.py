"""The export's options, declared once: :class:`ExportOptions` is what ``export_model()`` takes and what
the ``leanvit export`` flags are generated from (no torch import here, so ``--help`` is instant)."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .._flags import add_dataclass_flags, dataclass_from_args, option
from .names import CALIBRATION_IMAGES, EXPORT_PRECISIONS

__all__ = ["ExportOptions", "add_export_flags", "export_options_from_args"]


@dataclass(frozen=True)
class ExportOptions:
    """How to export and verify one model (the model, format and output file are ``export_model``'s arguments)."""

    checkpoint: Path | None = option(None, "weights to load before fusing", type=Path)
    img_size: int | None = option(None, "input side (default: the model's native size)", type=int)
    batch_size: int | None = option(None, "traced batch (default 1; 2 with --dynamo --dynamic-batch)", type=int)
    dynamic_batch: bool = option(False, "leave the batch dimension dynamic")
    precision: str | None = option(None, "precision of the artifact (default: the format's first in "
                                   "FORMAT_PRECISIONS: fp16 for coreml, fp32 otherwise; int8 needs --calibration)",
                                   choices=EXPORT_PRECISIONS)
    calibration: Path | None = option(None, "int8: folder of calibration images (class folders or flat; "
                                      "real images of the task, not noise)", type=Path)
    calibration_images: int = option(CALIBRATION_IMAGES, "int8: calibration images used", type=int)
    dynamo: bool = option(False, "ONNX: torch.export-based exporter (default: TorchScript-based, opset 17)")
    opset: int | None = option(None, "ONNX opset (default: 17 legacy, exporter default dynamo)", type=int)
    verify: bool = option(True, "skip the check against PyTorch", flag="--no-verify")
    threads: int | None = option(1, "torch and runtime threads for the export and its verification", type=int)
    seed: int = option(0, "seed of the traced example and the verification images", type=int)

    def replace(self, **changes: Any) -> "ExportOptions":
        """A copy with ``changes`` applied (unknown names raise TypeError)."""
        return dataclasses.replace(self, **changes)


def add_export_flags(parser: argparse.ArgumentParser, exclude: Sequence[str] = (), **defaults: Any) -> None:
    """Add one flag per :class:`ExportOptions` field; ``defaults`` override the dataclass defaults."""
    add_dataclass_flags(parser, ExportOptions, exclude, **defaults)


def export_options_from_args(args: argparse.Namespace) -> ExportOptions:
    """The :class:`ExportOptions` an argparse namespace (from :func:`add_export_flags`) describes."""
    return dataclass_from_args(ExportOptions, args)
