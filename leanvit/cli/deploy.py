"""``leanvit export``: fused model -> ONNX / OpenVINO IR / TorchScript / ExecuTorch / Core ML, verified against
PyTorch; ``leanvit quantize``: int8 artifacts with their measured accuracy.

Flags come from :class:`leanvit.deploy.options.ExportOptions` and :class:`~leanvit.deploy.options.QuantizeOptions`,
choices from the route table (:mod:`leanvit.deploy.routes`); this module imports no torch until the command runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .._flags import add_dataclass_flags, dataclass_from_args
from ..deploy.options import QuantizeOptions, add_export_flags, check_route_options, export_options_from_args
from ..deploy.routes import DENSE_FORMATS, FORMATS, format_route

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``export`` and ``quantize`` sub-commands."""
    _register_quantize(subparsers)
    p = subparsers.add_parser(
        "export", help="export a fused model to ONNX / OpenVINO / TorchScript / ExecuTorch / Core ML and verify it",
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
                   help="file: .onnx, .xml (OpenVINO; weights go to the .bin beside it), .pt (TorchScript), "
                        ".pte (ExecuTorch) or .mlpackage (Core ML)")
    add_export_flags(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from ..deploy.export import ExportVerificationError, export_model

    options = export_options_from_args(args)
    try:
        if args.model.endswith(".ckpt") and Path(args.model).is_file():
            if args.format not in DENSE_FORMATS:
                print(f"leanvit export: error: segmentors export to {' or '.join(DENSE_FORMATS)}, not {args.format}",
                      file=sys.stderr)
                return 2
            check_route_options(options, format_route(args.format), dense=True)  # before the checkpoint is read
            from ..dense.seg_predict import export_checkpoint

            side = args.img_size or 512
            result = export_checkpoint(args.model, args.output, args.format, size=(side, side))
        else:
            result = export_model(args.model, args.format, args.output, options)
    except ExportVerificationError as e:
        print(json.dumps(e.result.to_dict()) if args.json else e.result.summary())
        raise
    print(json.dumps(result.to_dict()) if args.json else result.summary())
    return 0


def _register_quantize(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "quantize", help="int8 artifacts for OpenVINO / ONNX Runtime / ExecuTorch / PyTorch with fp32 vs int8 top-1",
        description="Fuse MODEL (+ --checkpoint), calibrate on real images (--calibration: a folder, class "
                    "sub-folders or flat) and write one int8 artifact per runtime to --out. With --val (class "
                    "folders, ImageFolder order) fp32 and int8 top-1 are measured on the same images, with the "
                    "share of changed predictions and McNemar's exact test; results also go to OUT/int8.json.",
    )
    p.add_argument("model", metavar="MODEL")
    add_dataclass_flags(p, QuantizeOptions)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_quantize)


def _quantize(args: argparse.Namespace) -> int:
    from ..deploy.int8 import quantize_model

    o = dataclass_from_args(QuantizeOptions, args)
    run = quantize_model(args.model, o.calibration, o.out, runtimes=o.runtime, checkpoint=o.checkpoint, val=o.val,
                         img_size=o.img_size, calibration_images=o.calibration_images, val_images=o.val_images,
                         scheme=o.scheme, max_drop=o.max_drop if o.tune else None, tune=o.tune,
                         tune_images=o.tune_images, compiled=not o.eager, target_cpu=o.target_cpu)
    for note in run.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.to_dict() for r in run.results]))
    else:
        for r in run.results:
            print(r.summary())
    if o.max_drop is not None and o.val is not None:
        over = [r for r in run.results if r.accuracy and r.accuracy.drop > o.max_drop]
        if over:
            print(f"leanvit quantize: {', '.join(r.artifact.runtime for r in over)} lost more than "
                  f"{o.max_drop} points: try --tune DIR (keep the sensitive modules in float), --scheme weights "
                  "or more calibration images", file=sys.stderr)
            return 1
    return 0
