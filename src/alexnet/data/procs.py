"""Worker processes of the data package: how they start, and the machine's cores.

Workers start through a fork server (spawn where there is none): a clean process, started once
per program, that has imported torch and the worker modules and forks each worker from there.
That is safe after CUDA is initialised in the training process (nothing is forked from it) and
costs about 30 ms a worker after the first (spawn re-imports torch in every worker: seconds).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from contextlib import contextmanager

__all__ = ["context", "usable_cores", "local_processes", "worker_setup", "one_thread"]

# Imported once by the fork server, so that forked workers start warm.
PRELOAD = ["alexnet.data.feeder_worker", "alexnet.data.prepare_chunk", "torchvision.io",
           "torchvision.transforms.v2.functional"]


def context():
    """The multiprocessing context for data workers: forkserver (Linux, macOS), else spawn."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)  # takes effect if the server is not running yet
        return ctx
    return mp.get_context("spawn")


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask where there is one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def local_processes() -> int:
    """Training processes on this machine: torchrun's LOCAL_WORLD_SIZE, 1 without it."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


# Niceness of a loader's CPU worker processes: above 0, the training process and the GPU workers take a
# core first when they wake. 10 was measured at batch 256 on 16 cores (RESULTS.md, twelfth session) and
# was no faster (42,632 images/s against 42,936 at 0), so the default stays 0.
WORKER_NICE = 0


def worker_setup(cpu_worker: bool = False) -> None:
    """In a worker: leave Ctrl-C to the parent (which stops the workers), one thread each; a CPU
    worker (``cpu_worker``) at niceness WORKER_NICE."""
    import warnings

    import torch

    if cpu_worker and WORKER_NICE:
        os.nice(WORKER_NICE)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    from alexnet.data.decode import TV_CODEC_DEPRECATION

    warnings.filterwarnings("ignore", message=TV_CODEC_DEPRECATION, category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")


@contextmanager
def one_thread():
    """torch on one thread for a while: per-image work done in this process (``workers=1``) gains
    nothing from intra-op threads, and their spinning costs 10x on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
