"""Data parallelism under torchrun: one object the training loop asks about ranks and reductions.

Without torchrun (no WORLD_SIZE in the environment, or 1) every method is the single-process
identity, so the loop is the same program on one device and on many.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as td
from torch import nn


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    enabled: bool = False

    @classmethod
    def from_env(cls, device: str = "auto") -> "DistributedContext":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device != "cpu"
        if use_cuda:
            torch.cuda.set_device(local)
        if not td.is_initialized():
            td.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=10))
        dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
        return cls(rank=rank, world_size=world, local_rank=local, device=dev, enabled=True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.enabled:
            return model
        ids = [self.local_rank] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        if self.enabled:
            td.barrier()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce a tensor in place by summation (identity on one process)."""
        if self.enabled:
            td.all_reduce(tensor, op=td.ReduceOp.SUM)
        return tensor

    def mean(self, tensor: torch.Tensor) -> float:
        """The mean over processes of a scalar tensor, as a Python float."""
        t = tensor.detach().clone().float()
        return (self.sum_(t) / self.world_size).item()

    def gather_objects(self, obj) -> list:
        """Every rank's `obj`, in rank order (a list of one on a single process)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        td.all_gather_object(out, obj)
        return out

    def cleanup(self) -> None:
        if self.enabled and td.is_initialized():
            td.destroy_process_group()
