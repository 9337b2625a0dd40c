"""leanvit vs timm, same variant, side by side in one run: the papers' CPU protocol.

Fused (BN folded) models, ``torch.set_num_threads(1)``, batch 16, native resolution, warm-up then the
median over a timed window (>= 5 s by default). For each variant both libraries run eager and
``torch.jit.trace``; the ratio compares leanvit's best path with timm's best path and with timm traced
(the official speed_test.py protocol).

    python benchmarks/cpu_throughput.py                 # all 10 SHViT / EfficientViT-M variants
    python benchmarks/cpu_throughput.py shvit_s1 --seconds 2 --markdown out.md
"""
from __future__ import annotations

import argparse
import sys

import timm
import torch
from timm.utils import reparameterize_model

import leanvit
from leanvit.bench.env import environment
from leanvit.bench.timing import measure

DEFAULT_MODELS = [f"shvit_s{i}" for i in range(1, 5)] + [f"efficientvit_m{i}" for i in range(6)]


def throughput(model: torch.nn.Module, x: torch.Tensor, backend: str, seconds: float) -> float:
    """Median images/s of ``model`` on ``x`` with ``backend`` in {'eager', 'jit'}."""
    with torch.inference_mode() if backend == "eager" else torch.no_grad():
        run = torch.jit.freeze(torch.jit.trace(model, x)) if backend == "jit" else model
        stats = measure(lambda: run(x), warmup_s=min(2.0, seconds / 2), duration_s=seconds)
    return x.shape[0] / stats.median_s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0, help="timed window per measurement")
    p.add_argument("--markdown", help="also write the table as markdown to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    for name in args.models:
        size = leanvit.get_config(name).img_size
        x = torch.randn(args.batch_size, 3, size, size)
        ours = leanvit.fuse(leanvit.create_model(name))
        theirs = reparameterize_model(timm.create_model(name).eval())
        r = {"model": name, "img_size": size}
        for lib, model in (("leanvit", ours), ("timm", theirs)):
            for backend in ("eager", "jit"):
                r[f"{lib}_{backend}"] = throughput(model, x, backend, args.seconds)
        r["ratio_best"] = max(r["leanvit_eager"], r["leanvit_jit"]) / max(r["timm_eager"], r["timm_jit"])
        r["ratio_vs_timm_jit"] = max(r["leanvit_eager"], r["leanvit_jit"]) / r["timm_jit"]
        rows.append(r)
        print(f"{name:16s} " + "  ".join(f"{k}={v:.1f}" for k, v in r.items() if isinstance(v, float)), flush=True)

    env = environment("cpu")
    head = ("| model | res | leanvit eager | leanvit jit | timm eager | timm jit | best/best | leanvit best / timm jit |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = [head] + [
        f"| {r['model']} | {r['img_size']} | {r['leanvit_eager']:.1f} | {r['leanvit_jit']:.1f} | {r['timm_eager']:.1f} "
        f"| {r['timm_jit']:.1f} | {r['ratio_best']:.2f}x | {r['ratio_vs_timm_jit']:.2f}x |" for r in rows
    ]
    md = (f"Images/s, fused, batch {args.batch_size}, {args.threads} thread(s), fp32, median of a {args.seconds:.0f} s "
          f"window. CPU: {env['device']}; versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
          + "\n\n" + "\n".join(lines) + "\n")
    print("\n" + md)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
