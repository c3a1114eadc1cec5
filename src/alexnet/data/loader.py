"""Batches of a prepared split, in a deterministic order, delivered on the device ahead of use.

Order, sharding, resuming and evaluation without duplicates: :mod:`alexnet.data.order`.

Images come as uint8 ``(b, 3, S, S)`` channels_last (a permute of the stored HWC data), labels
as int64, both on ``device``.

Two ways to read:

* ``workers > 0`` (the default on a GPU): worker processes fill a shared, page-locked ring and
  each batch goes to the GPU in one asynchronous copy (:class:`alexnet.data.feeder.Feeder`). A
  ``BatchLoader`` starts its workers for each pass over it and stops them at the end; make one
  ``Feeder`` per run instead to keep them for every epoch.
* ``workers=0`` (the default on the CPU, and for any split object with ``read(indices, out)``):
  in this process, a background thread reading ahead. A raw split is gathered with one
  ``torch.index_select`` per part of the batch from the memory-mapped file straight into the
  (pinned) batch buffer by ``threads`` threads (``reader="gather"``, the default; the GIL is
  released for the copy); ``reader="pread"`` reads with one ``pread`` per image; JPEG splits (or
  ``reader="split"``) go through the split's own ``read``. On CUDA the batch is copied on a side
  stream and the consumer's stream waits for the copy.
"""

from __future__ import annotations

from alexnet.data.feeder import Feeder
from alexnet.data.inprocess import READERS, InProcessLoader, default_threads
from alexnet.data.order import SEED_STRIDE, epoch_order, num_batches, shard_bounds

__all__ = ["BatchLoader", "num_batches", "epoch_order", "shard_bounds", "SEED_STRIDE", "READERS", "default_threads"]


class BatchLoader(InProcessLoader):
    __doc__ = InProcessLoader.__doc__

    def __iter__(self):
        if not self.workers:
            yield from super().__iter__()
            return
        feeder = Feeder(self.split, self.batch_size, shuffle=self.shuffle, seed=self.seed, drop_last=self.drop_last,
                        device=self.device, rank=self.rank, world_size=self.world_size, workers=self.workers,
                        prefetch=self.prefetch, decode=self.decode)
        try:
            yield from feeder.epoch(self.epoch, self.start_batch)
        finally:
            feeder.close()
