"""Where the time of a cuda-convnet CIFAR-10 training step goes (CUDA), for the step time that
decides the `cifar-normalisation` experiment's wall time.

For each net: ms per step (as CUDA graph replays, the way the experiment runs) with R seeds stacked,
with the Triton response normalisation and with the torch formula; then the top kernels of a few
eager steps (torch.profiler, CUDA time). Random images; nothing is saved.

    PYTHONPATH=src python scripts/profile_cifar_step.py [--replicas 3] [--steps 300] [--top 12]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from alexnet.experiments.cifar_normalisation_jobs import cuda_flags
from alexnet.experiments.cifar_normalisation_trainer import DeviceData, Trainer, data_batches, minibatch_table
from alexnet.layers import ResponseNorm
from alexnet.models import build_model


def trainer_for(net: str, replicas: int, dev, norm: str, graph: bool) -> Trainer:
    g = torch.Generator().manual_seed(0)
    n = 5 * 128
    data = DeviceData(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (n,), generator=g), torch.zeros(1, 3, 32, 32, dtype=torch.uint8),
                      torch.zeros(1, dtype=torch.long), torch.full((3, 32, 32), 120.0), 10, dev)
    model = build_model(net, replicas=replicas, init_seeds=tuple(range(replicas)))
    if norm == "torch":
        for name in ("rnorm1", "rnorm2"):
            old = getattr(model, name)
            if isinstance(old, ResponseNorm):
                setattr(model, name, ResponseNorm(old.size, old.scale, old.beta, old.k, old.groups))
    t = Trainer(model, data, list(range(replicas)), 128, "centre", graph=graph, amp_dtype=torch.bfloat16,
                log=print)
    index, valid = minibatch_table(data_batches(n), 128)
    t.set_phase(index, valid, 1.0, 1.0)
    return t


def ms_per_step(t: Trainer, steps: int) -> float:
    t.epoch(5)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    done = 0
    while done < steps:
        t.epoch(5)
        done += 5
    torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - t0) / done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nets", nargs="+", default=["cuda-convnet-11pct", "cuda-convnet-11pct-no-norm",
                                                  "cuda-convnet-13pct"])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    dev = cuda_flags(torch.device("cuda:0"))
    rows = []
    for net in args.nets:
        for norm in (("triton", "torch") if "no-norm" not in net and "13pct" not in net else ("-",)):
            for r in sorted({1, args.replicas}):
                t = trainer_for(net, r, dev, norm, graph=True)
                rows.append((net, norm, r, ms_per_step(t, args.steps)))
                print(f"{net:28s} norm {norm:6s} seeds {r}: {rows[-1][3]:.3f} ms/step", flush=True)
        t = trainer_for(net, args.replicas, dev, "triton", graph=False)
        t.epoch(5)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            t.epoch(5)
            torch.cuda.synchronize()
        events = prof.key_averages()
        total = sum(e.self_device_time_total for e in events)
        print(f"\n{net}, {args.replicas} seeds, eager, 5 steps: {total / 5e3:.3f} ms of kernels per step, "
              f"{sum(e.count for e in events if e.self_device_time_total > 0) // 5} kernels per step")
        for e in sorted(events, key=lambda e: -e.self_device_time_total)[:args.top]:
            if e.self_device_time_total > 0:
                print(f"  {e.self_device_time_total / 5e3:7.3f} ms  x{e.count // 5:<4d} {e.key[:90]}")
        print()
    print("\nnet | norm | seeds stacked | ms per step (graph)\n---|---|---|---")
    for net, norm, r, ms in rows:
        print(f"{net} | {norm} | {r} | {ms:.3f}")


if __name__ == "__main__":
    main()
