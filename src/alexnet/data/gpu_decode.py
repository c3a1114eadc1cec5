"""Decoding a batch of the store's JPEGs on the GPU (``Feeder(decode="cuda" or "mixed")``).

The workers have put the batch's JPEG bytes in a slot; here ``torchvision.io.decode_jpeg`` takes
them as one list (nvJPEG, batched) on the Feeder's side stream. It runs in a thread of the
training process (:func:`in_thread`), since the call returns only when the batch is decoded and
the training loop must not wait for it; the thread holds the GIL only to split the slot into
tensors and to launch the decode.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import warnings

import torch

from alexnet.data.handoff import Failure, put, stop_and_drain
from alexnet.errors import DataError

__all__ = ["decode_slot", "in_thread"]


def _bad_image(parts: list[torch.Tensor], rows, size: int, path) -> DataError:
    """The first image of a batch that does not decode, found on the CPU (only after a failure)."""
    from alexnet.data.decode import decode_store_jpeg

    for part, row in zip(parts, rows):
        try:
            decode_store_jpeg(part, size, path, int(row))
        except DataError as e:
            return e
    return DataError(path, f"images {int(min(rows))}..{int(max(rows))}: the GPU decoder rejects the batch, "
                           "though each image decodes on the CPU; use decode='cpu'")


def decode_slot(feeder, slot: int, n: int, rows):
    """(images (n,3,S,S) channels_last, labels, event) on the feeder's device from a slot of JPEG
    bytes; the slot is given back once the event has passed (at once on a CPU device)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from alexnet.data.decode import TV_CODEC_DEPRECATION

    ring, S = feeder._ring, feeder.split.size
    lengths = ring.lengths(slot, n)
    parts = list(ring.blob(slot)[: int(lengths.sum())].split(lengths.tolist()))
    cuda = feeder.device.type == "cuda"
    with torch.cuda.stream(feeder._stream) if cuda else contextlib.nullcontext():
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=TV_CODEC_DEPRECATION, category=DeprecationWarning)
                images = decode_jpeg(parts, mode=ImageReadMode.RGB, device=feeder.device)
        except Exception:
            feeder._free.append(slot)
            raise _bad_image(parts, rows, S, feeder.split.path) from None
        for im, row in zip(images, rows):
            if tuple(im.shape) != (3, S, S):
                feeder._free.append(slot)
                raise DataError(feeder.split.path, f"image {int(row)} is {tuple(im.shape)}, expected (3, {S}, {S}); "
                                                   "prepare the data again")
        x = torch.stack([im.permute(1, 2, 0) for im in images])  # (n,S,S,3): channels_last storage
        ev = None
        if cuda:
            y = ring.labels(slot, n).to(feeder.device, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(feeder._stream)
        else:
            y = ring.labels(slot, n).clone()
    feeder._releasing.append((ev, slot))
    return x.permute(0, 3, 1, 2), y, ev


_END = object()


def in_thread(items, depth: int, device: torch.device):
    """Iterate the generator ``items`` in a thread, ``depth`` items ahead; closing this generator
    stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    index = None
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()

    def run() -> None:
        if index is not None:
            torch.cuda.set_device(index)
        try:
            for item in items:
                if not put(q, item, stop):
                    return
            put(q, _END, stop)
        except BaseException as e:  # raised in the consumer
            put(q, Failure(e), stop)
        finally:
            items.close()

    th = threading.Thread(target=run, name="alexnet-gpu-decode", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, Failure):
                raise item.exc
            yield item
    finally:
        stop_and_drain(stop, q, th)
