"""Where a running `alexnet train` spends the machine's cores: after DELAY seconds, over SECONDS, the
cores busy in the busiest threads of the training process (its main thread, others by name[tid]), in its worker processes (all
its descendants), and on the whole machine (from /proc/stat). Linux only.

    python scripts/cpu_monitor.py DELAY SECONDS [LABEL]   # started beside the run; prints one block
"""

from __future__ import annotations

import collections
import os
import sys
import time

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
    """The oldest process running `alexnet train` (the training process, not its workers)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"alexnet" in cmd and b"train" in cmd and b"python" in os.path.basename(cmd[0]):  # not timeout, env
            found.append(int(pid))
    return min(found) if found else None


def _sample(root: int) -> tuple[dict, int, int]:
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


def main(delay: float, seconds: float, label: str = "") -> None:
    time.sleep(delay)
    pid = _training_pid()
    if pid is None:
        print(f"cpu_monitor {label}: no alexnet train process")
        return
    t0, (th0, ch0, busy0) = time.perf_counter(), _sample(pid)
    time.sleep(seconds)
    dt, (th1, ch1, busy1) = time.perf_counter() - t0, _sample(pid)
    per = lambda a, b: (b - a) / TICK / dt  # noqa: E731
    top = sorted(((per(th0.get(n, 0), v), n) for n, v in th1.items()), reverse=True)[:6]
    print(f"cpu_monitor {label}: machine {per(busy0, busy1):.2f} of {os.cpu_count()} cores busy; "
          f"workers {per(ch0, ch1):.2f}; training process {sum(c for c, _ in top):.2f} "
          f"({', '.join(f'{n} {c:.2f}' for c, n in top if c >= 0.02)})", flush=True)


if __name__ == "__main__":
    main(float(sys.argv[1]), float(sys.argv[2]), *sys.argv[3:4])
