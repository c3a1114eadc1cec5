"""Batches from worker processes through a shared, page-locked ring, so the GPU never waits for data
and the training loop never waits for the GIL.

>>> with Feeder(train, 256, shuffle=True, seed=0, drop_last=True, device="cuda") as feeder:
...     for epoch in range(start_epoch, epochs):
...         for images, labels in feeder.epoch(epoch, start_batch):   # uint8 (B,3,S,S) channels_last
...             ...

The workers (:mod:`alexnet.data.feeder_worker`) start once, when the Feeder is made, and live
until ``close()``; each epoch only sends them its batches. Each batch is read by one worker into
a free slot of the ring (:mod:`alexnet.data.ring`); the training process, which only schedules
(a few small messages per batch), copies a filled slot to the GPU with one asynchronous copy on a
side stream, ``prefetch`` batches ahead, and gives the slot back once that copy has finished.
The consumer's stream waits on the copy's event (and ``record_stream`` keeps the memory alive).
With ``device_buffers=N`` the copies land in N fixed device buffers instead, taken in turn
(:mod:`alexnet.data.device_copies`: for CUDA graphs; a batch is valid until the next is taken).

``decode="cpu"`` (the default): the workers decode JPEGs with libjpeg-turbo; raw stores are
copied. ``decode="cuda"``: ``gpu_workers`` GPU workers decode every batch on the training GPU
(:mod:`alexnet.data.gpu_decode`: the hardware JPEG engines through nvImageCodec, or nvJPEG) and
put the pixels in the slot. ``decode="mixed"``: CPU and GPU workers together; each batch goes to
a GPU worker while one has room (GPU_DEPTH batches; GPU decoding costs the CPU far less), else to
the least busy CPU worker, so the GPU workers take as much as their speed allows. (On a CPU device,
for tests, a GPU worker decodes on the CPU.)

Order, sharding and resuming are those of :mod:`alexnet.data.order`. An error in a worker (a
JPEG that does not decode) is raised here as a one-line DataError naming the store file and the
image; a worker that dies is reported the same way.
"""

from __future__ import annotations

import weakref
from collections import deque

import numpy as np
import torch

from alexnet.data.decode import store_jpeg_decoder
from alexnet.data.device_copies import DeviceCopies
from alexnet.data.feeder_worker import source_of
from alexnet.data.gpu_decode import GPU_DECODERS, default_gpu_workers, resolve_decode, resolve_gpu_decoder
from alexnet.data.handoff import on_current_stream
from alexnet.data.inprocess import InProcessLoader
from alexnet.data.order import epoch_shards, num_batches
from alexnet.data.ring import Ring, SlotLayout
from alexnet.data.waits import Waits
from alexnet.data.workers import WorkerPool, default_workers
from alexnet.errors import DataError

__all__ = ["Feeder", "DECODES", "DEPTH", "GPU_DEPTH", "default_workers"]

DECODES = ("auto", "cpu", "cuda", "mixed")
DEPTH = 2  # batches queued per worker, so that none waits for the training process
# Batches queued per GPU worker: it keeps them all in flight (reading and submitting one while the GPU
# decodes and copies back the others), so its decoder never waits for its CPU side or for us.
GPU_DEPTH = 4
# Slots of the ring each GPU worker may fill ahead of the batch the training process waits for.
# Batches are used in order, and a CPU worker takes ~DEPTH x 0.15 s for its batches of 256, so a GPU
# worker (~40 batches/s) finishes many batches while an earlier one is still being decoded on a CPU;
# each waits in its slot. Without these slots it waits for a free one instead of decoding.
GPU_AHEAD = 16


