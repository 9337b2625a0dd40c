"""Process-group set-up for torchrun, SLURM and single-process runs.

torchrun (any number of nodes, via ``--nnodes`` / ``--rdzv-endpoint``) sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Under ``srun`` without torchrun the SLURM variables are
translated (SLURM_PROCID -> RANK, ...); the rendezvous host is the first node of the allocation.
Backend: nccl on CUDA, gloo on CPU. A collective that fails (a peer died) or times out
(``train.dist_timeout_s``: a peer hangs) raises :class:`CollectiveError` naming this process's rank.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist

from .._text import error_reason
from ..errors import OperationError

__all__ = ["DistInfo", "CollectiveError", "init_distributed", "cleanup", "all_reduce_sum", "gather_objects",
           "broadcast_object", "barrier", "name_collective_failures"]


@dataclass
class DistInfo:
    """Where this process sits: rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False
    timeout_s: int = 1800

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.rank == 0


def _slurm_env() -> None:
    """Fill the torch.distributed variables from SLURM's when launched by ``srun`` without torchrun."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST", "")
        try:  # scontrol expands "node[01-04]" to one host per line
            host = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                                  check=True).stdout.split()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            host = nodes.split(",")[0]
        os.environ["MASTER_ADDR"] = host
    # A port derived from the job id avoids clashes between jobs sharing a node.
    os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000))


def _attempt_store(rank: int, world: int, timeout_s: int) -> dict[str, Any]:
    """Under torchrun, a store namespace of its own for each restart of the worker group.

    The workers share torchrun's store across restarts; without a fresh namespace the restarted
    processes can read the dead processes' gloo addresses and fail to connect (measured here: 2 of 3
    ``--max-restarts`` runs failed with "connectFullMesh failed ... Connection refused").
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:
        return {}
    store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)))
    return dict(store=dist.PrefixStore(f"leanvit/attempt{attempt}", store), rank=rank, world_size=world)


def init_distributed(device: str = "auto", timeout_s: int = 1800) -> DistInfo:
    """Join the process group when launched by torchrun/SLURM; otherwise a single process. Idempotent."""
    _slurm_env()
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise OperationError("train.device=cuda but CUDA is not available; use train.device=cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    info = DistInfo(rank, world, local_rank, dev, timeout_s=timeout_s)
    if world > 1:
        if dist.is_initialized():
            info.rank, info.world_size = dist.get_rank(), dist.get_world_size()
        else:
            backend = "nccl" if want_cuda else "gloo"
            kwargs: dict[str, Any] = dict(backend=backend, timeout=timedelta(seconds=timeout_s))
            if want_cuda:
                kwargs["device_id"] = dev
            kwargs.update(_attempt_store(rank, world, timeout_s))
            dist.init_process_group(**kwargs)
            info.initialized_here = True
    return info


def cleanup(info: DistInfo) -> None:
    """Leave the process group if this module created it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op for one process)."""
    if info.distributed:
        dist.barrier()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few numbers over all processes (float64)."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every process's ``obj`` (a list of length world_size, on every process)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every process (``obj`` of the other ranks is ignored)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class CollectiveError(OperationError):
    """A collective operation failed or timed out: another process died or hangs."""


# Backend failures arrive as plain RuntimeErrors (gloo) or DistErrors; these mark them apart from model errors.
_BACKEND_MARKERS = ("gloo/", "Timed out waiting", "Connection closed by peer", "Connection reset by peer", "NCCL")


def _is_backend_failure(error: BaseException) -> bool:
    if isinstance(error, dist.DistError):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in _BACKEND_MARKERS)


@contextlib.contextmanager
def name_collective_failures(info: DistInfo, resume_hint: str = "") -> Iterator[None]:
    """Turn a failed or timed-out collective into a :class:`CollectiveError` that names this rank.

    Without this, each process of a job whose peer died prints the backend's bare message (gloo does not
    say which process is reporting), and a hung peer shows nothing at all for ``dist_timeout_s``.
    """
    try:
        yield
    except Exception as e:  # noqa: BLE001 - re-raised unchanged unless it is a backend failure
        if not info.distributed or isinstance(e, CollectiveError) or not _is_backend_failure(e):
            raise
        first = error_reason(e)
        raise CollectiveError(
            f"rank {info.rank} of {info.world_size} (host {socket.gethostname()}, pid {os.getpid()}): a collective "
            f"operation with the other processes failed or timed out (train.dist_timeout_s={info.timeout_s}): "
            f"{first}. Another process probably died or hangs; its own log has the first error. "
            f"{resume_hint}".rstrip()
        ) from e
