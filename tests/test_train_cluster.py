"""Cluster behaviour under torchrun on one machine (gloo, CPU, loopback): two rendezvous "nodes", elastic
restarts after a SIGKILLed worker, SIGTERM preemption, and a collective timeout that names the rank.

Every run trains the same tiny config with ``leanvit train`` and must end with the same weights, bit for bit,
as one uninterrupted ``--nproc_per_node=2`` run (two processes: 3 updates per epoch, 6 in all).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from leanvit.train import PREEMPTED_EXIT_CODE, CollectiveError, read_checkpoint
from leanvit.train.distributed import all_reduce_sum, cleanup, init_distributed, name_collective_failures

from helpers.once import built_once
from helpers.training import state_equal

TRAIN_ARGS = ["train", "--model", "efficientvit_m0", "--data", "fake", "--epochs", "2", "--batch-size", "8",
              "--set", "model.img_size=32", "--set", "data.fake_train_size=48", "--set", "data.fake_val_size=16",
              "--set", "data.fake_classes=4", "--set", "data.workers=0", "--set", "log.progress=false",
              "--set", "log.tensorboard=false", "--set", "checkpoint.every_steps=2",
              "--set", "train.deterministic=true"]
TIMEOUT_S = 300  # per launcher process (a run takes ~15 s of CPU; a machine shared by many jobs stretches that)

# Runs `leanvit train`, adding a fault to the first attempt of rank 1 (FAULT=kill|term at update STEP).
_DRIVER = r"""
import os, signal, sys, time
import leanvit.train.trainer as trainer_mod
from leanvit.cli import main

fault, step = os.environ.get("FAULT", ""), int(os.environ.get("FAULT_STEP", "0"))
attempt, rank = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"), int(os.environ.get("RANK", "0"))

def inject(event, trainer):
    if attempt != "0" or rank != 1 or trainer.global_step != step:
        return
    if fault == "kill" and event == "checkpoint":  # rank 0 has written this step's periodic checkpoint
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "term" and event == "step_end":
        os.kill(os.getppid(), signal.SIGTERM)  # as a scheduler would: torchrun forwards it to every worker
        deadline = time.monotonic() + 60
        while not trainer.preemption.requested and time.monotonic() < deadline:
            time.sleep(0.01)  # hold this update until the forwarded signal arrived here too

real_init = trainer_mod.Trainer.__init__
def init_with_fault(self, cfg, callbacks=None, *args, **kwargs):
    real_init(self, cfg, [*(callbacks or []), inject], *args, **kwargs)
trainer_mod.Trainer.__init__ = init_with_fault
code = main(sys.argv[1:])
with open(os.path.join(os.environ["FAULT_LOG"], f"exit_rank{rank}_attempt{attempt}"), "w") as f:
    f.write(str(code))
sys.exit(code)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp: Path, out: Path, launcher_args: list[str], fault: str = "", step: int = 0) -> subprocess.Popen:
    driver = tmp / "driver.py"
    driver.write_text(_DRIVER)
    logs = tmp / f"exits_{out.name}"
    logs.mkdir(exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", FAULT=fault, FAULT_STEP=str(step),
               FAULT_LOG=str(logs), PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]),
                                                                 os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher_args, "--monitor-interval=0.1", str(driver),
           *TRAIN_ARGS, "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s:\n{_tail(output)}")
    return proc.returncode, output


def _tail(log: str) -> str:
    """The workers' own error lines, then the end of the launcher's output."""
    errors = [line for line in log.splitlines() if "leanvit train: error" in line or "Error:" in line]
    return "\n".join([*errors[:10], "...", log[-2500:]])


def _exits(out: Path) -> dict[str, int]:
    folder = out.parent / f"exits_{out.name}"
    return {p.name: int(p.read_text()) for p in sorted(folder.iterdir())}