class Feeder:
    """A persistent pool of loader workers for one split; ``epoch(e, start_batch)`` iterates one epoch.

    ``batch_size`` is the global batch (all ranks together); each rank reads only its shard.
    ``workers``: processes (None: :func:`default_workers`, which is 0 on the CPU; 0: no processes,
    each epoch is an in-process :class:`~alexnet.data.loader.BatchLoader`, so one code path serves
    CPU and GPU runs). ``prefetch``: batches copied to the device ahead of use. ``decode``: where a
    JPEG store is decoded: ``"cpu"``, ``"cuda"`` or ``"mixed"``, or ``"auto"``
    (:func:`alexnet.data.gpu_decode.resolve_decode`: mixed where that was measured to be faster);
    ``gpu_workers`` (default :func:`~alexnet.data.gpu_decode.default_gpu_workers`: where NVIDIA MPS
    runs 3, or 4 for one process at 256 images or more; else 1; 0 for ``"cpu"``) GPU worker processes with
    ``gpu_decoder``; ``cpu_decoder``: the CPU workers' JPEG decoder (:func:`alexnet.data.decode.store_jpeg_decoder`).
    ``gpu_ahead``: ring slots per GPU worker for batches finished early (see GPU_AHEAD; 0: none).
    ``device_buffers``: on CUDA, fixed device buffers the batches land in, in turn (0, the default:
    fresh memory from the caching allocator; else at least ``prefetch + 1``; a batch is then valid
    only until the next one is taken).
    """

    def __init__(self, split, batch_size: int, *, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                 device="cpu", rank: int = 0, world_size: int = 1, workers: int | None = None, prefetch: int = 2,
                 decode: str = "cpu", gpu_workers: int | None = None, gpu_decoder: str = "auto",
                 cpu_decoder: str = "auto", gpu_ahead: int = GPU_AHEAD, device_buffers: int = 0):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if decode not in DECODES:
            raise ValueError(f"unknown decode {decode!r}: {', '.join(DECODES)}")
        self.device = torch.device(device)
        self.decode_why = None  # why "auto" chose what it chose
        local_batch = batch_size // world_size
        if decode == "auto":
            decode, self.decode_why = resolve_decode(self.device, split.encoding, gpu_decoder, batch=local_batch)
        if decode != "cpu" and split.encoding != "jpeg":
            raise ValueError(f"decode={decode!r} needs a JPEG store")
        chosen = default_gpu_workers(local_batch) if gpu_workers is None else int(gpu_workers)
        self.gpu_workers = 0 if decode == "cpu" else chosen
        if decode != "cpu" and self.gpu_workers < 1:
            raise ValueError(f"decode={decode!r} needs at least one GPU worker, got {self.gpu_workers}")
        if gpu_decoder not in GPU_DECODERS:
            raise ValueError(f"unknown gpu_decoder {gpu_decoder!r}: {', '.join(GPU_DECODERS)}")
        # "auto" resolved here, where the log and the workers read the names.
        self.cpu_decoder = store_jpeg_decoder(cpu_decoder)[0]
        self.gpu_decoder = resolve_gpu_decoder(gpu_decoder, self.device) if decode != "cpu" else gpu_decoder
        if gpu_ahead < 0:
            raise ValueError(f"gpu_ahead must be >= 0, got {gpu_ahead}")
        self.gpu_ahead = int(gpu_ahead)
        self.split, self.batch_size = split, int(batch_size)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.decode, self.prefetch = decode, max(1, int(prefetch))
        if device_buffers and device_buffers < self.prefetch + 1:
            raise ValueError(f"device_buffers must be 0 or at least prefetch + 1 = {self.prefetch + 1}, "
                             f"got {device_buffers}")
        self.device_buffers = int(device_buffers)  # those in use, once set up (none in-process, on the CPU)
        self.n = len(split)
        self.batches_per_epoch = num_batches(self.n, self.batch_size, self.drop_last)
        if type(split).__name__ != "PreparedSplit":
            workers = 0  # any object with read(indices, out): read in this process
        self.workers = (default_workers(self.device, split.encoding, decode, self.gpu_workers) if workers is None
                        else int(workers))
        allowed = {"cpu": ">= 0", "cuda": "0", "mixed": "at least 1"}[decode]
        if self.workers < 0 or (decode == "mixed" and self.workers == 0) or (decode == "cuda" and self.workers):
            raise ValueError(f"workers (CPU) must be {allowed} with decode={decode!r}, got {self.workers}")
        self._labels = split.labels.numpy()
        self._gen = 0
        self._broken: DataError | None = None
        self._all = self.workers + self.gpu_workers  # CPU workers first, then GPU workers
        if self._all == 0:  # the in-process loader, one BatchLoader per epoch
            self.device_buffers = 0
            self._finalizer = weakref.finalize(self, _nothing)
            return
        self._start(-(-self.batch_size // self.world_size))
        self._finalizer = weakref.finalize(self, _shutdown, self._pool, self._ring, self._releasing)

    # -- set-up
    def _start(self, local_batch: int) -> None:
        source, longest = source_of(self.split, self.cpu_decoder)
        layout = SlotLayout(max(1, local_batch), self.split.size, pixels=True,
                            blob=max(1, local_batch) * longest if self.gpu_workers else 0)
        self._depth = [DEPTH] * self.workers + [GPU_DEPTH] * self.gpu_workers
        self._ring = Ring(sum(self._depth) + self.prefetch + 2 + self.gpu_workers * self.gpu_ahead, layout)
        self._free = deque(range(self._ring.slots))
        self._releasing: deque = deque()  # (event or None, slot): given back once the copy is done
        self._ready: dict[int, int] = {}  # batch -> slot, filled for this generation
        self._todo: deque = deque()  # (batch, rows, labels) not yet sent to a worker
        self._busy = [0] * self._all
        self.filled = [0] * self._all  # batches each worker has filled (CPU workers first), for reports
        self._filled_at_epoch = list(self.filled)
        self._waits = Waits()  # how long the training process waited for batches, and why
        self._cuda = self.device.type == "cuda"
        # Where the driver refuses to page-lock the ring, each slot goes through pinned staging buffers.
        staging = self.prefetch + 2 if self._cuda and not self._ring.register_cuda() else 0
        self._copies = (DeviceCopies(self.device, local_batch, self.split.size, staging, self.device_buffers)
                        if self._cuda else None)
        if self._copies is None or self._copies.buffers is None:
            self.device_buffers = 0
        device = self.device
        if self._cuda and device.index is None:  # the GPU workers decode on this process's GPU
            device = torch.device("cuda", torch.cuda.current_device())
        gpu = {"device": str(device), "decoder": self.gpu_decoder}
        self._pool = WorkerPool(self.workers, self._ring, source, self.gpu_workers, gpu)  # last: nothing can fail after

    # -- the public side
    def __len__(self) -> int:
        return self.batches_per_epoch

    def epoch(self, epoch: int, start_batch: int = 0):
        """The batches of epoch ``epoch`` from global batch ``start_batch``: an iterable with ``len()``,
        ``batches_per_epoch`` and ``start_batch``."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} is outside 0..{self.batches_per_epoch}")
        if self.closed:
            raise RuntimeError("this Feeder is closed")
        if self._all == 0:
            return InProcessLoader(self.split, self.batch_size, shuffle=self.shuffle, seed=self.seed, epoch=epoch,
                                   start_batch=start_batch, drop_last=self.drop_last, device=self.device,
                                   rank=self.rank, world_size=self.world_size, prefetch=self.prefetch, workers=0)
        self._filled_at_epoch = list(self.filled)
        self._waits.mark()
        return EpochBatches(self, int(epoch), int(start_batch))

    def close(self) -> None:
        """Stop the workers (within about a second) and free the ring. Idempotent."""
        self._finalizer()

    def __enter__(self) -> "Feeder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def describe(self) -> str:
        """One line: where the training batches are read and decoded."""
        procs = (f"{self.workers} worker process{'es' if self.workers > 1 else ''}" if self.workers
                 else "threads of the training process")
        if self.split.encoding != "jpeg":
            return f"{procs}, {self.split.encoding} store"
        why = f" ({self.decode_why})" if self.decode_why else ""
        if self.decode == "cpu":
            return f"{procs}, JPEG store decoded on the CPU ({self.cpu_decoder}){why}"
        gpu = f"{self.gpu_workers} GPU worker{'s' if self.gpu_workers > 1 else ''} ({self.gpu_decoder} decoder)"
        if self.decode == "cuda":
            return f"JPEG store decoded on the GPU by {gpu}{why}"
        return f"JPEG store decoded by {procs} and {gpu}, GPU workers first{why}"

    def gpu_share(self, since: list[int] | None = None, since_epoch: bool = False) -> float | None:
        """The share of the batches filled so far (since ``since``, an earlier copy of ``filled``; or,
        with ``since_epoch``, since the last :meth:`epoch` call) that GPU workers decoded (None: no GPU
        workers)."""
        if not self.gpu_workers:
            return None
        if since_epoch:
            since = self._filled_at_epoch
        done = [n - m for n, m in zip(self.filled, since or [0] * self._all)]
        return sum(done[self.workers:]) / max(1, sum(done))

    def waited(self) -> dict[str, float] | None:
        """Seconds the training process waited for batches since the last :meth:`epoch` call, by cause
        (:mod:`alexnet.data.waits`; None in-process)."""
        return self._waits.seconds() if self._all else None

    def pids(self) -> list[int]:
        return self._pool.pids() if self._all else []

    # -- scheduling (only the iterating thread calls these)
    def _begin(self, shards: list[torch.Tensor]) -> None:
        if self.closed:
            raise RuntimeError("this Feeder is closed")
        if self._broken is not None:
            raise self._broken
        self._pool.wait_ready()
        self._gen += 1
        if self._copies is not None:
            self._copies.released(every=True)  # delivered by an epoch that was not finished
        self._free.extend(self._ready.values())  # left by an epoch that was not finished
        self._ready.clear()
        self._waits.clear()
        self._failed: dict[int, DataError] = {}
        order = torch.cat(shards).numpy() if shards else np.zeros(0, np.int64)
        rows = self.split.stored_rows(order)
        labels = self._labels[order]
        self._todo.clear()
        at = 0
        for b, s in enumerate(shards):
            if len(s):
                self._todo.append((b, rows[at : at + len(s)], labels[at : at + len(s)]))
            at += len(s)

    def _reclaim(self) -> None:
        while self._releasing and (self._releasing[0][0] is None or self._releasing[0][0].query()):
            self._free.append(self._releasing.popleft()[1])

    def _dispatch(self) -> None:
        while self._todo and self._free:
            for kind in (range(self.workers, self._all), range(self.workers)):  # GPU workers first
                room = [w for w in kind if self._busy[w] < self._depth[w]]
                if room:
                    break
            else:
                return
            w = min(room, key=self._busy.__getitem__)
            b, rows, labels = self._todo.popleft()
            self._pool.send(w, (self._gen, b, self._free.popleft(), rows, labels))
            self._busy[w] += 1
            self._waits.given(b, w >= self.workers)

    def _collect(self, timeout: float) -> None:
        try:
            replies = self._pool.replies(timeout)
        except DataError as e:
            self._broken = e
            raise
        for kind, w, gen, b, slot, *problem in replies:
            self._busy[w] -= 1
            if gen != self._gen:
                self._free.append(slot)  # a batch of an abandoned epoch
            elif kind == "error":  # raised when the batch is due, not before
                self._free.append(slot)
                self._failed[b] = DataError(*problem)
            else:
                self._ready[b] = slot
                self.filled[w] += 1

    def _wait(self, b: int) -> int:
        """The slot of batch ``b`` of this generation, once a worker has filled it."""
        while True:
            self._reclaim()
            self._dispatch()
            if b in self._ready:
                self._waits.filled(b)
                return self._ready.pop(b)
            self._waits.waiting(b)
            if b in self._failed:
                raise self._failed.pop(b)
            if not self._free and self._releasing and not any(self._busy):
                self._releasing[0][0].synchronize()  # every slot waits for a copy to the device
                continue
            self._collect(0.5)

    def _deliver(self, b: int, slot: int, n: int):
        """(images (n,3,S,S), labels, event) on the device, from the filled slot of batch ``b``."""
        x, y = self._ring.images(slot, n), self._ring.labels(slot, n)
        if not self._cuda:
            x, y = x.clone(), y.clone()
            self._free.append(slot)
            if self.device.type != "cpu":
                x, y = x.to(self.device), y.to(self.device)
            return x.permute(0, 3, 1, 2), y, None
        x, y, ev, slot_free_after = self._copies.send(x, y)
        self._releasing.append((slot_free_after, slot))
        return x.permute(0, 3, 1, 2), y, ev

    def _empty(self):
        S = self.split.size
        x = torch.empty((0, S, S, 3), dtype=torch.uint8, device=self.device).permute(0, 3, 1, 2)
        return x, torch.empty(0, dtype=torch.int64, device=self.device), None

    def _produce(self, shards: list[torch.Tensor]):
        """(images, labels, event) for each batch. Batch k is waited for; the next ``prefetch`` are
        sent to the device as soon as they are filled, without waiting for them."""
        self._begin(shards)
        pending: deque = deque()
        nxt = 0

        def deliver(b: int, slot: int | None):
            n = len(shards[b])
            if n:
                return self._deliver(b, slot, n)
            if self._copies is not None:
                self._copies.skip()
            return self._empty()

        for k in range(len(shards)):
            if nxt == k:
                pending.append(deliver(k, self._wait(k) if len(shards[k]) else None))
                nxt += 1
            self._reclaim()
            self._dispatch()
            self._collect(0.0)
            self._dispatch()
            while nxt < len(shards) and nxt <= k + self.prefetch and (not len(shards[nxt]) or nxt in self._ready):
                self._waits.filled(nxt)
                pending.append(deliver(nxt, self._ready.pop(nxt, None)))
                nxt += 1
            yield pending.popleft()


class EpochBatches:
    """One epoch of a Feeder: ``len()`` batches from ``start_batch``, iterated once."""

    def __init__(self, feeder: Feeder, epoch: int, start_batch: int):
        self.feeder, self.epoch, self.start_batch = feeder, epoch, start_batch
        self.batches_per_epoch = feeder.batches_per_epoch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def shards(self) -> list[torch.Tensor]:
        f = self.feeder
        return epoch_shards(f.n, f.batch_size, shuffle=f.shuffle, seed=f.seed, epoch=self.epoch,
                            drop_last=f.drop_last, start_batch=self.start_batch, rank=f.rank,
                            world_size=f.world_size)

    def __iter__(self):
        f = self.feeder
        items = f._produce(self.shards())
        try:
            for x, y, ev in items:
                yield on_current_stream(x, y, ev, f.device)
                if f._copies is not None:
                    f._copies.released()
        finally:
            items.close()
            if f._copies is not None and not f.closed:
                f._copies.released(every=True)


def _nothing() -> None:
    pass


def _shutdown(pool, ring, releasing) -> None:
    """Stop the workers, wait for copies still reading the ring, free it (also at exit, when CUDA
    may already be shutting down: then there is nothing left to wait for)."""
    pool.close()
    try:
        for ev, _ in releasing:
            if ev is not None:
                ev.synchronize()
        releasing.clear()
        ring.close()
    except RuntimeError:
        pass
