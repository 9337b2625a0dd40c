"""Training-step throughput and peak memory: leanvit vs timm's same variant, in the same loop.

Each (model, implementation) runs in its own subprocess so that the peak resident set size
(``ru_maxrss``) belongs to that run alone. The loop is what ``leanvit train`` does per step in fp32:
forward, cross-entropy, backward, AdamW (timm's factory, no decay on 1-D / no_weight_decay tensors).
Runs alternate leanvit/timm for ``--rounds`` rounds; the best throughput per implementation is
reported (the least disturbed by other load), memory is the peak over rounds.

Two memory figures: the process's peak RSS with the default allocator (what ``top`` shows; glibc keeps
freed blocks and moves its mmap threshold, so it varies by +-5% between identical runs), and the
**peak live memory**: the same peak RSS in a separate 2-step run with ``MALLOC_MMAP_THRESHOLD_=65536``,
where every block of 64 KiB or more is returned to the system when freed, so the peak is that of
the tensors alive at once (plus the process baseline), reproducible to a few MB. The memory target
is judged on the live figure.

    python benchmarks/train_throughput.py                       # shvit_s1, efficientvit_m0, batch 64 @224
    python benchmarks/train_throughput.py --models shvit_s1 --batch 32 --threads 2 --out res.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from leanvit.bench.env import environment

_CHILD = r"""
import json, resource, sys, time, torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
torch.manual_seed(0)
if args["impl"] == "leanvit":
    import leanvit
    model = leanvit.create_model(args["model"], num_classes=1000, img_size=args["img_size"])
    model.set_recompute_norm_activations(args["recompute"])
else:
    import timm
    model = timm.create_model(args["model"], num_classes=1000)
from timm.optim import create_optimizer_v2
opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.025)
model.train()
if args["grad_checkpointing"]:
    model.set_grad_checkpointing(True)
fmt = torch.channels_last if args["channels_last"] else torch.contiguous_format
model.to(memory_format=fmt)
b, s = args["batch"], args["img_size"]
x = torch.randn(b, 3, s, s).contiguous(memory_format=fmt)
y = torch.randint(0, 1000, (b,))
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import contextlib
amp = torch.autocast("cpu", dtype=torch.bfloat16) if args["bf16"] else contextlib.nullcontext()
def step():
    with amp:
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        loss = torch.nn.functional.cross_entropy(out, y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
for _ in range(args["warmup"]):
    step()
# One thread: process CPU time is steady on a shared machine, wall time is not (NOTES.md entry 2).
clock = time.process_time if args["threads"] == 1 else time.perf_counter
times = []
for _ in range(args["steps"]):
    t = clock(); step(); times.append(clock() - t)
times.sort()
median = times[len(times) // 2]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(images_per_s=b / median, step_s=median, peak_rss_mb=peak / 1024,
                      rss_before_train_mb=rss_before / 1024, params=sum(p.numel() for p in model.parameters()))))
