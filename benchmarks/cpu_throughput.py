"""leanvit vs timm, same variant, side by side in one run: the papers' CPU protocol.

Fused (BN folded) models, ``torch.set_num_threads(1)``, batch 16, native resolution. For each variant both
libraries run eager and ``torch.jit.trace`` + ``torch.jit.freeze``; the ratio compares leanvit's best path
with timm's best path and with timm traced (the official speed_test.py protocol).

The four paths of a variant are timed in interleaved rounds (A B C D A B C D ...), each reporting the
median of its per-round medians, and with one thread by the process CPU time: on a shared 2-core machine
wall-clock windows taken one after another picked up other jobs' load (a 0.91x for shvit_s1 in one such
run read 1.07x interleaved on the CPU clock; benchmarks/NOTES.md entries 2 and 15).

    python benchmarks/cpu_throughput.py                 # all 10 SHViT / EfficientViT-M variants
    python benchmarks/cpu_throughput.py shvit_s1 --seconds 2 --rounds 5 --markdown out.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import timm
import torch
from timm.utils import reparameterize_model

import leanvit
from leanvit.bench.env import environment
from leanvit.bench.timing import interleaved_medians

DEFAULT_MODELS = [f"shvit_s{i}" for i in range(1, 5)] + [f"efficientvit_m{i}" for i in range(6)]


def runner(model: torch.nn.Module, x: torch.Tensor, backend: str) -> Callable[[], torch.Tensor]:
    """A call of ``model`` on ``x`` with ``backend`` in {'eager', 'jit'} (jit: trace + freeze)."""
    if backend == "jit":
        with torch.no_grad():
            frozen = torch.jit.freeze(torch.jit.trace(model, x))

        def run_jit() -> torch.Tensor:
            with torch.no_grad():
                return frozen(x)
        return run_jit

    def run_eager() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)
    return run_eager


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=2.0, help="timed window per path per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--markdown", help="also write the table as markdown to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # CPU time is steady under other jobs' load but only equals wall time for one thread
    clock = time.process_time if args.threads == 1 else time.perf_counter

    rows = []
    for name in args.models:
        size = leanvit.get_config(name).img_size
        x = torch.randn(args.batch_size, 3, size, size)
        ours = leanvit.fuse(leanvit.create_model(name))
        theirs = reparameterize_model(timm.create_model(name).eval())
        runs = {f"{lib}_{backend}": runner(model, x, backend)
                for lib, model in (("leanvit", ours), ("timm", theirs)) for backend in ("eager", "jit")}
        r: dict = {"model": name, "img_size": size}
        medians = interleaved_medians(runs, rounds=args.rounds, duration_s=args.seconds,
                                      warmup_s=min(2.0, args.seconds), clock=clock)
        r.update({k: args.batch_size / statistics.median(t) for k, t in medians.items()})
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
    md = (f"Images/s, fused, batch {args.batch_size}, {args.threads} thread(s), fp32, {args.rounds} interleaved rounds x "
          f"{args.seconds:g} s ({'CPU' if args.threads == 1 else 'wall'} clock). CPU: {env['device']}; versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
          + "\n\n" + "\n".join(lines) + "\n")
    print("\n" + md)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
