"""Distributed data parallel on CPU (gloo): ranks stay in sync, only rank 0 writes, evaluation is exact."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from leanvit.train import evaluate, load_config, read_checkpoint

from helpers.training import TINY

DDP_SETS = dict(TINY, **{"data.repeated_aug": True, "data.fake_val_size": 25, "train.epochs": 2,
                         "checkpoint.every_steps": 1})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    import leanvit.train.trainer as trainer_mod
    from leanvit.train.distributed import cleanup, init_distributed

    real_write = trainer_mod.write_checkpoint

    def logged_write(obj: dict, path: Path) -> Path:  # record which rank writes checkpoints
        with open(Path(out) / f"writes_rank{rank}.txt", "a") as f:
            f.write(f"{path}\n")
        return real_write(obj, path)

    trainer_mod.write_checkpoint = logged_write
    info = init_distributed("cpu")
    try:
        t = trainer_mod.Trainer(load_config("quick", dict(DDP_SETS, output=str(Path(out) / "run"))), info=info)
        t.fit()
        flat = torch.cat([p.detach().flatten() for p in t.model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        result = dict(identical=all(torch.equal(g, gathered[0]) for g in gathered), steps=t.global_step,
                      batches=t.batches_per_epoch, backend=dist.get_backend())
        (Path(out) / f"result_rank{rank}.json").write_text(json.dumps(result))
    finally:
        cleanup(info)


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"result_rank{r}.json").read_text()) for r in range(2)]
    assert all(r["identical"] for r in results), "parameters differ across ranks"
    assert results[0]["backend"] == "gloo"
    # repeated augmentation keeps an epoch at len(dataset) samples: 48 / 2 ranks = 24 = 3 batches of 8
    assert results[0]["batches"] == 3 and results[0]["steps"] == 6
    assert (tmp_path / "writes_rank0.txt").exists() and not (tmp_path / "writes_rank1.txt").exists()
    ck = read_checkpoint(tmp_path / "run" / "last.ckpt")
    assert len(ck["rng"]) == 2  # both ranks' RNG streams, for an exact resume
    # distributed evaluation (25 images split 13/12, no padding) equals a single-process evaluation
    with open(tmp_path / "run" / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    single = evaluate("efficientvit_m0", tmp_path / "run" / "last.ckpt", "fake", workers=0, progress=False)
    assert single["images"] == 25
    assert float(last["top1"]) == pytest.approx(single["top1"], abs=1e-4)
    assert float(last["val_loss"]) == pytest.approx(single["loss"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_command(tmp_path: Path) -> None:
    # The command contract: `torchrun --nproc_per_node=2 -m leanvit train ...`.
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "leanvit",
           "train", "--model", "efficientvit_m0", "--data", "fake", "--epochs", "1", "--batch-size", "8",
           "--output", str(out), "--set", "model.img_size=32", "--set", "data.fake_train_size=48",
           "--set", "data.fake_classes=4", "--set", "log.progress=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for f in ("last.ckpt", "best.ckpt", "config.yaml", "metrics.csv"):
        assert (out / f).is_file(), f
    assert "world_size: 2" in (out / "config.yaml").read_text()
