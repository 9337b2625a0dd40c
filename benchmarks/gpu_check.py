"""What a GPU user is promised, measured in one command (planned for under 8 minutes on one H100).

1. **throughput**: batch 256, AMP fp16, fused, eager PyTorch: leanvit vs timm's port of the same variant, every
   path of a model timed in interleaved rounds (``leanvit bench --rounds``).
2. **compile**: the same with ``torch.compile`` (the set-up compiles; only the compiled calls are timed).
3. **train**: one training step (forward, cross-entropy, backward, AdamW; AMP fp16 with a GradScaler), batch 256:
   steps/s and the CUDA allocator's peak, leanvit vs timm in the same loop (``leanvit bench --mode train``).
4. **ddp**: the training step under ``DistributedDataParallel`` on every GPU found (NCCL, leanvit's own
   ``init_distributed``), images/s in total and per GPU against the single-GPU step; one GPU: not run (DDP needs two).
5. **export**: one model exported to ONNX in fp16 and bf16 (``leanvit.deploy.writers.export_onnx`` on the fused model
   cast to that precision, fp32 in and out), run by ONNX Runtime (CUDA provider when installed, else CPU), its
   logits against the fp32 PyTorch model's: max abs error, error relative to the logits' spread, top-1 agreement; next to PyTorch's own
   error at that precision (the export's share of the error is the difference).

Writes ``gpu_check.json`` (every number) and ``gpu_check.md`` (the tables) into ``--out``. A step that fails is
recorded with its error and the others still run; a step that would overrun ``--budget-s`` is skipped and says so.

    python benchmarks/gpu_check.py --out out/gpu_check
    python benchmarks/gpu_check.py --plan                   # the steps and their time estimates (no GPU needed)
    python benchmarks/gpu_check.py shvit_s1 --steps throughput,train --rounds 5
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from leanvit.bench.env import environment
from leanvit.bench.options import BenchOptions
from leanvit.bench.runner import benchmark

DEFAULT_MODELS = ("shvit_s1", "efficientvit_m4")
EXPORT_MODEL = "efficientvit_m0"
STEPS = ("throughput", "compile", "train", "ddp", "export")
EXPORT_PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16}
BUDGET_S = 480.0  # 8 minutes
# Planned seconds per unit of work on one H100 host (set-up + timing), from the CPU-side costs of the same code; the
# run records what each step really took, which is what the next plan should use.
SETUP_S = {"throughput": 6.0, "compile": 50.0, "train": 8.0, "ddp": 40.0, "export": 20.0}


@dataclass(frozen=True)
class Step:
    """One part of the check: its name, what it measures and its planned seconds."""

    name: str
    what: str
    estimate_s: float


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=list(DEFAULT_MODELS), help="leanvit variants (timm's port is the "
                    f"reference; default: {' '.join(DEFAULT_MODELS)})")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {', '.join(STEPS)}")
    ap.add_argument("--batch-size", type=int, default=256, help="inference and training batch (default 256)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per path per round (default 2)")
    ap.add_argument("--ddp-steps", type=int, default=30, help="timed DDP training steps (default 30)")
    ap.add_argument("--export-model", default=EXPORT_MODEL, help=f"the model exported to ONNX (default {EXPORT_MODEL})")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S, help="skip steps that would end past this many "
                    f"seconds (default {BUDGET_S:g})")
    ap.add_argument("--out", type=Path, default=Path("out/gpu_check"), help="folder for gpu_check.json / .md")
    ap.add_argument("--plan", action="store_true", help="print the steps and their estimates, run nothing")
    args = ap.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        ap.error(f"--steps: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(STEPS)}")
    for name in ("batch_size", "rounds", "ddp_steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.seconds <= 0 or args.budget_s <= 0:
        ap.error("--seconds and --budget-s must be > 0")
    args.steps = steps
    return args


def plan(args: argparse.Namespace, gpus: int) -> list[Step]:
    """The steps ``args`` asks for on a machine with ``gpus`` GPUs, with their planned seconds."""
    paths = 2 * len(args.models)  # leanvit and timm per model
    timing = args.rounds * args.seconds + 1.0  # + the warm-up
    out = []
    for name in args.steps:
        if name == "throughput":
            out.append(Step(name, f"{paths} paths, batch {args.batch_size} AMP fp16, eager",
                            paths * (SETUP_S[name] + timing)))
        elif name == "compile":
            out.append(Step(name, f"{paths} paths, batch {args.batch_size} AMP fp16, torch.compile",
                            paths * (SETUP_S[name] + timing)))
        elif name == "train":
            out.append(Step(name, f"{paths} training loops, batch {args.batch_size}, AMP fp16 + GradScaler",
                            paths * (SETUP_S[name] + timing)))
        elif name == "ddp":
            what = (f"DDP on {gpus} GPUs, {args.ddp_steps} steps of {args.models[0]}" if gpus > 1
                    else "DDP: needs >= 2 GPUs, not run")
            out.append(Step(name, what, SETUP_S[name] + 0.1 * args.ddp_steps if gpus > 1 else 0.0))
        else:
            out.append(Step(name, f"{args.export_model} to ONNX in {', '.join(EXPORT_PRECISIONS)}",
                            SETUP_S[name] * len(EXPORT_PRECISIONS)))
    return out


def _pairs(models: Sequence[str]) -> list[str]:
    return [n for m in models for n in (f"leanvit:{m}", f"timm:{m}")]


def _ratios(records: Sequence[dict[str, Any]], models: Sequence[str]) -> list[dict[str, Any]]:
    """leanvit vs timm per model: images/s (and peak memory where measured) of each and their ratios."""
    rows = []
    for m in models:
        ours = next((r for r in records if r["model"] == m and r.get("source") == "leanvit"), None)
        theirs = next((r for r in records if r["model"] == f"timm:{m}"), None)
        row: dict[str, Any] = dict(model=m, leanvit=ours and ours.get("throughput"),
                                   timm=theirs and theirs.get("throughput"),
                                   errors=[r["error"] for r in (ours, theirs) if r and r.get("error")])
        if row["leanvit"] and row["timm"]:
            row["ratio"] = row["leanvit"] / row["timm"]
        if ours and theirs and ours.get("peak_memory_mb") and theirs.get("peak_memory_mb"):
            row.update(leanvit_peak_mb=ours["peak_memory_mb"], timm_peak_mb=theirs["peak_memory_mb"],
                       memory_ratio=ours["peak_memory_mb"] / theirs["peak_memory_mb"])
        rows.append(row)
    return rows


def step_speed(args: argparse.Namespace, backend: str, mode: str = "throughput") -> dict[str, Any]:
    """leanvit vs timm at batch ``args.batch_size``, AMP fp16, in interleaved rounds (training: one after another)."""
    options = BenchOptions(mode=mode, backend=backend, precision="fp16", device="cuda", batch_size=args.batch_size,
                           warmup=1.0, duration=args.seconds, progress=False,
                           rounds=args.rounds if mode == "throughput" else None)
    records = benchmark(_pairs(args.models), options)
    return dict(rows=_ratios(records, args.models), records=records)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, name: str, batch: int, steps: int, out_dir: str) -> None:
    """One DDP rank: ``steps`` timed AMP training steps on its own GPU; rank 0 writes the images/s of all ranks."""
    from torch.nn.parallel import DistributedDataParallel

    from leanvit.models import create_model
    from leanvit.train.distributed import cleanup, init_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    info = init_distributed("cuda")
    model = create_model(name).to(info.device).train()
    ddp = DistributedDataParallel(model, device_ids=[info.device.index])
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda")
    x = torch.randn(batch, 3, 224, 224, device=info.device)
    y = torch.randint(0, 1000, (batch,), device=info.device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16):
            out = ddp(x)
            outs = out if isinstance(out, tuple) else (out,)  # distilled heads: train both
            loss = sum(torch.nn.functional.cross_entropy(o.float(), y) for o in outs)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.distributed.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    torch.distributed.barrier()
    seconds = time.perf_counter() - t0
    if info.is_main:
        summary = dict(world=world, steps=steps, batch_per_gpu=batch, seconds=seconds,
                       images_per_s=world * batch * steps / seconds)
        Path(out_dir, "ddp.json").write_text(json.dumps(summary))
    cleanup(info)


def step_ddp(args: argparse.Namespace, gpus: int, single_gpu_images_per_s: float | None) -> dict[str, Any]:
    """DDP training on every GPU: total and per-GPU images/s and the scaling against one GPU's plain step."""
    if gpus < 2:
        return dict(skipped="DDP needs >= 2 GPUs; the single-GPU step is the train step")
    with tempfile.TemporaryDirectory(prefix="leanvit-gpu-check-") as tmp:
        torch.multiprocessing.spawn(_ddp_worker, args=(gpus, _free_port(), args.models[0], args.batch_size,
                                                       args.ddp_steps, tmp), nprocs=gpus, join=True)
        result = json.loads(Path(tmp, "ddp.json").read_text())
    result["images_per_s_per_gpu"] = result["images_per_s"] / gpus
    if single_gpu_images_per_s:
        result["scaling_efficiency"] = result["images_per_s_per_gpu"] / single_gpu_images_per_s
    return result