def _same_weights(a: Path, b: Path) -> bool:
    x, y = read_checkpoint(a / "last.ckpt"), read_checkpoint(b / "last.ckpt")
    return (x["counters"]["global_step"] == y["counters"]["global_step"] and state_equal(x["model"], y["model"])
            and (x["ema"] is None) == (y["ema"] is None) and (x["ema"] is None or state_equal(x["ema"], y["ema"])))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted single-launcher run with two processes (run once, shared by xdist workers)."""
    def run(tmp: Path) -> None:
        code, log = _finish(_torchrun(tmp, tmp / "run", ["--standalone", "--nproc_per_node=2"]))
        assert code == 0, _tail(log)

    out = built_once(tmp_path_factory, "cluster_reference", run) / "run"
    assert read_checkpoint(out / "last.ckpt")["counters"]["global_step"] == 6
    return out


@pytest.mark.slow
@pytest.mark.timeout(3 * TIMEOUT_S)
def test_two_nodes_equal_one_launcher(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "run"
    rdzv = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}",
            "--rdzv-id=two-nodes"]
    nodes = [_torchrun(tmp_path, out, [*rdzv, f"--node-rank={n}"]) for n in (0, 1)]
    results = [_finish(p) for p in nodes]
    for code, log in results:
        assert code == 0, _tail(log)
    assert "world_size: 2" in (out / "config.yaml").read_text()
    assert _same_weights(out, reference), "two 1-process nodes trained other weights than one 2-process launcher"


@pytest.mark.slow
@pytest.mark.timeout(2 * TIMEOUT_S)
def test_max_restarts_resumes_after_a_killed_worker(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "run"
    code, log = _finish(_torchrun(tmp_path, out, ["--standalone", "--nproc_per_node=2", "--max-restarts=1"],
                                  fault="kill", step=4))
    assert code == 0, _tail(log)
    exits = _exits(out)
    assert "exit_rank1_attempt0" not in exits, "the worker was not killed"
    # rank 0 of the first attempt either is stopped by torchrun (no exit file) or first sees its peer's death in a
    # collective and exits with a failure: a race, both correct; it must never report success.
    assert exits.pop("exit_rank0_attempt0", 1) != 0, exits
    assert exits == {"exit_rank0_attempt1": 0, "exit_rank1_attempt1": 0}, exits
    assert "resumed" in log and "at epoch 1, batch 1 (update 4)" in log, _tail(log)
    assert _same_weights(out, reference)


@pytest.mark.slow
@pytest.mark.timeout(3 * TIMEOUT_S)
def test_sigterm_checkpoints_the_current_step_and_resume_matches(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "run"
    code, log = _finish(_torchrun(tmp_path, out, ["--standalone", "--nproc_per_node=2"], fault="term", step=5))
    assert code != 0, "torchrun reports a worker group stopped by a signal as a failure"
    assert _exits(out) == {"exit_rank0_attempt0": PREEMPTED_EXIT_CODE, "exit_rank1_attempt0": PREEMPTED_EXIT_CODE}
    stopped = read_checkpoint(out / "last.ckpt")["counters"]
    assert (stopped["global_step"], stopped["epoch"], stopped["batches_done"]) == (5, 1, 2)  # periodic: every 2
    assert not stopped["epoch_complete"]
    # the same command again continues the run by itself
    code, log = _finish(_torchrun(tmp_path, out, ["--standalone", "--nproc_per_node=2"]))
    assert code == 0, _tail(log)
    assert _same_weights(out, reference)


def _hung_peer(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    info = init_distributed("cpu", timeout_s=2)
    all_reduce_sum([1.0], info)
    if rank == 1:
        time.sleep(8)  # hangs: rank 0's next collective must time out
    else:
        try:
            with name_collective_failures(info):
                all_reduce_sum([1.0], info)
            message = "no error"
        except CollectiveError as e:
            message = str(e)
        Path(out).write_text(json.dumps(message))
    cleanup(info)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_collective_timeout_names_the_rank(tmp_path: Path) -> None:
    result = tmp_path / "message.json"
    mp.spawn(_hung_peer, args=(_free_port(), str(result)), nprocs=2, join=True)
    message = json.loads(result.read_text())
    assert message.startswith("rank 0 of 2 ") and "train.dist_timeout_s=2" in message, message
    assert "Timed out" in message
