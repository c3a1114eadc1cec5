"""The Feeder's copies of filled ring slots to its GPU (:class:`DeviceCopies`): one asynchronous copy on
a side stream per batch, its event recorded for the consumer's stream to wait on; through pinned staging
buffers where the driver would not page-lock the ring; and, where asked, into fixed device buffers.

:class:`DeviceBuffers`: fixed device buffers that batches land in, taken in turn, so that a consumer
replaying CUDA graphs can capture one graph per buffer and read each batch where it lies
(:class:`alexnet.step.GraphedStep`: no copy into a graph's own input). A buffer is written again only
after the consumer's stream is done with the batch it held: when the consumer asks for the next batch it
has queued all its use of the last one, and an event recorded then on its stream is what the next copy
into that buffer waits for. So a batch is the consumer's until it asks for the next one: work it queues
on a batch after that (or a batch kept and read later) may see a later batch (N buffers, N > prefetch).
"""

from __future__ import annotations

from collections import deque

import torch

from alexnet import runtime
from alexnet.data.handoff import through_staging

__all__ = ["DeviceCopies", "DeviceBuffers"]


class DeviceCopies:
    """Copies of (B, S, S, 3) uint8 batches and their labels from a ring to CUDA ``device``: through
    ``staging`` (pinned buffers, for a ring the driver would not page-lock), else into ``buffers``
    fixed device buffers (0: fresh memory from the caching allocator each time)."""

    def __init__(self, device: torch.device, batch: int, size: int, staging: int = 0, buffers: int = 0):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.staging: deque = deque(
            [None, torch.empty((batch, size, size, 3), dtype=torch.uint8, pin_memory=True)] for _ in range(staging))
        self.buffers = DeviceBuffers(buffers, batch, size, device) if buffers and not staging else None

    def send(self, x: torch.Tensor, y: torch.Tensor):
        """(images, labels on the device, the copy's event, the event after which the ring's slot may be
        filled again: None where the slot was already copied into staging)."""
        with torch.cuda.stream(self.stream):
            if self.staging:
                x, y = through_staging(self.staging, x, y, self.device)
            elif self.buffers is not None:
                x, y = self.buffers.put(x, y, self.stream)
            else:
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
            ev = torch.cuda.Event(blocking=runtime.BLOCKING_WAITS)  # waited on when every slot is in use
            ev.record(self.stream)
        if self.staging:
            self.staging[-1][0] = ev
        return x, y, ev, None if self.staging else ev

    def released(self, every: bool = False) -> None:
        """The consumer asked for the next batch (``every``: it is done with every batch delivered)."""
        if self.buffers is not None:
            self.buffers.released(every)

    def skip(self) -> None:
        """An empty batch was delivered (nothing copied)."""
        if self.buffers is not None:
            self.buffers.skip()


class DeviceBuffers:
    """``count`` buffers for (batch, S, S, 3) uint8 images and (batch,) labels on ``device``."""

    def __init__(self, count: int, batch: int, size: int, device: torch.device):
        self.device = device
        # [event after the consumer's last use, images, labels] each, taken in turn
        self._bufs = deque([None, torch.empty((batch, size, size, 3), dtype=torch.uint8, device=device),
                            torch.empty(batch, dtype=torch.int64, device=device)] for _ in range(count))
        self._unreleased: deque = deque()  # delivered and not yet released, in order (None: an empty batch)

    def put(self, x: torch.Tensor, y: torch.Tensor, stream: torch.cuda.Stream) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy host batch (x, y) into the next buffer on ``stream`` (the current one) once the consumer
        is done with the buffer's last batch; the buffer's (images, labels) views."""
        self._bufs.rotate(-1)
        buf = self._bufs[-1]
        if buf[0] is not None:
            stream.wait_event(buf[0])
        n = len(x)
        x = buf[1][:n].copy_(x, non_blocking=True)
        y = buf[2][:n].copy_(y, non_blocking=True)
        self._unreleased.append(buf)
        return x, y

    def skip(self) -> None:
        """An empty batch was delivered (no buffer): released in its turn like the others."""
        self._unreleased.append(None)

    def released(self, every: bool = False) -> None:
        """The consumer has asked for the next batch (``every``: it is done with every batch delivered
        so far, as when an epoch ended or was left): the last one's buffer may be written once the
        consumer's stream has got this far."""
        if not self._unreleased:
            return
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(self.device))
        for _ in range(len(self._unreleased) if every else 1):
            buf = self._unreleased.popleft()
            if buf is not None:
                buf[0] = ev
