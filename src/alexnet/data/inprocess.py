"""The in-process loader: a background thread of the training process reads batches ahead and copies
them to the device on a side stream. `alexnet.data.loader.BatchLoader` uses it with `workers=0`
(the default on the CPU), and a `Feeder` without workers; see `alexnet.data.loader` for the readers.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from alexnet.data.handoff import Failure, on_current_stream, put, stop_and_drain
from alexnet.data.order import epoch_order, epoch_shards, num_batches, shard_bounds

__all__ = ["InProcessLoader", "READERS", "default_threads"]


def default_threads() -> int:
    """Reader threads of the in-process loader: 4, or one per core on smaller machines."""
    return min(4, os.cpu_count() or 1)


READERS = ("auto", "gather", "pread", "split")


class _RawFile:
    """Reader of a raw prepared split (row i of the (N, S, S, 3) uint8 file at i * S * S * 3) that
    holds the GIL for one call per batch part, not per image, so that the training loop's own
    Python thread is not slowed down by the reader threads:

    * "gather": `torch.index_select` from the memory-mapped file straight into the pinned buffer
      (ATen copies the rows, in parallel, with the GIL released);
    * "pread": one `os.preadv` per image (no memory map, no page faults; a Python loop per image).
    """

    def __init__(self, split, mode: str):
        self.mode = mode
        self.row = split.size * split.size * 3
        self.index = getattr(split, "_index", None)   # a subset's positions in the stored split
        self.path = split.path
        self.fd = None
        if mode == "gather":
            import warnings

            count = os.path.getsize(self.path) // self.row
            self._mm = np.memmap(self.path, np.uint8, "r", shape=(count, self.row))
            with warnings.catch_warnings():             # read-only memory: never written here
                warnings.simplefilter("ignore", UserWarning)
                self.src = torch.from_numpy(self._mm)
        else:
            self.fd = os.open(self.path, os.O_RDONLY)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)  # no read-ahead for random rows

    @classmethod
    def open_for(cls, split, reader: str) -> "_RawFile | None":
        """A reader for a raw PreparedSplit; None for anything else (its own read() is used)."""
        if reader == "split" or type(split).__name__ != "PreparedSplit" or getattr(split, "encoding", None) != "raw":
            return None
        mode = "gather" if reader == "auto" else reader
        if mode == "pread" and not hasattr(os, "preadv"):
            return None
        try:
            return cls(split, mode)
        except (OSError, ValueError):
            return None

    def _rows(self, idx: torch.Tensor) -> torch.Tensor:
        rows = idx.to(torch.int64)
        if self.index is not None:
            rows = torch.from_numpy(self.index)[rows]
        return rows

    def read(self, idx: torch.Tensor, out: torch.Tensor) -> None:
        rows = self._rows(idx)
        flat = out.view(len(rows), self.row)
        if self.mode == "gather":
            torch.index_select(self.src, 0, rows, out=flat)
            return
        flat = flat.numpy()
        rows = rows.numpy()
        for j in np.argsort(rows, kind="stable").tolist():   # ascending file offsets
            mv = memoryview(flat[j])
            off = int(rows[j]) * self.row
            got = os.preadv(self.fd, [mv], off)
            while got < self.row:                              # short reads: continue where it stopped
                n = os.preadv(self.fd, [mv[got:]], off + got)
                if n <= 0:
                    raise OSError(f"{self.path}: image {int(rows[j])} is cut short ({got} of {self.row} bytes)")
                got += n

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.src = self._mm = None


class InProcessLoader:
    """Iterate ``(images_u8, labels)`` of a :class:`~alexnet.data.prepared.PreparedSplit`.

    ``batch_size`` is the global batch (all ranks together). ``start_batch`` skips the first
    global batches of the epoch without reading them. ``len(loader)`` is the number of batches
    this loader yields (``batches_per_epoch - start_batch``).

    ``workers``: loader processes (None: none on the CPU, the spare cores on a GPU, see
    :func:`alexnet.data.workers.default_workers`; 0: in this process). With workers, each pass
    over the loader starts and stops them; a :class:`~alexnet.data.feeder.Feeder` keeps them.
    ``decode``: ``"cpu"`` or ``"cuda"`` (JPEG stores, with workers). ``threads``, ``reader`` and
    ``pin_memory`` concern the in-process loader.
    """

    def __init__(
        self,
        split,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        start_batch: int = 0,
        drop_last: bool = False,
        device="cpu",
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 2,
        pin_memory: bool | None = None,
        threads: int | None = None,
        reader: str = "auto",
        workers: int | None = None,
        decode: str = "cpu",
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.split = split
        self.batch_size = int(batch_size)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.device = torch.device(device)
        self.prefetch = max(1, int(prefetch))
        if pin_memory is None:
            pin_memory = self.device.type == "cuda" and torch.cuda.is_available()
        self.pin_memory = bool(pin_memory)
        if threads is None:
            threads = default_threads()
        self.threads = max(1, int(threads))
        if reader not in READERS:
            raise ValueError(f"unknown reader {reader!r}: {', '.join(READERS)}")
        self.reader = reader
        self.n = len(split)
        self.batches_per_epoch = num_batches(self.n, self.batch_size, self.drop_last)
        self._labels = split.labels
        self.decode = decode
        if type(split).__name__ != "PreparedSplit":
            workers = 0  # any object with read(indices, out): read here
        elif workers is None:
            from alexnet.data.workers import default_workers

            workers = default_workers(self.device, split.encoding, decode)
        self.workers = max(0, int(workers))
        if decode != "cpu" and self.workers == 0:
            raise ValueError(f"decode={decode!r} needs loader workers (workers >= 1)")
        self.set_epoch(epoch, start_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} is outside 0..{self.batches_per_epoch}")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def order(self) -> torch.Tensor:
        return epoch_order(self.n, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch)

    def shards(self) -> list[torch.Tensor]:
        """This rank's indices for each remaining batch (no reading)."""
        return epoch_shards(self.n, self.batch_size, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch,
                            drop_last=self.drop_last, start_batch=self.start_batch, rank=self.rank,
                            world_size=self.world_size)

    # -- reading
    def _load(self, idx: torch.Tensor, pool: ThreadPoolExecutor | None, raw: "_RawFile | None" = None):
        S = self.split.size
        b = len(idx)
        buf = torch.empty((b, S, S, 3), dtype=torch.uint8, pin_memory=self.pin_memory)
        read = raw.read if raw is not None else (lambda i, o: self.split.read(i, out=o))
        if pool is None or b < 2 * self.threads:
            read(idx, buf)
        else:
            parts = []
            for t in range(self.threads):
                lo, hi = shard_bounds(b, t, self.threads)
                parts.append(pool.submit(read, idx[lo:hi], buf[lo:hi]))
            for p in parts:
                p.result()
        x = buf.permute(0, 3, 1, 2)
        y = self._labels[idx]
        if self.pin_memory:
            y = y.pin_memory()
        return x, y

    def _produce(self, shards, q: queue.Queue, stop: threading.Event) -> None:
        pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        raw = None
        try:
            raw = _RawFile.open_for(self.split, self.reader)
            for idx in shards:
                if stop.is_set():
                    return
                x, y = self._load(idx, pool, raw)
                ev = None
                if cuda:
                    with torch.cuda.stream(stream):
                        x = x.to(self.device, non_blocking=True)
                        y = y.to(self.device, non_blocking=True)
                        ev = torch.cuda.Event()
                        ev.record(stream)
                elif self.device.type != "cpu":
                    x, y = x.to(self.device), y.to(self.device)
                put(q, (x, y, ev), stop)
        except BaseException as e:  # handed to the consumer, raised there
            put(q, Failure(e), stop)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            if raw is not None:
                raw.close()

    def __iter__(self):
        shards = self.shards()
        if not shards:
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        th = threading.Thread(target=self._produce, args=(shards, q, stop), name="alexnet-loader", daemon=True)
        th.start()
        try:
            for _ in range(len(shards)):
                item = q.get()
                if isinstance(item, Failure):
                    raise item.exc
                yield on_current_stream(*item, self.device)
        finally:
            stop_and_drain(stop, q, th)
