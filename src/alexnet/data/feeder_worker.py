"""A loader worker process: reads the images of one batch straight into a slot of the shared ring.

It receives ``(generation, batch, slot, rows, labels)`` on its pipe and answers ``("done", ...)``
or ``("error", ..., path, problem)``; ``None`` stops it, and so does the end of the pipe or of the
training process (it checks every second). Ctrl-C is left to the training process.

Sources (a dict, see :func:`reader`):

* ``raw``: one ``preadv`` per image from the raw array into the slot, in file order;
* ``jpeg``: read each JPEG and decode it into the slot (``source["cpu_decoder"]``: simplejpeg or
  torchvision, both libjpeg-turbo; :func:`alexnet.data.decode.store_jpeg_decoder`); a GPU
  worker (``gpu`` given) copies the bytes into the slot's blob and decodes them on the GPU
  (:class:`alexnet.data.gpu_decode.GpuDecoding`), which writes the pixels into the slot.
"""

from __future__ import annotations

import os
from collections import deque

import numpy as np

from alexnet.data.decode import store_jpeg_decoder
from alexnet.data.procs import worker_setup
from alexnet.data.ring import Ring, RingHandle
from alexnet.errors import DataError

__all__ = ["main", "reader", "source_of"]


def source_of(split, cpu_decoder: str) -> tuple[dict, int]:
    """What the workers read of a prepared split (the source dict :func:`reader` takes), and the JPEG
    bytes a slot must hold for one image (GPU decoding; 0 for a raw store)."""
    from alexnet.data import format as F

    source = {"kind": "raw", "path": str(split.path), "size": split.size}
    if split.encoding == "raw":
        return source, 0
    source.update(kind="jpeg", offsets=str(split.data.path / F.offsets_file(split.name)), cpu_decoder=cpu_decoder)
    off = split.offsets()
    return source, int(np.diff(off).max()) if len(off) > 1 else 0


def _pread_into(fd: int, view: memoryview, offset: int, path: str, row: int) -> None:
    got = os.preadv(fd, [view], offset)
    while got < len(view):  # a short read: continue where it stopped
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:
            raise DataError(path, f"image {row} is cut short ({got} of {len(view)} bytes); prepare the data again")
        got += n


class RawReader:
    def __init__(self, source: dict):
        self.path, self.size = source["path"], source["size"]
        self.row = self.size * self.size * 3
        self.fd = os.open(self.path, os.O_RDONLY)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)  # no read-ahead for random rows

    def fill(self, ring: Ring, slot: int, rows: np.ndarray, bytes_only: bool = False) -> None:
        dst = ring.images(slot, len(rows)).view(len(rows), self.row).numpy()
        for j in np.argsort(rows, kind="stable").tolist():  # ascending file offsets
            _pread_into(self.fd, memoryview(dst[j]), int(rows[j]) * self.row, self.path, int(rows[j]))


class JpegReader:
    def __init__(self, source: dict):
        self.path, self.size = source["path"], source["size"]
        self.offsets = np.load(source["offsets"], allow_pickle=False)
        self.fd = os.open(self.path, os.O_RDONLY)
        self.buf = bytearray(int(np.diff(self.offsets).max()) if len(self.offsets) > 1 else 1)
        self.decoder, self.decode_into = store_jpeg_decoder(source.get("cpu_decoder", "auto"))

    def fill(self, ring: Ring, slot: int, rows: np.ndarray, bytes_only: bool = False) -> None:
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        order = np.argsort(starts, kind="stable").tolist()
        if bytes_only:
            lengths = ends - starts
            ring.lengths(slot, len(rows)).numpy()[:] = lengths
            at = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            blob = memoryview(ring.blob(slot).numpy())
            for j in order:
                _pread_into(self.fd, blob[at[j] : at[j] + lengths[j]], int(starts[j]), self.path, int(rows[j]))
            return
        dst = ring.images(slot, len(rows)).numpy()
        buf = memoryview(self.buf)
        for j in order:
            n = int(ends[j] - starts[j])
            _pread_into(self.fd, buf[:n], int(starts[j]), self.path, int(rows[j]))
            self.decode_into(buf[:n], dst[j], self.path, int(rows[j]))


def reader(source: dict):
    return RawReader(source) if source["kind"] == "raw" else JpegReader(source)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _problem(e: BaseException, source: dict) -> tuple[str, str]:
    if isinstance(e, DataError):
        return e.path, e.problem
    if isinstance(e, OSError):
        return source["path"], f"cannot be read ({e.strerror or e})"
    text = " ".join(str(e).split())[:300]
    return source["path"], f"loader worker failed: {type(e).__name__}: {text}"


def main(wid: int, conn, handle: RingHandle, source: dict, parent: int, gpu: dict | None = None) -> None:
    """The worker's life: attach, say ready, fill slots until told to stop. ``gpu``: this is a GPU
    worker (``{"device": ..., "decoder": ...}``), which keeps every batch it has been given in flight
    at once: it reads and submits the next batch while the GPU decodes and copies back the earlier
    ones, and answers each in turn once its pixels are in the ring."""
    worker_setup(cpu_worker=gpu is None)
    try:
        ring = Ring.attach(handle)
        read = reader(source)
        on_gpu = None
        if gpu is not None:
            from alexnet.data.gpu_decode import GpuDecoding

            on_gpu = GpuDecoding(ring, source, gpu["device"], gpu["decoder"])
        conn.send(("ready", wid, None, None, None))
    except BaseException as e:
        conn.send(("error", wid, None, None, None) + _problem(e, source))
        return
    pending: deque = deque()  # (reply, Decoded): a GPU worker's batches in flight, oldest first
    while True:
        try:
            while pending and pending[0][1].ready():
                conn.send(pending.popleft()[0])
            if pending and not conn.poll(0):  # nothing new to start: finish the oldest
                reply, decoded = pending.popleft()
                decoded.wait()
                conn.send(reply)
                continue
            if not pending and not conn.poll(1.0):
                if not _alive(parent):
                    return
                continue
            task = conn.recv()
        except (EOFError, OSError):  # the training process (or its end of the pipe) is gone
            return
        if task is None:
            return
        gen, b, slot, rows, labels = task
        try:
            read.fill(ring, slot, rows, bytes_only=on_gpu is not None)
            ring.labels(slot, len(labels)).numpy()[:] = labels
            if on_gpu is not None:
                pending.append((("done", wid, gen, b, slot), on_gpu.submit(ring, slot, rows)))
                continue
            reply = ("done", wid, gen, b, slot)
        except Exception as e:
            reply = ("error", wid, gen, b, slot) + _problem(e, source)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return
