"""Which images each batch holds: the epoch's order, global batches, and each rank's shard.

Order: epoch ``e`` visits the images in the order
``torch.randperm(N, generator=torch.Generator().manual_seed(seed * 1_000_003 + e))`` (or
``0..N-1`` without shuffling). Global batch ``b`` is positions ``b*B .. (b+1)*B - 1`` of that
order; with ``world_size`` W it is cut into W contiguous shards (sizes differ by at most one) and
rank r gets shard r. So the position of a sample depends only on (seed, epoch, batch), not on W:
training resumes at a global batch (``start_batch``) with any number of GPUs. Evaluation
(``shuffle=False, drop_last=False``) with W > 1 counts every image exactly once: the last, partial
batch is sharded without padding (a rank's shard may be empty).
"""

from __future__ import annotations

import torch

__all__ = ["SEED_STRIDE", "num_batches", "epoch_order", "shard_bounds", "epoch_shards"]

SEED_STRIDE = 1_000_003


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Global batches in an epoch of ``n`` images."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return n // batch_size if drop_last else (n + batch_size - 1) // batch_size


def epoch_order(n: int, *, shuffle: bool, seed: int, epoch: int) -> torch.Tensor:
    """The visiting order of epoch ``epoch``: int64 (n,)."""
    if not shuffle:
        return torch.arange(n, dtype=torch.int64)
    g = torch.Generator().manual_seed(int(seed) * SEED_STRIDE + int(epoch))
    return torch.randperm(n, generator=g)


def shard_bounds(b: int, rank: int, world_size: int) -> tuple[int, int]:
    """[lo, hi) of rank's contiguous shard of a batch of ``b`` (sizes differ by at most one)."""
    q, r = divmod(b, world_size)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


def epoch_shards(n: int, batch_size: int, *, shuffle: bool, seed: int, epoch: int, drop_last: bool,
                 start_batch: int = 0, rank: int = 0, world_size: int = 1) -> list[torch.Tensor]:
    """This rank's positions for each global batch from ``start_batch`` to the end of the epoch."""
    order = epoch_order(n, shuffle=shuffle, seed=seed, epoch=epoch)
    out = []
    for b in range(start_batch, num_batches(n, batch_size, drop_last)):
        glob = order[b * batch_size : min((b + 1) * batch_size, n)]
        lo, hi = shard_bounds(len(glob), rank, world_size)
        out.append(glob[lo:hi])
    return out