"""


def _child(payload: dict, **env_extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(payload["threads"]), **env_extra)
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(payload)], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{payload['impl']} {payload['model']} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_one(impl: str, model: str, args: argparse.Namespace) -> dict:
    """One throughput subprocess and one live-memory subprocess."""
    payload = dict(impl=impl, model=model, batch=args.batch, img_size=args.img_size, threads=args.threads,
                   warmup=args.warmup, steps=args.steps, channels_last=args.channels_last, bf16=args.bf16,
                   grad_checkpointing=args.grad_checkpointing, recompute=not args.no_recompute)
    result = _child(payload)
    live = _child(dict(payload, warmup=1, steps=1), MALLOC_MMAP_THRESHOLD_="65536")
    result["peak_live_mb"] = live["peak_rss_mb"]
    return result


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, measure, print a side-by-side table, optionally write JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["shvit_s1", "efficientvit_m0"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (train.amp=bf16)")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute blocks in backward")
    p.add_argument("--no-recompute", action="store_true",
                   help="leanvit: store BN/ReLU outputs instead of rebuilding them in backward (ablation)")
    p.add_argument("--out", help="write the results as JSON")
    args = p.parse_args(argv)

    import timm

    results = {}
    for model in args.models:
        # A family timm has no port of (SepViT) is measured alone: its row has no ratios.
        runs: dict[str, list[dict]] = {impl: [] for impl in ("leanvit", "timm") if impl == "leanvit"
                                       or timm.is_model(model)}
        for _ in range(args.rounds):
            for impl in runs:
                runs[impl].append(run_one(impl, model, args))
        best = {impl: max(r, key=lambda m: m["images_per_s"]) for impl, r in runs.items()}
        peak = {impl: max(m["peak_rss_mb"] for m in r) for impl, r in runs.items()}
        live = {impl: max(m["peak_live_mb"] for m in r) for impl, r in runs.items()}
        results[model] = {impl: dict(best[impl], peak_rss_mb=peak[impl], peak_live_mb=live[impl]) for impl in runs}
        results[model]["all_runs"] = {k: [round(m["images_per_s"], 2) for m in v] for k, v in runs.items()}
        if "timm" in runs:
            # best of the rounds is the headline (least disturbed); the median of the per-round ratios shows the spread
            rounds = [a["images_per_s"] / b["images_per_s"] for a, b in zip(runs["leanvit"], runs["timm"])]
            results[model].update(speedup=best["leanvit"]["images_per_s"] / best["timm"]["images_per_s"],
                                  speedup_median=statistics.median(rounds),
                                  memory_ratio=live["leanvit"] / live["timm"], rss_ratio=peak["leanvit"] / peak["timm"])
    machine = dict(environment(), cores=os.cpu_count(), threads=args.threads,
                   batch=args.batch, img_size=args.img_size, channels_last=args.channels_last, bf16=args.bf16,
                   grad_checkpointing=args.grad_checkpointing, recompute=not args.no_recompute,
                   time=time.strftime("%Y-%m-%d %H:%M"))
    opts = ", ".join(n for n, on in (("bf16 autocast", args.bf16), ("channels_last", args.channels_last),
                                     ("grad checkpointing", args.grad_checkpointing)) if on) or "fp32"
    caps = f" ({', '.join(f'{k}={v}' for k, v in machine['isa_caps'].items())})" if machine["isa_caps"] else ""
    print(f"{machine['device']}{caps}")
    print(f"training step, {opts}, batch {args.batch} @ {args.img_size}, {args.threads} thread(s), "
          f"best of {args.rounds} round(s) x {args.steps} steps (median); 'med.': median of the rounds' ratios")
    print(f"{'model':<18}{'leanvit img/s':>14}{'timm img/s':>12}{'speedup':>9}{'med.':>7}"
          f"{'leanvit live MB':>17}{'timm live MB':>14}{'ratio':>7}{'leanvit RSS MB':>16}{'timm RSS MB':>13}{'ratio':>7}")
    for model, r in results.items():
        lv, tm = r["leanvit"], r.get("timm")
        if tm is None:
            print(f"{model:<18}{lv['images_per_s']:>14.1f}{'-':>12}{'-':>9}{'-':>7}{lv['peak_live_mb']:>17.0f}"
                  f"{'-':>14}{'-':>7}{lv['peak_rss_mb']:>16.0f}{'-':>13}{'-':>7}  (timm has no port of it)")
            continue
        print(f"{model:<18}{lv['images_per_s']:>14.1f}{tm['images_per_s']:>12.1f}{r['speedup']:>8.2f}x{r['speedup_median']:>6.2f}x"
              f"{lv['peak_live_mb']:>17.0f}{tm['peak_live_mb']:>14.0f}{r['memory_ratio']:>6.2f}x"
              f"{lv['peak_rss_mb']:>16.0f}{tm['peak_rss_mb']:>13.0f}{r['rss_ratio']:>6.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(machine=machine, results=results), f, indent=2)


if __name__ == "__main__":
    main()
