"""SepViT-T vs timm's Swin-T: CPU fp32 inference throughput, side by side in one run.

The two models are timed in alternating rounds (A, B, A, B, ...) so that load from other processes on
a shared machine hits both alike; the median round is reported, with the ratio SepViT / Swin.

    python benchmarks/sepvit_vs_swin.py --batch 16 --threads 2 --markdown out/sepvit_vs_swin.md
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import timm
import torch

import leanvit
from leanvit._io import atomic_write


def cpu_name() -> str:
    """The CPU model string (Linux /proc/cpuinfo, else platform)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


@torch.inference_mode()
def time_round(model: torch.nn.Module, x: torch.Tensor, iters: int) -> float:
    """Images per second over ``iters`` forwards."""
    start = time.perf_counter()
    for _ in range(iters):
        model(x)
    return iters * x.shape[0] / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sepvit", default="sepvit_t", help="leanvit SepViT variant")
    p.add_argument("--swin", default="swin_tiny_patch4_window7_224", help="timm Swin model")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=2, help="untimed forwards per model")
    p.add_argument("--rounds", type=int, default=7, help="alternating timed rounds per model")
    p.add_argument("--iters", type=int, default=2, help="forwards per round")
    p.add_argument("--markdown", type=Path, default=None, help="also write the result as a markdown snippet")
    args = p.parse_args(argv)
    if args.batch < 1 or args.threads < 1 or args.rounds < 1 or args.iters < 1:
        p.error("--batch, --threads, --rounds and --iters must be >= 1")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {
        args.sepvit: leanvit.fuse(leanvit.create_model(args.sepvit, img_size=args.img_size)),
        args.swin: timm.create_model(args.swin, pretrained=False, img_size=args.img_size).eval(),
    }
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    for model in models.values():
        time_round(model, x, args.warmup)
    results: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            results[name].append(time_round(model, x, args.iters))
    med = {name: statistics.median(v) for name, v in results.items()}
    ratio = med[args.sepvit] / med[args.swin]

    lines = [
        f"CPU inference throughput, fp32, batch {args.batch}, {args.threads} threads, {args.img_size}x{args.img_size}, "
        f"median of {args.rounds} alternating rounds x {args.iters} forwards",
        "",
        "| model | img/s (median) | min-max | params (M) |",
        "|---|---|---|---|",
    ]
    for name, model in models.items():
        params = sum(t.numel() for t in model.parameters()) / 1e6
        lines.append(f"| {name} | {med[name]:.1f} | {min(results[name]):.1f}-{max(results[name]):.1f} | {params:.2f} |")
    lines += [
        "",
        f"**{args.sepvit} / {args.swin} throughput ratio: {ratio:.2f}x**",
        "",
        f"Machine: {cpu_name()}, {torch.get_num_threads()} threads; Python {platform.python_version()}, "
        f"torch {torch.__version__}, timm {timm.__version__}, leanvit {leanvit.__version__}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown is not None:
        atomic_write(args.markdown, lambda tmp: Path(tmp).write_text(text))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
