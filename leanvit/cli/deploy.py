"""``leanvit export``: fused model -> ONNX / OpenVINO IR / TorchScript, verified against PyTorch.

Flags come from :class:`leanvit.deploy.options.ExportOptions`; this module imports no torch until the
command runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..deploy.names import FORMATS
from ..deploy.options import add_export_flags, export_options_from_args

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``export`` sub-command."""
    p = subparsers.add_parser(
        "export", help="export a fused model to ONNX / OpenVINO / TorchScript and verify it",
        description="Fuse MODEL (leanvit or timm name; timm: prefix for timm's port), export it, run the artifact "
                    "on test images and compare with PyTorch (fp32: a bound on the max abs difference; bf16: a "
                    "bound on the max error relative to the logits' spread across the images; both report "
                    "top-1 agreement). "
                    "A failed export exits 1 and is kept as OUTPUT.failed. MODEL may also be a segmentation "
                    "checkpoint (RUN/best.ckpt of leanvit segment train): exported with a free image size at "
                    "--img-size (default 512), as leanvit segment export does.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--format", required=True, choices=tuple(FORMATS))
    p.add_argument("--output", required=True, type=Path,
                   help="file: .onnx, .xml (OpenVINO; weights go to the .bin beside it) or .pt (TorchScript)")
    add_export_flags(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from ..deploy.export import ExportVerificationError, export_model

    if args.model.endswith(".ckpt") and Path(args.model).is_file():
        return _export_segmentor(args)
    try:
        result = export_model(args.model, args.format, args.output, export_options_from_args(args))
    except ExportVerificationError as e:
        print(json.dumps(e.result.to_dict()) if args.json else e.result.summary())
        raise
    print(json.dumps(result.to_dict()) if args.json else result.summary())
    return 0


def _export_segmentor(args: argparse.Namespace) -> int:
    from ..dense.seg_export import SegExportError
    from ..dense.seg_predict import export_checkpoint

    if args.format not in ("onnx", "openvino"):
        print(f"leanvit export: error: segmentors export to onnx or openvino, not {args.format}", file=sys.stderr)
        return 2
    side = args.img_size or 512
    try:
        result = export_checkpoint(args.model, args.output, args.format, size=(side, side))
    except SegExportError as e:
        print(f"leanvit export: error: {e}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0
