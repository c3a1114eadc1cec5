"""Handing batches from a producer thread to the training loop, as the in-process loader and the GPU
decoder both do: a bounded queue that a stop event can interrupt, exceptions carried to the consumer,
and the consumer's CUDA stream made to wait for the producer's copy; and the Feeder's copies through
pinned staging buffers where the driver would not page-lock its ring."""

from __future__ import annotations

import queue
import threading

import torch

__all__ = ["Failure", "put", "stop_and_drain", "on_current_stream", "through_staging"]


class Failure:
    """An exception raised in the producer, to be raised again in the consumer."""

    def __init__(self, exc: BaseException):
        self.exc = exc


def put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put `item`, waiting for room until `stop` is set; False if it was not put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def stop_and_drain(stop: threading.Event, q: queue.Queue, thread: threading.Thread) -> None:
    """Stop the producer and empty the queue until it has ended (a full queue would block it)."""
    stop.set()
    while thread.is_alive():
        try:
            q.get_nowait()
        except queue.Empty:
            thread.join(0.05)


def on_current_stream(x: torch.Tensor, y: torch.Tensor, ev, device: torch.device) -> tuple:
    """x, y copied on a side stream that recorded `ev`: the consumer's stream waits for the copy, and
    the caching allocator keeps the memory until that stream is done with it."""
    if ev is not None:
        cur = torch.cuda.current_stream(device)
        cur.wait_event(ev)
        x.record_stream(cur)
        y.record_stream(cur)
    return x, y


def through_staging(staging, x: torch.Tensor, y: torch.Tensor, device):
    """(x, y) sent to ``device`` through the next of ``staging``'s page-locked buffers (a deque of
    [event, buffer], taken in turn; a buffer's last copy is waited for before it is reused), for a ring
    the driver would not page-lock. The caller records the new copy's event into ``staging[-1][0]``."""
    staging.rotate(-1)
    ev, buf = staging[-1]
    if ev is not None:
        ev.synchronize()
    buf[: len(x)].copy_(x)
    y = y.clone().pin_memory()
    return buf[: len(x)].to(device, non_blocking=True), y.to(device, non_blocking=True)
