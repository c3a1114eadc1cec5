"""Where a real `alexnet train` run's step time goes: its loader, decoders and copies beside it.

    alexnet profile [--at-step 300] [--steps 200] [--json-out F] TRAIN OPTIONS...

Runs `alexnet train` with TRAIN OPTIONS in this process and traces the training process's GPU work
(torch.profiler) over STEPS steps from its step AT-STEP (counted from the start, so past compilation and
the loader's start), then stops the run. Per step it reports the wall time, the time the process's
kernels and copies kept its GPU busy (the union of their intervals over all its streams), the time left
idle, and the kernel time by category (:func:`alexnet.tools.timing.categorize`); and how much of the idle time lies in
gaps of LONG_GAP_MS or more, where the GPU ran out of queued work; the gaps by length and by the kind of
kernel that ended them (a gap before a step's first kernel is the host or the handoff; one before a kernel
inside a replayed graph is the GPU busy with another process's work, e.g. a GPU decoder's, under MPS).

Read it against the same step on GPU-resident batches (`alexnet bench --rows step --only
alexnet2012:graphed --profile`): idle time is the run waiting (for batches, or for its own host), and
kernels slower than there are the mark of work beside them, e.g. GPU workers decoding under MPS, whose
kernels this process's trace does not see. On the CPU it reports the wall time only. Keep the window
inside one epoch: its wall time counts whatever runs between the steps (an epoch's validation, a
checkpoint), and the table says when it did not. Tracing itself adds a little to each step.
"""

from __future__ import annotations

import time

import torch

__all__ = ["Window", "union_ms", "gaps_before", "gap_profile", "summarize", "profile_run", "table"]

#: Idle gaps at least this long (ms) are counted apart: a drained queue (the host waited for the GPU,
#: then for itself or for a batch), not the launch latency between kernels.
LONG_GAP_MS = 0.5


def union_ms(intervals) -> float:
    """Milliseconds covered by the union of (start_us, end_us) intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total / 1e3


def gaps_before(items) -> list[tuple[float, object]]:
    """(gap ms, what started the gap's end) for each gap between the union of (start_us, end_us, what)."""
    gaps, end = [], None
    for a, b, what in sorted(items, key=lambda t: (t[0], t[1])):
        if end is not None and a > end:
            gaps.append(((a - end) / 1e3, what))
        end = b if end is None else max(end, b)
    return gaps


#: How many of the kernels by name (:data:`alexnet.tools.timing.TOP_KERNELS` kept) the table shows.
TOP_KERNELS_SHOWN = 15

#: Upper edges (ms) of the lengths the idle gaps are counted by.
GAP_EDGES_MS = (0.01, 0.05, 0.2, LONG_GAP_MS)


def _gap_label(lo: float, hi: float | None) -> str:
    us = lambda ms: f"{ms * 1e3:g}"  # noqa: E731
    return f"under {us(hi)} us" if lo == 0 else f"{us(lo)} us or more" if hi is None else f"{us(lo)}-{us(hi)} us"


def gap_profile(gaps: list[tuple[float, str]], steps: int, top: int = 5) -> dict:
    """The idle gaps a step: by length ({label: [count, ms]}) and by the kernel category that ended
    them (the top ``top`` by ms): a gap before a step's first kernel is the host or the handoff, a
    gap before one in the middle of a replayed graph is the GPU busy with other work."""
    by_length, lo = {}, 0.0
    for hi in (*GAP_EDGES_MS, None):
        inside = [g for g, _ in gaps if g >= lo and (hi is None or g < hi)]
        by_length[_gap_label(lo, hi)] = [len(inside) / steps, sum(inside) / steps]
        lo = hi
    by_next: dict[str, float] = {}
    for g, what in gaps:
        by_next[what] = by_next.get(what, 0.0) + g / steps
    return {"by_length": by_length, "before": dict(sorted(by_next.items(), key=lambda kv: -kv[1])[:top])}


class _Done(Exception):
    """Raised by the step after the window: ends the run at once (the run closes its loader)."""


class Window:
    """Wraps a run's step: calls AT_STEP .. AT_STEP + STEPS - 1 are traced, the next one ends the run."""

    def __init__(self, step, at_step: int, steps: int, device: torch.device, epoch=lambda: 0):
        """``epoch``: the run's epoch now (a window across an epoch's end also times its validation)."""
        self._step, self.at_step, self.steps, self.device, self._epoch = step, at_step, steps, device, epoch
        self.calls, self.result, self.batch = 0, None, None
        self._prof, self._t0, self._first_epoch = None, 0.0, 0

    def __getattr__(self, name):          # reset_sums, sums, ...: the wrapped step's
        return getattr(self._step, name)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, images, labels):
        if self.calls == self.at_step:
            from torch.profiler import ProfilerActivity, profile

            self._sync()
            cuda = self.device.type == "cuda"
            self._prof = profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU])
            self._prof.__enter__()
            self._t0, self._first_epoch = time.perf_counter(), self._epoch()
        elif self.calls == self.at_step + self.steps:
            self._sync()
            wall = time.perf_counter() - self._t0
            self._prof.__exit__(None, None, None)
            self.result = summarize(self._prof, wall, self.steps, self.batch, self.device)
            self.result["epochs"] = [self._first_epoch + 1, self._epoch() + 1]
            raise _Done
        self.calls += 1
        self.batch = len(labels)
        return self._step(images, labels)


