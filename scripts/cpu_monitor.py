"""Where a running `alexnet train` spends the machine's cores during one epoch: the cores busy in the
busiest threads of the training process (its main thread, others by name[tid]), in its worker
processes (all its descendants), and on the whole machine (from /proc/stat). Linux only.

    python scripts/cpu_monitor.py RUN_DIR [LABEL] [--epoch 2] [--gpu]   # started beside the run

It waits for RUN_DIR/metrics.jsonl to hold the line of the epoch before EPOCH (so EPOCH has begun, after
that epoch's validation), samples every half second until EPOCH's own line appears, and prints the
median of the samples (the steady part: the epoch's validation and checkpoint at its end are a few
samples) and their mean. (It once slept a fixed time instead, and its window fell after 3.5-s epochs.)
``--gpu`` also samples GPU 0's utilisation and its JPEG engines' (``nvidia-smi -q -d UTILIZATION``, in a
thread of its own: whether the engines are what a JPEG run waits for).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import subprocess
import threading
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(path: str) -> tuple[str, int, int] | None:
    """(name, parent pid, utime + stime ticks) of a /proc/.../stat file."""
    try:
        text = open(path).read()
    except OSError:
        return None
    name = text[text.index("(") + 1 : text.rindex(")")]
    rest = text[text.rindex(")") + 2 :].split()
    return name, int(rest[1]), int(rest[11]) + int(rest[12])


def _training_pid() -> int | None:
    """The oldest Python process running `alexnet train` (the training process, not its workers)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"alexnet" in cmd and b"train" in cmd and b"python" in os.path.basename(cmd[0]):  # not timeout, env
            found.append(int(pid))
    return min(found) if found else None


def _sample(root: int) -> tuple[collections.Counter, int, int]:
    """(ticks per thread of ``root``, ticks of its descendants, busy ticks of the machine)."""
    threads = collections.Counter()
    for tid in os.listdir(f"/proc/{root}/task"):
        s = _stat(f"/proc/{root}/task/{tid}/stat")
        if s:
            threads["main" if int(tid) == root else f"{s[0]}[{tid}]"] += s[2]
    parents, ticks = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        s = _stat(f"/proc/{pid}/stat")
        if s:
            parents[int(pid)], ticks[int(pid)] = s[1], s[2]
    children = 0
    for pid in ticks:
        p = parents.get(pid)
        while p and p != root and p in parents:
            p = parents[p]
        if p == root and pid != root:
            children += ticks[pid]
    cpu = open("/proc/stat").readline().split()[1:]
    busy = sum(map(int, cpu)) - int(cpu[3]) - int(cpu[4])  # all but idle and iowait
    return threads, children, busy


def _gpu_utilisation() -> dict[str, float]:
    """GPU 0's utilisation percentages from nvidia-smi ({"GPU %": .., "JPEG %": ..}; {} without it)."""
    try:
        text = subprocess.run(["nvidia-smi", "-q", "-d", "UTILIZATION", "-i", "0"], capture_output=True,
                              text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for key, label in (("Gpu", "GPU %"), ("JPEG", "JPEG %")):
        m = re.search(rf"^\s*{key}\s*:\s*(\d+)\s*%", text, re.M)
        if m:
            found[label] = float(m.group(1))
    return found


def _lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def watch(run_dir: str, epoch: int = 2, interval: float = 0.5, timeout: float = 600.0, gpu: bool = False) -> dict | None:
    """Samples (cores busy per interval; with ``gpu``, also GPU and JPEG-engine percentages) over epoch
    ``epoch`` of the run writing ``run_dir``; None if it did not get there within ``timeout`` seconds."""
    metrics, end = Path(run_dir) / "metrics.jsonl", time.monotonic() + timeout
    while _lines(metrics) < epoch - 1:
        if time.monotonic() > end:
            return None
        time.sleep(0.1)
    pid = _training_pid()
    if pid is None:
        return None
    samples = collections.defaultdict(list)
    stop = threading.Event()

    def poll_gpu() -> None:
        while not stop.wait(interval):
            for k, v in _gpu_utilisation().items():
                samples[k].append(v)

    poller = threading.Thread(target=poll_gpu, daemon=True)
    if gpu:
        poller.start()
    last_t, last = time.perf_counter(), _sample(pid)
    while _lines(metrics) < epoch and time.monotonic() < end:
        time.sleep(interval)
        try:
            now_t, now = time.perf_counter(), _sample(pid)
        except FileNotFoundError:  # the run ended
            break
        dt = (now_t - last_t) * TICK
        samples["machine"].append((now[2] - last[2]) / dt)
        samples["workers"].append((now[1] - last[1]) / dt)
        for name, ticks in now[0].items():
            samples[name].append((ticks - last[0].get(name, ticks)) / dt)
        last_t, last = now_t, now
    stop.set()
    if gpu:
        poller.join()
    return dict(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("label", nargs="?", default="")
    ap.add_argument("--epoch", type=int, default=2)
    ap.add_argument("--gpu", action="store_true", help="also GPU 0's and its JPEG engines' utilisation (nvidia-smi)")
    a = ap.parse_args()
    samples = watch(a.run_dir, a.epoch, gpu=a.gpu)
    if not samples or not samples.get("machine"):
        print(f"cpu_monitor {a.label}: no samples of epoch {a.epoch} (the run never got there, or no alexnet train process)")
        return
    med = {k: statistics.median(v) for k, v in samples.items()}
    mean = {k: statistics.fmean(v) for k, v in samples.items()}
    gpu = [k for k in ("GPU %", "JPEG %") if k in med]
    threads = sorted((k for k in med if k not in ("machine", "workers", *gpu)), key=lambda k: -med[k])
    busy = [k for k in threads if med[k] >= 0.02][:6]
    print(f"cpu_monitor {a.label}: epoch {a.epoch}, {len(samples['machine'])} samples, cores busy, median (mean): "
          f"machine {med['machine']:.2f} ({mean['machine']:.2f}) of {os.cpu_count()}; workers {med['workers']:.2f} "
          f"({mean['workers']:.2f}); training process {sum(med[k] for k in threads):.2f}: "
          + ", ".join(f"{k} {med[k]:.2f}" for k in busy)
          + "".join(f"; {k.split()[0]} busy {med[k]:.0f}% ({mean[k]:.0f}%)" for k in gpu), flush=True)


if __name__ == "__main__":
    main()
