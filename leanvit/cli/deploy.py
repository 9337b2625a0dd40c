"""``leanvit export``: fused model -> ONNX / OpenVINO IR / TorchScript, verified against PyTorch."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..deploy.export import FORMATS, ExportVerificationError, export_model

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``export`` sub-command."""
    p = subparsers.add_parser(
        "export", help="export a fused model to ONNX / OpenVINO / TorchScript and verify it",
        description="Fuse MODEL (leanvit or timm name; timm: prefix for timm's port), export it, run the artifact "
                    "on random input and compare with PyTorch (fp32: max abs diff <= 1e-4; bf16: max relative "
                    "logit error <= 2e-2). A failed export exits 1 and is kept as OUTPUT.failed.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--format", required=True, choices=tuple(FORMATS))
    p.add_argument("--output", required=True, type=Path,
                   help="file: .onnx, .xml (OpenVINO; weights go to the .bin beside it) or .pt (TorchScript)")
    p.add_argument("--checkpoint", type=Path, default=None, help="weights to load before fusing")
    p.add_argument("--img-size", type=int, default=None, help="input side (default: the model's native size)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="traced batch (default 1; 2 with --dynamo --dynamic-batch)")
    p.add_argument("--dynamic-batch", action="store_true", help="leave the batch dimension dynamic")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--dynamo", action="store_true",
                   help="ONNX: torch.export-based exporter (default: TorchScript-based, opset 17)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 17 legacy, exporter default dynamo)")
    p.add_argument("--threads", type=int, default=1, help="runtime threads for the verification run")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the check against PyTorch")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    try:
        result = export_model(
            args.model, args.format, args.output, checkpoint=args.checkpoint, img_size=args.img_size,
            batch_size=args.batch_size, dynamic_batch=args.dynamic_batch, precision=args.precision,
            dynamo=args.dynamo, opset=args.opset, verify=args.verify, threads=args.threads,
        )
    except ExportVerificationError as e:
        print(json.dumps(e.result.to_dict()) if args.json else e.result.summary())
        raise
    print(json.dumps(result.to_dict()) if args.json else result.summary())
    return 0
