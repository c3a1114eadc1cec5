"""Timing for the benchmarks: CUDA events (or the host clock), warm-up, the median of alternating runs,
the machine they ran on, and a profiler breakdown of where a step's GPU time goes."""

from __future__ import annotations

import math
import os
import statistics
import time

import torch

__all__ = ["Timer", "measure", "environment", "rate", "categorize", "profile_breakdown", "top_kernels", "device_events", "device_busy"]


class Timer:
    """Milliseconds of `steps` calls of a function: CUDA events on CUDA, the host clock elsewhere.
    With several GPUs in use, `sync` waits for all of them."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            for i in range(torch.cuda.device_count()):
                torch.cuda.synchronize(i)

    def run(self, fn, steps: int) -> float:
        self.sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        self.sync()
        return (time.perf_counter() - t0) * 1e3


def measure(fns: dict, timer: Timer, warmup: int, steps: int, repeats: int, min_run_ms: float | None = None,
            log=None) -> dict:
    """Median ms per call of each function; warm-up first, then the functions alternate run by run.

    On CUDA each run lasts at least `min_run_ms` (default 250 ms: more steps for fast calls), and an
    untimed run of that length follows the warm-up, so the clocks are up before timing starts.
    """
    out, n_steps = {}, {}
    if min_run_ms is None:
        min_run_ms = 250.0 if timer.cuda else 0.0
    for name, fn in fns.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        timer.sync()
        out[name] = {"warmup_s": time.perf_counter() - t0, "runs_ms": []}
        n = steps
        if min_run_ms > 0:
            per = timer.run(fn, steps) / steps
            n = max(steps, math.ceil(min_run_ms / max(per, 1e-3)))
            timer.run(fn, n)                              # at speed before the timed runs
        n_steps[name] = out[name]["steps_per_run"] = n
        if log:
            log(f"    {name}: warm ({out[name]['warmup_s']:.1f} s)")
    for _ in range(repeats):
        for name, fn in fns.items():
            out[name]["runs_ms"].append(timer.run(fn, n_steps[name]) / n_steps[name])
    for r in out.values():
        r["ms"] = statistics.median(r["runs_ms"])
        r["spread"] = (max(r["runs_ms"]) - min(r["runs_ms"])) / r["ms"] if r["ms"] > 0 else 0.0
    return out


def rate(images: int, ms: float) -> float:
    return images / ms * 1e3 if ms > 0 else float("nan")


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "device": str(device), "cpus": os.cpu_count(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), gpus=torch.cuda.device_count(), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
        try:
            import triton

            env["triton"] = triton.__version__
        except ImportError:
            env["triton"] = None
    else:
        env["cpu_threads"] = torch.get_num_threads()
    return env


CATEGORIES = ("convolutions", "matmul (fc layers)", "response norm (Triton)", "max-pool",
              "fused elementwise (inductor Triton)", "elementwise (ATen)", "layout copies", "exchange (peer copies)",
              "collectives (NCCL)", "optimizer", "memcpy/memset", "other")


#: Kernels (and copies) by name kept in a profile's result, longest first.
TOP_KERNELS = 60


def categorize(name: str) -> str:
    n = name.lower()
    rules = (("response norm (Triton)", ("lrn",)), ("max-pool", ("max_pool", "maxpool", "_pool_")),
             ("collectives (NCCL)", ("nccl",)), ("exchange (peer copies)", ("ptop", "peer")),
             ("layout copies", ("nchwtonhwc", "nhwctonchw")),
             ("convolutions", ("fprop", "dgrad", "wgrad", "conv", "implicit_gemm", "cudnn", "xmma_fprop")),
             ("matmul (fc layers)", ("gemm", "nvjet", "cutlass", "cublas", "matmul", "splitk", "gemv")),
             ("optimizer", ("multi_tensor_apply", "foreach")))
    if n.startswith("_pool_"):
        return "max-pool"
    for category, keys in rules:
        if any(k in n for k in keys):
            return category
    if n.startswith(("memcpy", "memset")):
        return "memcpy/memset"
    if "triton" in n:
        return "fused elementwise (inductor Triton)"
    if any(k in n for k in ("copy", "transpose", "permute", "cat_", "catarray")):
        return "layout copies"
    if any(k in n for k in ("elementwise", "vectorized", "reduce", "dropout", "relu", "threshold", "softmax",
                            "nll", "loss", "fill", "index", "random", "distribution", "philox")):
        return "elementwise (ATen)"
    return "other"


def _profile(fn, steps: int, timer: Timer):
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    timer.sync()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        timer.sync()
    return prof, (time.perf_counter() - t0) * 1e3 / steps


def profile_breakdown(fn, steps: int, timer: Timer) -> dict:
    """GPU time per step by category (kernel times) and the top kernels."""
    prof, _ = _profile(fn, steps, timer)
    cats = {c: 0.0 for c in CATEGORIES}
    totals = {}
    for evt in prof.key_averages():
        us = getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0.0)
        if not us:
            continue
        cats[categorize(evt.key)] += us / 1e3 / steps
        totals[evt.key] = (us, evt.count)
    return {"ms_per_step": {k: v for k, v in cats.items() if v > 0}, "total_ms": sum(cats.values()),
            "top_kernels": top_kernels(totals, steps)}


def top_kernels(totals: dict[str, tuple[float, int]], steps: int) -> list[dict]:
    """The TOP_KERNELS longest of {name: (own GPU time in us, calls)} over ``steps`` steps, longest first,
    each as {"name", "ms_per_step", "calls_per_step", "category"}: the form `alexnet bench --profile` and
    `alexnet profile` both report, so that their lists can be read against each other."""
    rows = [{"name": name[:160], "ms_per_step": us / 1e3 / steps, "calls_per_step": calls / steps,
             "category": categorize(name)} for name, (us, calls) in totals.items()]
    return sorted(rows, key=lambda k: -k["ms_per_step"])[:TOP_KERNELS]


def device_events(prof):
    """(event, its own GPU time in us) for each kernel or copy on a GPU in a torch.profiler trace."""
    for evt in prof.events():
        dev = getattr(evt, "device_index", None)
        if getattr(evt, "device_type", None) != torch.autograd.DeviceType.CUDA or dev is None or dev < 0:
            continue
        us = evt.self_device_time_total          # a kernel's (or copy's) own time on its GPU
        if us:
            yield evt, us


def device_busy(fn, steps: int, timer: Timer) -> dict:
    """Per GPU: ms per step its kernels ran, of which exchanges (peer copies, NCCL), and the wall ms per
    step: idle = wall - busy. Where the two-GPU split loses its time."""
    prof, wall = _profile(fn, steps, timer)
    busy: dict[int, dict] = {}
    for evt, us in device_events(prof):
        d = busy.setdefault(int(evt.device_index), {"busy_ms": 0.0, "exchange_ms": 0.0})
        d["busy_ms"] += us / 1e3 / steps
        if categorize(evt.name) in ("exchange (peer copies)", "collectives (NCCL)"):
            d["exchange_ms"] += us / 1e3 / steps
    for d in busy.values():
        d["wall_ms"], d["idle_ms"] = wall, max(0.0, wall - d["busy_ms"])
    return busy
