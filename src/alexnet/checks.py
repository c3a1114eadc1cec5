"""The training loop's checks, read from the GPU a step late so that its queue never runs dry.

Every few steps the loop reads the loss (is it finite, is the run learning), and, the same on every
process, whether a stop signal came and whether a checkpoint is due by the clock. Reading a value the
GPU computes is a wait for the GPU. Waiting right after launching step k empties the GPU's queue: it
then idles from the end of step k until the host has woken, taken the next batch and launched step
k+1. Measured on an H200 at batch 256 from a JPEG store (2026-12-01, `alexnet profile`): 0.34 ms of
idle GPU a step, 5.8% of the step, with a read every 10 steps, while the loader's workers held the
cores a sleeping host thread must wake on.

So :func:`ask` only queues the read behind step k (the values copied to page-locked host memory, and
an event recorded, in stream order; under torchrun after the all-reduce that makes them agree), and
:meth:`Check.answer`, called once step k+1 has been launched, waits for step k alone while the GPU
has step k+1 to run:

    check = ask(run, loss)          # after launching step k: nothing waits
    ...                             # launch step k+1
    loss, stop, time_due = check.answer()

Decisions then come a step late: a stop or a clock-due checkpoint saves the state after step k+1,
which is as good a place to stop as any (the checkpoint records where). On the CPU, where nothing
runs ahead, the answer is read at once.
"""

from __future__ import annotations

import time

import torch

from alexnet import runtime

__all__ = ["Check", "ask"]


class Check:
    """One check's values on their way from the device: ``answer()`` waits for them (once)."""

    def __init__(self, step: int, values, event=None, host=None, flags: tuple[bool, bool] | None = None):
        self.step = step                          # the run's step count when it was asked
        self._values, self._event, self._host, self._flags = values, event, host, flags

    def answer(self) -> tuple[float, bool, bool]:
        """(the run's loss, stop now, a checkpoint is due by the clock), the same on every process."""
        if self._event is not None:
            self._event.synchronize()             # sleeps (BLOCKING_WAITS) until the step is done
            self._event = None
            self._values = self._host.tolist()
        if self._flags is not None:               # one process: the flags are this host's own
            return self._values[0], *self._flags
        value, stop_any, due_any = self._values
        return value, stop_any > 0, due_any > 0


def ask(run, loss: torch.Tensor) -> Check:
    """Queue the check after the step that computed ``loss`` (a collective under torchrun: every
    process asks at the same step). ``run``: its ``global_step``, ``stop``, ``last_save``,
    ``cfg.checkpoint_minutes``, ``dist`` and ``placement.weight`` are read."""
    stop = bool(run.stop.signal)
    time_due = time.monotonic() - run.last_save > run.cfg.checkpoint_minutes * 60
    loss = loss.detach().float().reshape(1)
    cuda = loss.device.type == "cuda"
    if not run.dist.enabled:
        values, flags = loss, (stop, time_due)
    else:
        extra = torch.tensor([float(stop), float(time_due)], pin_memory=cuda)
        values = torch.cat([loss * run.placement.weight, extra.to(loss.device, non_blocking=cuda)])
        run.dist.sum_(values)
        flags = None
    if not cuda:
        return Check(run.global_step, values.tolist(), flags=flags)
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    host.copy_(values, non_blocking=True)
    event = torch.cuda.Event(blocking=runtime.BLOCKING_WAITS)
    event.record(torch.cuda.current_stream(loss.device))
    return Check(run.global_step, None, event, host, flags)
