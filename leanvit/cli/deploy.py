"""``leanvit export``: fused model -> ONNX / OpenVINO IR / TorchScript / ExecuTorch / Core ML, verified against
PyTorch; ``leanvit quantize``: int8 artifacts with their measured accuracy.

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
from .._flags import changed_flags
from ..deploy.options import add_export_flags, export_options_from_args
from ..errors import InvalidValueError

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

    if args.model.endswith(".ckpt") and Path(args.model).is_file():
        return _export_segmentor(args)
    try:
        result = export_model(args.model, args.format, args.output, export_options_from_args(args))
    except ExportVerificationError as e:
        print(json.dumps(e.result.to_dict()) if args.json else e.result.summary())
        raise
    print(json.dumps(result.to_dict()) if args.json else result.summary())
    return 0


# what a segmentation checkpoint's export takes of the export flags (the rest would be silently dropped)
_SEGMENTOR_EXPORT_FIELDS = ("img_size",)


def _export_segmentor(args: argparse.Namespace) -> int:
    from ..dense.seg_predict import export_checkpoint

    if args.format not in ("onnx", "openvino"):
        print(f"leanvit export: error: segmentors export to onnx or openvino, not {args.format}", file=sys.stderr)
        return 2
    ignored = changed_flags(export_options_from_args(args), exclude=_SEGMENTOR_EXPORT_FIELDS)
    if ignored:
        raise InvalidValueError(f"{', '.join(ignored)} do(es) not apply to a segmentation checkpoint: its export is fp32, verified "
                                "at two sizes, with a free image size traced at --img-size (leanvit segment export "
                                "--fixed-size for a fixed one); drop the flag(s)")
    side = args.img_size or 512
    result = export_checkpoint(args.model, args.output, args.format, size=(side, side))  # errors: printed by main()
    print(result.summary())
    return 0


def _register_quantize(subparsers: Any) -> None:
    from ..deploy.names import CALIBRATION_IMAGES, INT8_RUNTIMES

    p = subparsers.add_parser(
        "quantize", help="int8 artifacts for OpenVINO / ONNX Runtime / ExecuTorch / PyTorch with fp32 vs int8 top-1",
        description="Fuse MODEL (+ --checkpoint), calibrate on real images (--calibration: a folder, class "
                    "sub-folders or flat) and write one int8 artifact per runtime to --out. With --val (class "
                    "folders, ImageFolder order) fp32 and int8 top-1 are measured on the same images, with the "
                    "share of changed predictions and McNemar's exact test; results also go to OUT/int8.json.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--checkpoint", type=Path, help="weights to load (a leanvit train checkpoint or published weights)")
    p.add_argument("--calibration", required=True, type=Path, help="folder of calibration images of the task")
    p.add_argument("--val", type=Path, help="labelled validation folder (ROOT/<class>/<image>)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--runtime", nargs="+", default=list(INT8_RUNTIMES), choices=INT8_RUNTIMES,
                   help="runtimes to quantise for (default: all)")
    p.add_argument("--scheme", default="default", choices=("default", "weights"),
                   help="default: every op the quantiser takes; weights: conv / linear only, attention in float")
    p.add_argument("--img-size", type=int, help="input side (default: the model's)")
    p.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES,
                   help=f"calibration images used (default {CALIBRATION_IMAGES}, as leanvit export --precision int8)")
    p.add_argument("--val-images", type=int, help="use the first N validation images (default: all)")
    p.add_argument("--max-drop", type=float, help="top-1 points int8 may lose: exit 1 when a runtime loses more "
                   "on --val; with --tune, also keep the fewest modules in float that meet it on the tuning images")
    p.add_argument("--tune", type=Path, help="labelled tuning folder for the keep-float search (class folders, "
                   "disjoint from --val: e.g. held-out training images); needs --max-drop")
    p.add_argument("--tune-images", type=int, help="use the first N tuning images (default: all)")
    p.add_argument("--eager", action="store_true", help="evaluate the pytorch int8 graph eagerly (no inductor "
                   "compile; reference kernels, close to but not bit-equal to the compiled ones)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_quantize)


def _quantize(args: argparse.Namespace) -> int:
    from ..deploy.int8 import quantize_model

    run = quantize_model(args.model, args.calibration, args.out, runtimes=args.runtime, checkpoint=args.checkpoint,
                         val=args.val, img_size=args.img_size, calibration_images=args.calibration_images,
                         val_images=args.val_images, scheme=args.scheme,
                         max_drop=args.max_drop if args.tune else None, tune=args.tune, tune_images=args.tune_images,
                         compiled=not args.eager)
    for note in run.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.to_dict() for r in run.results]))
    else:
        for r in run.results:
            print(r.summary())
    if args.max_drop is not None and args.val is not None:
        over = [r for r in run.results if r.accuracy and r.accuracy.drop > args.max_drop]
        if over:
            print(f"leanvit quantize: {', '.join(r.artifact.runtime for r in over)} lost more than "
                  f"{args.max_drop} points: try --tune DIR (keep the sensitive modules in float), --scheme weights "
                  "or more calibration images", file=sys.stderr)
            return 1
    return 0
