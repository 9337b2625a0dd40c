"""int8 speed on this CPU, in one run: leanvit's int8 artifacts vs timm's fused model in OpenVINO at its
default precision (the reference of the deploy issue), batch 16 and batch 1, 1 thread, native resolution.

Paths per model (fused for their runtime, ``signal_weights_``; int8 calibrated on 32 ``signal_images``:
right for timing, not for accuracy, which benchmarks/int8_protocol.py measures on real digits):

* timm openvino default: timm's fused model, OpenVINO's default INFERENCE_PRECISION_HINT (bf16 here);
* leanvit openvino bf16: ``fuse(target="openvino")`` in OpenVINO bf16 (the fastest exact route);
* leanvit int8 openvino (NNCF), int8 onnxruntime (QDQ), int8 pytorch (PT2E X86 inductor quantizer, compiled by
  inductor with freezing: ~1 min per model and batch) and, with ``--executorch``, int8 / fp32 ExecuTorch.

Interleaved rounds on the process CPU clock; each path reports the median of its per-round medians.

    python benchmarks/int8_speed.py                       # SHViT-S1..S4, EfficientViT-M0..M5
    python benchmarks/int8_speed.py shvit_s1 efficientvit_m0 --executorch --rounds 3 --markdown out.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from leanvit.bench.env import environment
from leanvit.bench.timing import interleaved_medians
from leanvit.deploy.routes import int8_route, target_for
from leanvit.deploy.quantize import quantize_for
from leanvit.deploy.runtime import ExecuTorchRuntime, OpenVinoRuntime, Runtime
from leanvit.deploy.mobile import export_executorch
from leanvit.models import create_model, signal_images, signal_weights_
from leanvit.zoo import fuse_model, resolve_model

DEFAULT_MODELS = ["shvit_s1", "shvit_s2", "shvit_s3", "shvit_s4", "efficientvit_m0", "efficientvit_m1",
                  "efficientvit_m2", "efficientvit_m3", "efficientvit_m4", "efficientvit_m5"]


def _paths(name: str, batch: int, tmp: Path, executorch: bool) -> dict[str, Runtime]:
    lean_spec, timm_spec = resolve_model(f"leanvit:{name}"), resolve_model(f"timm:{name}")
    side = lean_spec.img_size
    x = signal_images(batch, side, seed=0)
    calib = signal_images(32, side, seed=2)
    raw = signal_weights_(create_model(lean_spec.ref, img_size=side).eval(), seed=0)
    timm_fused = fuse_model(signal_weights_(create_model(timm_spec.ref, img_size=side).eval(), seed=0))
    paths: dict[str, Runtime] = {"timm openvino default": OpenVinoRuntime(timm_fused, example=x, precision=None)}
    paths["leanvit openvino bf16"] = OpenVinoRuntime(fuse_model(raw, target="openvino"), example=x, precision="bf16")
    runtimes = ["openvino", "onnxruntime", "pytorch"] + (["executorch"] if executorch else [])
    for rt in runtimes:
        fused = fuse_model(raw, target=target_for(rt))
        art = quantize_for(rt, fused, x, calib, tmp / f"{name}_{batch}{int8_route(rt).int8_suffix}")
        paths[f"leanvit int8 {rt}"] = art.open(1, batch_size=batch)
    if executorch:
        pte = tmp / f"{name}_{batch}_fp32.pte"
        export_executorch(fuse_model(raw, target="executorch"), x, pte)
        paths["leanvit executorch fp32"] = ExecuTorchRuntime(pte)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--executorch", action="store_true", help="also int8 / fp32 ExecuTorch (~1 min lowering each)")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="leanvit-int8-speed-") as tmpdir:
        for name in args.models:
            for batch in (16, 1):
                t0 = time.time()
                paths = _paths(name, batch, Path(tmpdir), args.executorch)
                xs = {k: rt.prepare(signal_images(batch, resolve_model(name).img_size, seed=0)) for k, rt in paths.items()}
                calls = {k: (lambda rt=rt, x=xs[k]: rt.run(x)) for k, rt in paths.items()}
                medians = interleaved_medians(calls, rounds=args.rounds, duration_s=args.seconds, clock=time.process_time)
                ref = batch / statistics.median(medians["timm openvino default"])
                for k, m in medians.items():
                    ips = batch / statistics.median(m)
                    rows.append(dict(model=name, batch=batch, path=k, images_per_s=ips, latency_ms=1e3 * statistics.median(m),
                                     vs_timm_openvino=ips / ref))
                print(f"{name} batch {batch}: " + ", ".join(f"{r['path']} {r['images_per_s']:.0f}/s "
                      f"({r['vs_timm_openvino']:.2f}x)" for r in rows if r["model"] == name and r["batch"] == batch)
                      + f"  [{time.time() - t0:.0f} s]", flush=True)
    env = environment("cpu")
    lines = [f"Machine: {env['cpu']}; {env['versions']}", "",
             "| model | batch | path | img/s | ms | vs timm OpenVINO default |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['path']} | {r['images_per_s']:.0f} | {r['latency_ms']:.2f} | "
              f"{r['vs_timm_openvino']:.2f}x |" for r in rows]
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps(dict(rows=rows, env=env), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
