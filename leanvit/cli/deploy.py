"""``leanvit export``: fused model -> ONNX / OpenVINO IR / TorchScript, verified against PyTorch.

Flags come from :class:`leanvit.deploy.options.ExportOptions`; this module imports no torch until the
command runs.
"""
from __future__ import annotations

import argparse
import json
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
                    "A failed export exits 1 and is kept as OUTPUT.failed.",
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

    try:
        result = export_model(args.model, args.format, args.output, export_options_from_args(args))
    except ExportVerificationError as e:
        print(json.dumps(e.result.to_dict()) if args.json else e.result.summary())
        raise
    print(json.dumps(result.to_dict()) if args.json else result.summary())
    return 0
