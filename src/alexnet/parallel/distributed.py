"""Running under torchrun: the process group, and one object the training loop asks about ranks.

`torchrun --nproc-per-node N -m alexnet train ...` sets RANK, WORLD_SIZE and LOCAL_RANK (and
MASTER_ADDR/MASTER_PORT). `init_from_env()` starts the default process group from them: NCCL when
CUDA is used (after `torch.cuda.set_device(LOCAL_RANK)`), gloo otherwise. Without torchrun it does
nothing, and a `DistributedContext` is then the one-process identity, so a training loop can call
it unconditionally.

`DistributedContext.from_env()` is what `alexnet.train` uses: rank, world size, this process's
device, DDP wrapping and the few reductions the loop needs. A process group that the caller has
already started (a test with a FileStore, say) is adopted as is and left running at `cleanup()`.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as td
from torch import nn

from alexnet.errors import ConfigError

#: Seconds a collective may wait for the other processes before the run fails (torchrun then
#: stops every worker). Overridden by ALEXNET_DIST_TIMEOUT_S.
DEFAULT_TIMEOUT_S = 600.0


def _active() -> bool:
    return td.is_available() and td.is_initialized()


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _timeout(timeout_s: float | None) -> datetime.timedelta:
    if timeout_s is None:
        timeout_s = float(os.environ.get("ALEXNET_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    return datetime.timedelta(seconds=timeout_s)


def init_from_env(backend: str | None = None, timeout_s: float | None = None, init_method: str | None = None) -> bool:
    """Start the process group from torchrun's environment; True if one is (now) running.

    `init_method` defaults to torchrun's `env://` (MASTER_ADDR, MASTER_PORT); a `file://` path
    works without a port.
    """
    if _active():
        return True
    if not under_torchrun() or not td.is_available():
        return False
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    td.init_process_group(backend, init_method=init_method, rank=int(os.environ["RANK"]),
                          world_size=int(os.environ["WORLD_SIZE"]), timeout=_timeout(timeout_s))
    return True


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s `obj` on every rank (the object itself when not distributed)."""
    if not _active():
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=src)
    return box[0]


@dataclass
class DistributedContext:
    """Rank, world size and device of this process, and the collectives the training loop uses.

    Not distributed (`enabled` False): rank 0 of 1, and every method is the identity.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    enabled: bool = False
    owns_group: bool = False      # started here, so `cleanup()` ends it

    @classmethod
    def from_env(cls, device: str = "auto", timeout_s: float | None = None) -> "DistributedContext":
        """From torchrun's environment (or an already started process group). `device`: the
        training device asked for (auto | cpu | cuda): NCCL on CUDA, gloo on the CPU."""
        adopted = _active()
        world = td.get_world_size() if adopted else int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("--device cuda given, but torch sees no CUDA device")
        if not adopted:
            use_cuda = torch.cuda.is_available() and device != "cpu"
            init_from_env("nccl" if use_cuda else "gloo", timeout_s)
        rank_, world = td.get_rank(), td.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", str(rank_)))
        use_cuda = "nccl" in str(td.get_backend()).lower()
        if use_cuda:
            torch.cuda.set_device(local)
        dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
        return cls(rank=rank_, world_size=world, local_rank=local, device=dev, enabled=True,
                   owns_group=not adopted)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module, bf16_gradients: bool = False) -> nn.Module:
        """DistributedDataParallel around `model` (already on this process's device); with
        `bf16_gradients`, its gradients all-reduced in bf16 (torch's bf16_compress_hook)."""
        if not self.enabled:
            return model
        ids = [self.local_rank] if self.device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if bf16_gradients:
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook

            ddp.register_comm_hook(None, bf16_compress_hook)
        return ddp

    def barrier(self) -> None:
        if self.enabled:
            td.barrier()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce a tensor in place by summation (identity on one process)."""
        if self.enabled:
            td.all_reduce(tensor, op=td.ReduceOp.SUM)
        return tensor

    @property
    def averages(self) -> bool:
        """Whether `reduce_` can make the mean in the collective itself (NCCL's AVG); else (gloo, one
        process) it makes the sum and the caller divides by the process count."""
        return self.enabled and self.device.type == "cuda"

    @property
    def _mean_op(self):
        return td.ReduceOp.AVG if self.averages else td.ReduceOp.SUM

    @staticmethod
    def wait(works) -> None:
        """Wait for the works the `wait=False` collectives returned (None: nothing to wait for)."""
        for work in works:
            if work is not None:
                work.wait()

    def finish_mean_(self, tensors: list[torch.Tensor]) -> None:
        """After `reduce_` or `reduce_scatter_` are done: where the collective made the sum (gloo), the
        mean, by dividing by the process count; nothing where it made the mean itself."""
        if self.enabled and not self.averages:
            torch._foreach_div_(tensors, float(self.world_size))

    def reduce_(self, tensor: torch.Tensor, wait: bool = True):
        """Start (or, with `wait`, do) an in-place all-reduce towards the mean over processes: the mean
        itself where `averages` (no separate division pass over the gradients), else the sum. Returns
        the work to wait on (None when done or on one process). On NCCL, waiting makes the current
        stream wait for it, so a CUDA graph can hold both."""
        if not self.enabled:
            return None
        work = td.all_reduce(tensor, op=self._mean_op, async_op=not wait)
        return None if wait else work

    def reduce_scatter_(self, share: torch.Tensor, tensor: torch.Tensor, wait: bool = True):
        """Start (or do) a reduce-scatter of `tensor` (equal shares in rank order) into this rank's
        `share`: the mean where `averages`, else the sum (as `reduce_`). Returns the work or None."""
        if not self.enabled:
            share.copy_(tensor)
            return None
        work = td.reduce_scatter_tensor(share, tensor, op=self._mean_op, async_op=not wait)
        return None if wait else work

    def all_gather_(self, tensor: torch.Tensor, wait: bool = True):
        """Start (or do) an in-place all-gather: rank r's share of `tensor` (equal shares in rank order)
        copied into every rank's `tensor`. Returns the work or None."""
        if not self.enabled:
            return None
        n = tensor.numel() // self.world_size
        work = td.all_gather_into_tensor(tensor, tensor[self.rank * n : (self.rank + 1) * n], async_op=not wait)
        return None if wait else work

    def broadcast_(self, tensors: list[torch.Tensor], src: int = 0) -> None:
        """Rank `src`'s values copied into `tensors` on every rank (nothing on one process)."""
        if self.enabled:
            with torch.no_grad():
                for t in tensors:
                    td.broadcast(t, src)

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

    def broadcast_object(self, obj, src: int = 0):
        """Rank `src`'s `obj` on every rank."""
        return broadcast_object(obj, src) if self.enabled else obj

    def cleanup(self) -> None:
        """End the process group if this context started it."""
        if self.enabled and self.owns_group and td.is_initialized():
            td.destroy_process_group()


__all__ = ["DEFAULT_TIMEOUT_S", "DistributedContext", "broadcast_object", "init_from_env", "under_torchrun"]
