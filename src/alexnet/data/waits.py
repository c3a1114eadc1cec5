"""How long the training process waited for its batches, and why: the Feeder's account of a data-bound
epoch.

Batches are used in order. When the training process asks for a batch that is not filled yet, it waits;
that wait is split by what held the batch:

* ``"ring full"``: the batch had not been given to a worker yet, because every slot of the ring was
  taken (by batches in flight, batches filled ahead, copies to the GPU not yet finished);
* ``"CPU workers"`` / ``"GPU workers"``: the batch was with a worker of that kind (the time from when it
  was given out, or from when the wait began if later, to when it was filled).

The training process waits on the host; with CUDA graphs the GPU may still be running steps queued
before, so the total is an upper bound on the GPU's idle time, and close to it when the run is data
bound throughout.
"""

from __future__ import annotations

import time

__all__ = ["Waits", "KINDS"]

KINDS = ("ring full", "CPU workers", "GPU workers")


class Waits:
    """The Feeder's ledger. ``given(b, gpu)`` when batch ``b`` goes to a worker; ``waiting(b)`` each time
    the training process finds ``b`` not filled; ``filled(b)`` once it has it. ``seconds()``: the totals
    since the last ``mark()`` (the Feeder marks each epoch), by :data:`KINDS`."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.total = dict.fromkeys(KINDS, 0.0)
        self._mark = dict(self.total)
        self._given: dict[int, tuple[float, bool]] = {}  # batch -> (when, to a GPU worker)
        self._since: dict[int, float] = {}  # batch -> when the wait for it began

    def clear(self) -> None:
        """A new epoch's batches (the numbers start again)."""
        self._given.clear()
        self._since.clear()

    def given(self, b: int, gpu: bool) -> None:
        self._given[b] = (self.clock(), gpu)

    def waiting(self, b: int) -> None:
        self._since.setdefault(b, self.clock())

    def filled(self, b: int) -> None:
        began = self._since.pop(b, None)
        given = self._given.pop(b, None)
        if began is None:
            return
        now = self.clock()
        at = now if given is None else max(began, given[0])  # given out during the wait: the ring was full before
        self.total["ring full"] += at - began
        if given is not None:
            self.total["GPU workers" if given[1] else "CPU workers"] += now - at

    def mark(self) -> None:
        self._mark = dict(self.total)

    def seconds(self) -> dict[str, float]:
        return {k: self.total[k] - self._mark[k] for k in KINDS}
