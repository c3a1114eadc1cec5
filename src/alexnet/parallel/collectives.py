"""Autograd-aware collectives for one column per process: what crosses between the two GPUs when
each is driven by its own process (torchrun). Every rank must call them in the same order."""

from __future__ import annotations

import torch
import torch.distributed as td

__all__ = ["all_gather_cat", "gather_cat"]


class _AllGatherCat(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 1. Backward: the sum over ranks of the gradient of
    each rank's slice, delivered to that rank (a reduce-scatter; NCCL does it as one, other backends
    all-reduce the whole gradient and keep their slice)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        ctx.rank, ctx.world = td.get_rank(group), td.get_world_size(group)
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        td.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad):
        chunks = [g.contiguous() for g in grad.chunk(ctx.world, dim=1)]
        if grad.is_cuda and "nccl" in str(td.get_backend(ctx.group)):
            out = torch.empty_like(chunks[ctx.rank])
            td.reduce_scatter(out, chunks, group=ctx.group)
            return out, None
        full = grad.contiguous().clone()
        td.all_reduce(full, group=ctx.group)
        return full.chunk(ctx.world, dim=1)[ctx.rank].contiguous(), None


class _GatherCat(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 1 on the group's rank 0; other ranks get a 0-dim
    zero tied to the graph. Backward: rank 0 scatters each rank's slice of the gradient back."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        ctx.rank, ctx.world = td.get_rank(group), td.get_world_size(group)
        ctx.root = td.get_global_rank(group, 0) if group is not None else 0
        ctx.shape, ctx.dtype, ctx.device = x.shape, x.dtype, x.device
        x = x.contiguous()
        if ctx.rank == 0:
            parts = [torch.empty_like(x) for _ in range(ctx.world)]
            td.gather(x, parts, dst=ctx.root, group=group)
            return torch.cat(parts, dim=1)
        td.gather(x, None, dst=ctx.root, group=group)
        return x.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        out = torch.empty(ctx.shape, dtype=ctx.dtype, device=ctx.device)
        if ctx.rank == 0:
            chunks = [g.contiguous() for g in grad.chunk(ctx.world, dim=1)]
            td.scatter(out, chunks, src=ctx.root, group=ctx.group)
        else:
            td.scatter(out, None, src=ctx.root, group=ctx.group)
        return out, None


def all_gather_cat(x: torch.Tensor, group=None) -> torch.Tensor:
    """Every rank's x concatenated along dim 1, on every rank (differentiable)."""
    return _AllGatherCat.apply(x, group)


def gather_cat(x: torch.Tensor, group=None) -> torch.Tensor:
    """Every rank's x concatenated along dim 1 on the group's rank 0; a 0-dim placeholder elsewhere."""
    return _GatherCat.apply(x, group)
