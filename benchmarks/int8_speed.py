"""int8 speed on this CPU, in one run: leanvit's int8 artifacts vs timm's fused model in OpenVINO at its
default precision (the reference of the deploy issue), in fp32, and through the same NNCF + OpenVINO int8
route as leanvit's (issue #23's int8 target), batch 16 and batch 1, 1 thread, native resolution.

Paths per model (fused for their runtime, ``signal_weights_``; int8 calibrated on 32 ``signal_images``:
right for timing, not for accuracy, which benchmarks/int8_protocol.py measures on real digits):

* timm openvino default: timm's fused model, OpenVINO's default INFERENCE_PRECISION_HINT (bf16 on CPUs with
  AVX512-BF16 or AMX, fp32 on AVX2 ones);
* timm openvino fp32: the same model with the fp32 hint;
* timm int8 openvino: timm's fused model through leanvit's OpenVINO int8 route (``quantize_for``: the same
  NNCF settings, calibration images and runtime options as leanvit's);
* every OpenVINO path is compiled for the batch it runs, as the float paths are converted at the example's
  shape: ``QuantizedArtifact.open`` compiles the int8 IRs (written with a dynamic batch) at each batch size
  they are called with (``OpenVinoRuntime``; dynamic shapes cost leanvit's EfficientViT-M4 18 % at batch 16
  and 41 % at batch 1, timm's ~5 % at 16: benchmarks/NOTES.md entry 17);
* leanvit openvino bf16: ``fuse(target="openvino")`` in OpenVINO bf16 (the fastest exact route);
* leanvit int8 openvino (NNCF), int8 onnxruntime (QDQ), int8 pytorch (PT2E X86 inductor quantizer, compiled by
  inductor with freezing: ~1 min per model and batch) and, with ``--executorch``, int8 / fp32 ExecuTorch.

Interleaved rounds on the process CPU clock; each path reports the median of its per-round medians, and
its ratio to timm's OpenVINO default, fp32 and int8 paths of the same run.

    python benchmarks/int8_speed.py                       # SHViT-S1..S4, EfficientViT-M0..M5
    python benchmarks/int8_speed.py shvit_s1 efficientvit_m0 --executorch --rounds 3 --markdown out.md
    python benchmarks/int8_speed.py shvit_s1 efficientvit_m4 --runtimes openvino   # OpenVINO only (#23's target)
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
from leanvit.deploy.quantize import QuantizedArtifact, quantize_for
from leanvit.deploy.runtime import ExecuTorchRuntime, OpenVinoRuntime, Runtime
from leanvit.deploy.mobile import export_executorch
from leanvit.models import create_model, signal_images, signal_weights_
from leanvit.zoo import fuse_model, resolve_model

DEFAULT_MODELS = ["shvit_s1", "shvit_s2", "shvit_s3", "shvit_s4", "efficientvit_m0", "efficientvit_m1",
                  "efficientvit_m2", "efficientvit_m3", "efficientvit_m4", "efficientvit_m5"]


INT8_RUNTIMES = ("openvino", "onnxruntime", "pytorch")
REFERENCES = {"vs_timm_openvino": "timm openvino default", "vs_timm_fp32": "timm openvino fp32",
              "vs_timm_int8": "timm int8 openvino"}  # ratio column -> the timm path it divides by


_DYNAMIC_BATCH = ("openvino", "onnxruntime")  # int8 files written with a dynamic batch: quantised once per model


def _quantized(who: str, runtime: str, fused: torch.nn.Module, x: torch.Tensor, calib: torch.Tensor, tmp: Path,
               name: str, cache: dict[tuple[str, str, str], QuantizedArtifact]) -> QuantizedArtifact:
    """``quantize_for`` once per model for the dynamic-batch runtimes, per batch for the others."""
    key = (who, name, runtime if runtime in _DYNAMIC_BATCH else f"{runtime}_{len(x)}")
    if key not in cache:
        path = tmp / f"{who}_{key[1]}_{key[2]}{int8_route(runtime).int8_suffix}"
        cache[key] = quantize_for(runtime, fused, x, calib, path)
    return cache[key]


def _paths(name: str, batch: int, tmp: Path, runtimes: tuple[str, ...], executorch: bool,
           cache: dict[tuple[str, str, str], QuantizedArtifact]) -> dict[str, Runtime]:
    lean_spec, timm_spec = resolve_model(f"leanvit:{name}"), resolve_model(f"timm:{name}")
    side = lean_spec.img_size
    x = signal_images(batch, side, seed=0)
    calib = signal_images(32, side, seed=2)
    raw = signal_weights_(create_model(lean_spec.ref, img_size=side).eval(), seed=0)
    timm_fused = fuse_model(signal_weights_(create_model(timm_spec.ref, img_size=side).eval(), seed=0))
    paths: dict[str, Runtime] = {"timm openvino default": OpenVinoRuntime(timm_fused, example=x, precision=None),
                                 "timm openvino fp32": OpenVinoRuntime(timm_fused, example=x, precision="fp32")}
    timm_int8 = _quantized("timm", "openvino", timm_fused, x, calib, tmp, name, cache)
    paths["timm int8 openvino"] = timm_int8.open(1, batch_size=batch)
    paths["leanvit openvino bf16"] = OpenVinoRuntime(fuse_model(raw, target="openvino"), example=x, precision="bf16")
    for rt in (*runtimes, *(["executorch"] if executorch else [])):
        fused = fuse_model(raw, target=target_for(rt))
        art = _quantized("leanvit", rt, fused, x, calib, tmp, name, cache)
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
    p.add_argument("--runtimes", nargs="+", choices=INT8_RUNTIMES, default=list(INT8_RUNTIMES),
                   help="leanvit's int8 routes to time (pytorch: ~1 min inductor compile per model and batch)")
    p.add_argument("--executorch", action="store_true", help="also int8 / fp32 ExecuTorch (~1 min lowering each)")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    cache: dict[tuple[str, str, str], QuantizedArtifact] = {}
    with tempfile.TemporaryDirectory(prefix="leanvit-int8-speed-") as tmpdir:
        for name in args.models:
            for batch in (16, 1):
                t0 = time.time()
                paths = _paths(name, batch, Path(tmpdir), tuple(args.runtimes), args.executorch, cache)
                xs = {k: rt.prepare(signal_images(batch, resolve_model(name).img_size, seed=0)) for k, rt in paths.items()}
                calls = {k: (lambda rt=rt, x=xs[k]: rt.run(x)) for k, rt in paths.items()}
                medians = interleaved_medians(calls, rounds=args.rounds, duration_s=args.seconds, clock=time.process_time)
                refs = {col: batch / statistics.median(medians[path]) for col, path in REFERENCES.items()}
                for k, m in medians.items():
                    ips = batch / statistics.median(m)
                    rows.append(dict(model=name, batch=batch, path=k, images_per_s=ips, latency_ms=1e3 * statistics.median(m),
                                     round_images_per_s=[batch / r for r in m],
                                     **{col: ips / ref for col, ref in refs.items()}))
                print(f"{name} batch {batch}: " + ", ".join(f"{r['path']} {r['images_per_s']:.0f}/s "
                      f"({r['vs_timm_openvino']:.2f}x default, {r['vs_timm_int8']:.2f}x timm int8)"
                      for r in rows if r["model"] == name and r["batch"] == batch)
                      + f"  [{time.time() - t0:.0f} s]", flush=True)
    env = environment("cpu")
    lines = [f"Machine: {env['cpu']}; {env['versions']}", "",
             "| model | batch | path | img/s | ms | vs timm OpenVINO default | vs timm OpenVINO fp32 | vs timm int8 OpenVINO |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['path']} | {r['images_per_s']:.0f} | {r['latency_ms']:.2f} | "
              f"{r['vs_timm_openvino']:.2f}x | {r['vs_timm_fp32']:.2f}x | {r['vs_timm_int8']:.2f}x |" for r in rows]
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps(dict(rows=rows, env=env), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
