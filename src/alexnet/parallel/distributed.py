"""Small helpers for running under torchrun (model- or data-parallel).

`init_from_env()` reads RANK, WORLD_SIZE and LOCAL_RANK (set by torchrun) and starts the default
process group: NCCL when CUDA is available (after `torch.cuda.set_device(LOCAL_RANK)`), gloo
otherwise. Without torchrun it does nothing, and every other helper is then the one-process
identity, so a training loop can call them unconditionally.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(backend: str | None = None, timeout_s: float = 600.0, init_method: str | None = None) -> bool:
    """Start the process group from torchrun's environment; True if one is (now) running.

    `init_method` defaults to torchrun's `env://` (MASTER_ADDR, MASTER_PORT); a `file://` path
    works without a port.
    """
    if _active():
        return True
    if not under_torchrun() or not dist.is_available():
        return False
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend, init_method=init_method, rank=int(os.environ["RANK"]),
                            world_size=int(os.environ["WORLD_SIZE"]), timeout=datetime.timedelta(seconds=timeout_s))
    return True


def rank() -> int:
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if _active() else 0


def device() -> torch.device:
    """This process's device: cuda:LOCAL_RANK when CUDA is available, else the CPU."""
    return torch.device(f"cuda:{local_rank()}") if torch.cuda.is_available() else torch.device("cpu")


def is_main() -> bool:
    """True on rank 0, and when not distributed."""
    return rank() == 0


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place (identity when not distributed); returns it."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def cleanup() -> None:
    if _active():
        dist.destroy_process_group()


__all__ = ["all_reduce_sum", "barrier", "cleanup", "device", "init_from_env", "is_main", "local_rank", "rank",
           "under_torchrun", "world_size"]