def summarize(prof, wall_s: float, steps: int, batch: int, device: torch.device) -> dict:
    """Per step: wall ms, the GPU's busy ms (union of this process's kernels and copies), idle ms (and
    its gaps: :func:`gap_profile`), kernel ms by category, and the longest kernels and copies by name
    (``top_kernels``, as `alexnet bench --profile` reports the resident step's, to be read against it)."""
    from alexnet.tools.timing import categorize, device_events, top_kernels

    wall_ms = wall_s * 1e3 / steps
    out = {"steps": steps, "batch": batch, "wall_ms": wall_ms, "images_per_s": batch * steps / wall_s}
    if device.type != "cuda":
        return out
    items, cats, named = [], {}, {}
    for evt, us in device_events(prof):
        c = categorize(evt.name)
        items.append((evt.time_range.start, evt.time_range.end, c))
        cats[c] = cats.get(c, 0.0) + us / 1e3 / steps
        total, calls = named.get(evt.name, (0.0, 0))
        named[evt.name] = (total + us, calls + 1)
    busy = union_ms([(a, b) for a, b, _ in items]) / steps
    gaps = gaps_before(items)
    long = [g for g, _ in gaps if g >= LONG_GAP_MS]
    out.update(busy_ms=busy, idle_ms=max(0.0, wall_ms - busy), long_gaps=len(long), long_gap_ms=sum(long) / steps,
               gaps=gap_profile(gaps, steps), kernel_ms=dict(sorted(cats.items(), key=lambda kv: -kv[1])),
               top_kernels=top_kernels(named, steps))
    return out


def profile_run(cfg, at_step: int = 300, steps: int = 200, given: set[str] | None = None, log=print) -> dict:
    """Train ``cfg`` (a TrainConfig) as `alexnet train` does and return :func:`summarize`'s dict for its
    steps ``at_step`` to ``at_step + steps - 1``; the run stops after them. Raises AlexnetError where the
    run ends before the window does."""
    import alexnet.train as T
    from alexnet.errors import AlexnetError

    made = {}
    setup = T.setup

    def traced_setup(cfg, *a, **k):
        run = setup(cfg, *a, **k)
        run.step = made["window"] = Window(run.step, at_step, steps, run.placement.devices[0], lambda: run.epoch)
        return run

    T.setup = traced_setup
    try:
        T.train(cfg, log=log, given=given)
    except _Done:
        pass
    finally:
        T.setup = setup
    window = made.get("window")
    if window is None or window.result is None:
        ran = window.calls if window is not None else 0
        raise AlexnetError(f"the run ended after {ran} steps, before the window (steps {at_step} to "
                           f"{at_step + steps - 1}) did: train longer (--epochs) or lower --at-step")
    return window.result


def table(r: dict) -> str:
    lines = [f"window: {r['steps']} steps of {r['batch']} images: {r['wall_ms']:.3f} ms a step, "
             f"{r['images_per_s']:,.0f} images/s"]
    if r["epochs"][0] != r["epochs"][1]:
        lines.append(f"(the window ran from epoch {r['epochs'][0]} into {r['epochs'][1]}: its wall time includes the "
                     "end of an epoch, validation and all; keep it inside one epoch with --at-step and --steps)")
    if "busy_ms" in r:
        lines.append(f"GPU busy with this process's work: {r['busy_ms']:.3f} ms a step "
                     f"({100 * r['busy_ms'] / r['wall_ms']:.1f}%), idle {r['idle_ms']:.3f} ms")
        lines.append(f"of which in gaps of {LONG_GAP_MS} ms or more: {r['long_gap_ms']:.3f} ms a step "
                     f"({r['long_gaps']} gaps in {r['steps']} steps)")
        if "gaps" in r:
            lines.append("idle gaps a step, by length (count, ms): " + "; ".join(
                f"{k} {n:.1f}, {ms:.3f}" for k, (n, ms) in r["gaps"]["by_length"].items()))
            lines.append("idle gaps a step, by the kind of kernel that ended them (ms): " + "; ".join(
                f"{k} {ms:.3f}" for k, ms in r["gaps"]["before"].items()))
        lines.append("kernel and copy time a step (ms; streams overlap, so these may add up to more than busy):")
        lines += [f"  {c:<40}{ms:>9.3f}" for c, ms in r["kernel_ms"].items()]
        if r.get("top_kernels"):
            lines.append(f"the {TOP_KERNELS_SHOWN} longest kernels and copies (ms a step, calls a step, name):")
            lines += [f"  {k['ms_per_step']:8.3f} {k['calls_per_step']:6.2f}  {k['name'][:100]}"
                      for k in r["top_kernels"][:TOP_KERNELS_SHOWN]]
    return "\n".join(lines)
