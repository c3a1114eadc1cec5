"""The loader's worker processes, seen from the training process: start, talk, notice death, stop.

Each worker has its own duplex pipe; tasks go down it, replies come back up. A worker that dies
(killed, out of memory) is noticed through its process sentinel and reported as a DataError.
Workers are daemonic (multiprocessing stops them at exit) and stop by themselves when their pipe
closes or the training process disappears, so none outlives a killed training process.
"""

from __future__ import annotations

import os
import selectors
import time

import torch

from alexnet.data.procs import context, local_processes, usable_cores
from alexnet.data.ring import Ring
from alexnet.errors import DataError

__all__ = ["WorkerPool", "default_workers", "RAW_WORKERS"]

RAW_WORKERS = 4  # copying raw rows from the page cache: ~2-4 GB/s each; 4 cover 43,000 images/s at 256


def default_workers(device, encoding: str, decode: str = "cpu", gpu_workers: int = 0) -> int:
    """CPU worker processes for a loader on ``device``: none on the CPU (training there is slow and
    uses the same cores); on a GPU the cores this rank can spare, leaving two for the training
    process and one for each GPU worker. Raw stores only copy bytes: at most RAW_WORKERS. JPEGs all
    decoded by GPU workers (``decode="cuda"``): none."""
    if torch.device(device).type != "cuda" or decode == "cuda":
        return 0
    local_ranks = local_processes()
    spare = max(1, usable_cores() // local_ranks - 2 - (gpu_workers if decode == "mixed" else 0))
    if encoding == "raw":
        return min(spare, RAW_WORKERS)
    return spare


class WorkerPool:
    """``workers`` processes running :func:`alexnet.data.feeder_worker.main` on one ring and source."""

    def __init__(self, workers: int, ring: Ring, source: dict, gpu_workers: int = 0, gpu: dict | None = None):
        """``workers`` CPU workers, then ``gpu_workers`` GPU workers (``gpu``: their device and decoder)."""
        from alexnet.data import feeder_worker

        ctx = context()
        self.source = source
        self.conns, self.procs = [], []
        self._starting = set(range(workers + gpu_workers))
        try:
            for w in range(workers + gpu_workers):
                mine, theirs = ctx.Pipe(duplex=True)
                on_gpu = gpu if w >= workers else None
                p = ctx.Process(target=feeder_worker.main,
                                args=(w, theirs, ring.handle(), source, os.getpid(), on_gpu),
                                name=f"alexnet-loader-{'gpu-' if on_gpu else ''}{w}", daemon=True)
                p.start()
                theirs.close()
                self.conns.append(mine)
                self.procs.append(p)
        except BaseException:
            self.close()
            raise
        self._selector = selectors.DefaultSelector()  # registered once: waiting costs no set-up per batch
        for w, (conn, p) in enumerate(zip(self.conns, self.procs)):
            self._selector.register(conn, selectors.EVENT_READ, (w, True))
            self._selector.register(p.sentinel, selectors.EVENT_READ, (w, False))

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def wait_ready(self, timeout: float = 600.0) -> None:
        """Block until every worker has attached the ring and opened its files."""
        deadline = time.monotonic() + timeout
        while self._starting:
            if time.monotonic() > deadline:
                raise DataError(self.source["path"], f"loader workers did not start within {timeout:.0f} s")
            for reply in self.replies(1.0):
                raise RuntimeError(f"loader worker replied before any task: {reply[:4]}")

    def send(self, w: int, task) -> None:
        try:
            self.conns[w].send(task)
        except (BrokenPipeError, OSError):
            raise self._died(w) from None

    def _died(self, w: int) -> DataError:
        p = self.procs[w]
        p.join(0.5)
        code = p.exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited (code {code})"
        return DataError(self.source["path"], f"loader worker {w} (pid {p.pid}) {how}; the batch it was reading "
                                              "is lost: restart the run (it resumes from its last checkpoint)")

    def replies(self, timeout: float) -> list[tuple]:
        """Replies that have arrived, waiting up to ``timeout`` s for the first one; raises on an error
        while starting and on a worker's death."""
        events = [key.data for key, _ in self._selector.select(timeout)]
        out = []
        for w, is_pipe in sorted(events, key=lambda e: not e[1]):  # replies first, then deaths
            if not is_pipe:
                raise self._died(w)
            conn = self.conns[w]
            try:
                while conn.poll():
                    reply = conn.recv()
                    if reply[0] == "ready":
                        self._starting.discard(w)
                    elif reply[0] == "error" and reply[2] is None:  # while starting
                        raise DataError(*reply[5:])
                    else:
                        out.append(reply)
            except (EOFError, OSError):
                raise self._died(w) from None
        return out

    def close(self) -> None:
        """Ask every worker to stop; terminate those still busy after a second."""
        for c in self.conns:
            try:
                c.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 1.0
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(1.0)
            if p.is_alive():
                p.kill()
                p.join()
        if hasattr(self, "_selector"):
            self._selector.close()
        for c in self.conns:
            c.close()
        self.conns, self.procs = [], []