class CastTo(torch.nn.Module):
    """``model`` computing in ``dtype`` between fp32 input and fp32 logits: the exported graph is fed and read in fp32
    (numpy has no bfloat16), every weight and activation inside is ``dtype``."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model.to(dtype), dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def step_export(args: argparse.Namespace, device: str = "cuda") -> dict[str, Any]:
    """``args.export_model`` to ONNX in fp16 and bf16: its logits in ONNX Runtime vs the fp32 PyTorch model's (the
    PyTorch models on ``device``)."""
    import onnxruntime as ort

    from leanvit.deploy.writers import export_onnx
    from leanvit.models import create_model, fuse, logit_agreement, signal_images, signal_weights_

    model = signal_weights_(create_model(args.export_model).eval(), seed=0)  # logits that depend on the input
    fused = fuse(model).to(device).eval()
    images = signal_images(8, 224, seed=1).to(device)
    with torch.inference_mode():
        reference = fused(images).float().cpu()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    out: dict[str, Any] = dict(model=args.export_model, providers=providers, precisions={})
    for name, dtype in EXPORT_PRECISIONS.items():
        row: dict[str, Any] = {}
        cast = CastTo(fuse(model), dtype).to(device).eval()
        with torch.inference_mode():
            row["pytorch"] = logit_agreement(reference, cast(images).cpu())
        try:
            with tempfile.TemporaryDirectory(prefix="leanvit-gpu-check-") as tmp:
                path = Path(tmp, f"{args.export_model}_{name}.onnx")
                row["exporter"] = export_onnx(cast, images[:1], path, dynamic_batch=True)
                session = ort.InferenceSession(str(path), providers=providers)
                logits = session.run(None, {session.get_inputs()[0].name: images.cpu().numpy()})[0]
                row["onnxruntime"] = logit_agreement(reference, torch.from_numpy(logits).float())
        except Exception as e:  # recorded: the precision that cannot be exported or run says why
            row["error"] = f"{type(e).__name__}: {e}"
        out["precisions"][name] = row
    return out


def write_summary(result: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``gpu_check.json`` (everything) and ``gpu_check.md`` (the tables) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "gpu_check.json", out_dir / "gpu_check.md"
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    env = result.get("environment", {})
    lines = [f"# GPU check: {env.get('device', '?')}", "",
             f"- versions: {', '.join(f'{k} {v}' for k, v in env.get('versions', {}).items())}",
             f"- GPUs: {result.get('gpus')}; batch {result.get('batch_size')}; {result.get('rounds')} interleaved "
             f"rounds x {result.get('seconds')} s; total {result.get('total_s', 0):.0f} s", ""]
    steps = result.get("steps", {})
    for name, title, unit in (("throughput", "Throughput, AMP fp16, eager", "img/s"),
                              ("compile", "Throughput, AMP fp16, torch.compile", "img/s"),
                              ("train", "Training step, AMP fp16", "img/s")):
        step = steps.get(name)
        if not step:
            continue
        lines += [f"## {title}", ""] + _step_status(step)
        if step.get("rows"):
            memory = name == "train"
            lines += ["| model | leanvit " + unit + " | timm " + unit + " | leanvit / timm |"
                      + (" peak MB leanvit / timm | memory ratio |" if memory else ""),
                      "|---|---|---|---|" + ("---|---|" if memory else "")]
            for r in step["rows"]:
                cells = [r["model"], _num(r.get("leanvit")), _num(r.get("timm")), _ratio(r.get("ratio"))]
                if memory:
                    cells += [f"{_num(r.get('leanvit_peak_mb'))} / {_num(r.get('timm_peak_mb'))}",
                              _ratio(r.get("memory_ratio"))]
                lines.append("| " + " | ".join(cells) + " |")
            lines += [f"- {r['model']}: {e}" for r in step["rows"] for e in r.get("errors", [])]
        lines.append("")
    if "ddp" in steps:
        d = steps["ddp"]
        lines += ["## DDP training", ""] + _step_status(d)
        if d.get("images_per_s"):
            lines += [f"{d['world']} GPUs: {d['images_per_s']:.0f} img/s in total, "
                      f"{d['images_per_s_per_gpu']:.0f} per GPU"
                      + (f", {100 * d['scaling_efficiency']:.0f} % of one GPU's plain step"
                         if d.get("scaling_efficiency") else ""), ""]
    if "export" in steps:
        e = steps["export"]
        lines += ["## ONNX export", ""] + _step_status(e)
        if e.get("precisions"):
            lines += [f"{e['model']}, ONNX Runtime providers: {', '.join(e['providers'])}; logits vs fp32 PyTorch", "",
                      "| precision | PyTorch err/spread | ONNX err/spread | ONNX max abs | ONNX top-1 agreement "
                      "| note |",
                      "|---|---|---|---|---|---|"]
            for p, row in e["precisions"].items():
                ours, onnx = row.get("pytorch", {}), row.get("onnxruntime", {})
                lines.append(f"| {p} | {_num(ours.get('relative_error'), '.2e')} | "
                             f"{_num(onnx.get('relative_error'), '.2e')} | {_num(onnx.get('max_abs_error'), '.2e')} | "
                             f"{_num(onnx.get('top1_agreement'), '.2f')} | {row.get('error', '')} |")
            lines.append("")
    md_path.write_text("\n".join(lines))
    return json_path, md_path


def _step_status(step: dict[str, Any]) -> list[str]:
    notes = []
    if step.get("skipped"):
        notes.append(f"**skipped**: {step['skipped']}")
    if step.get("error"):
        notes.append(f"**failed**: {step['error']}")
    if step.get("seconds") is not None:
        notes.append(f"({step['seconds']:.0f} s)")
    return notes + ([""] if notes else [])


def _num(value: Any, fmt: str = ".0f") -> str:
    return "-" if value is None else format(value, fmt)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def run_steps(args: argparse.Namespace, gpus: int, clock: Callable[[], float] = time.perf_counter
              ) -> dict[str, dict[str, Any]]:
    """Run the planned steps in order; each is recorded with its seconds, its error or why it was skipped."""
    start = clock()
    steps: dict[str, dict[str, Any]] = {}
    for planned in plan(args, gpus):
        if clock() - start + planned.estimate_s > args.budget_s:
            steps[planned.name] = dict(skipped=f"planned {planned.estimate_s:.0f} s would pass the "
                                               f"{args.budget_s:.0f} s budget")
            continue
        t0 = clock()
        try:
            if planned.name == "throughput":
                result = step_speed(args, "eager")
            elif planned.name == "compile":
                result = step_speed(args, "compile")
            elif planned.name == "train":
                result = step_speed(args, "eager", mode="train")
            elif planned.name == "ddp":
                single = next((r["leanvit"] for r in steps.get("train", {}).get("rows", [])
                               if r["model"] == args.models[0]), None)
                result = step_ddp(args, gpus, single)
            else:
                result = step_export(args)
        except Exception as e:  # one failing step must not lose the others
            result = dict(error=f"{type(e).__name__}: {e}")
        result["seconds"] = clock() - t0
        steps[planned.name] = result
        print(f"{planned.name}: {result['seconds']:.0f} s" + (f" ({result['error']})" if "error" in result else ""),
              file=sys.stderr, flush=True)
    return steps


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    steps = plan(args, max(gpus, 1))
    print(f"plan ({max(gpus, 1)} GPU(s), budget {args.budget_s:.0f} s):")
    for s in steps:
        print(f"  {s.name:10s} ~{s.estimate_s:4.0f} s  {s.what}")
    print(f"  total      ~{sum(s.estimate_s for s in steps):4.0f} s")
    if args.plan:
        return 0
    if gpus == 0:
        print("gpu_check measures GPU promises and needs a CUDA GPU; none is visible here (torch "
              f"{torch.__version__}, CUDA build: {torch.version.cuda}). Run it on a GPU machine; --plan shows the "
              "steps.",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    result: dict[str, Any] = dict(environment=environment("cuda"), gpus=gpus, models=list(args.models),
                                  batch_size=args.batch_size, rounds=args.rounds, seconds=args.seconds,
                                  plan=[asdict(s) for s in steps])
    result["steps"] = run_steps(args, gpus)
    result["total_s"] = time.perf_counter() - t0
    json_path, md_path = write_summary(result, args.out)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 1 if any("error" in s for s in result["steps"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
