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

from alexnet.data.gpu_decode import GPU_WORKERS_LARGE_BATCH

__all__ = ["Waits", "KINDS", "BOUND_SHARE", "data_bound_hint"]

KINDS = ("ring full", "CPU workers", "GPU workers")
BOUND_SHARE = 0.05  # an epoch that waited longer than this share of its time for batches was set by the data


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


def data_bound_hint(waited: dict[str, float], seconds: float, workers: int, gpu_workers: int, jpeg: bool) -> str | None:
    """A line for the run's log when an epoch of ``seconds`` waited more than :data:`BOUND_SHARE` of its time
    for batches (``waited``: the Feeder's totals by :data:`KINDS`): what held the batches most and what
    may help, for a loader of ``workers`` CPU and ``gpu_workers`` GPU workers reading a JPEG store or not.
    None when the data kept up."""
    total = sum(waited.values())
    if seconds <= 0 or total <= BOUND_SHARE * seconds:
        return None
    kind = max(KINDS, key=lambda k: waited.get(k, 0.0))
    if kind == "CPU workers" and jpeg:
        if not gpu_workers:
            gpu = "GPU workers (--decode mixed, on a GPU with JPEG engines and nvImageCodec)"
        elif gpu_workers < GPU_WORKERS_LARGE_BATCH:
            gpu = "more GPU workers (--gpu-workers)"
        else:  # docs/RESULTS.md, eighteenth session: 5 against 4 at batch 256
            gpu = (f"more GPU workers (--gpu-workers; past {GPU_WORKERS_LARGE_BATCH} on a 16-core H200 they slowed "
                   "the step more than they fed it)")
        why = (f"the CPU workers ({workers}) decode JPEGs more slowly than the step trains; more cores "
               f"(--loader-workers), {gpu} or a raw store that fits in memory (alexnet prepare --encoding raw) "
               "would feed it faster")
    elif kind == "CPU workers":
        why = (f"the CPU workers ({workers}) read raw images more slowly than the step trains: the store is not all "
               "in the page cache (memory, a faster disk), or more workers are needed (--loader-workers)")
    elif kind == "GPU workers":
        why = (f"the GPU workers ({gpu_workers}) decode more slowly than the step trains; more GPU workers "
               "(--gpu-workers) or CPU workers (--loader-workers) would take more of the batches")
    else:
        why = "every slot of the loader's ring was taken (batches in flight or not yet copied to the GPU)"
    return (f"data-bound: this epoch waited {total:.1f} s of its {seconds:.1f} s ({total / seconds:.0%}) for "
            f"batches, most for the {kind}: {why}")
