"""The step of the forms that need one process per GPU, timed under torchrun on GPU-resident batches:
one column per process (`columns-2proc`) and data parallelism (`ddp`, weak scaling: `batch` images per
process). `alexnet bench` launches this module; by hand:

    torchrun --standalone --nproc-per-node 2 -m alexnet.tools.bench_parallel --form ddp --batches 256 \\
        --variants compiled --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from alexnet.models import build_model
from alexnet.parallel.distributed import DistributedContext
from alexnet.parallel.placement import place
from alexnet.tools.bench_steps import step_fn
from alexnet.tools.timing import Timer, measure, profile_breakdown, rate

__all__ = ["PARALLEL_FORMS", "VARIANTS", "run_under_torchrun", "main"]

VARIANTS = ("eager", "compiled", "graphed", "graphed-step", "graphed-shard")
PARALLEL_FORMS = {"columns-2proc": "the two columns, one process per GPU (torchrun, NCCL)",
                  "ddp": "data parallel, 2 processes (torchrun), the batch per process"}


def run_under_torchrun(form: str, batches, variants, steps: int, warmup: int, repeats: int, device: str,
                       out: Path, timeout_s: float = 900.0) -> dict:
    """Launch this module on two processes and return what rank 0 measured ({} and an error on failure)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
           "alexnet.tools.bench_parallel", "--form", form, "--batches", *map(str, batches), "--variants", *variants,
           "--steps", str(steps), "--warmup", str(warmup), "--repeats", str(repeats), "--device", device,
           "--json", str(out)]
    env = os.environ | {"NCCL_NVLS_ENABLE": "0", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4")}
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if r.returncode != 0 or not out.exists():
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-1][:300] if (r.stderr or r.stdout) else
                f"exit {r.returncode}"}
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alexnet.tools.bench_parallel", description=__doc__.split("\n\n")[0])
    p.add_argument("--form", choices=list(PARALLEL_FORMS), required=True)
    p.add_argument("--batches", type=int, nargs="+", default=[128, 256])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                   default=["eager", "compiled"],
                   help="graphed: one CUDA graph a step (data parallel: the classifier's all-reduces overlapped "
                        "with the convolutions' backward pass, --ddp-reduce overlap); graphed-step: data "
                        "parallel with every all-reduce after the backward pass; graphed-shard: as graphed, "
                        "the classifier's update shared out (--ddp-reduce shard: what alexnet train runs)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="after timing, profile STEPS more steps on every process (CUDA only): rank 0's GPU "
                        "time per step by kernel category (convolutions, matmul, NCCL, ...) goes into the JSON, "
                        "to compare one process with two (what the collectives cost the kernels beside them)")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    dist = DistributedContext.from_env(args.device)
    try:
        device = dist.device
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        result = {"form": args.form, "world_size": dist.world_size, "rows": {}}
        for batch in args.batches:
            for variant in args.variants:
                torch.manual_seed(0)
                fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
                placement = place(build_model("alexnet2012"), "columns" if args.form == "columns-2proc" else "data",
                                  dist, [device], "paper", fmt,
                                  reduce={"graphed": "overlap", "graphed-step": "step",
                                          "graphed-shard": "shard"}.get(variant, "ddp"))
                placement.model.train()
                fn = step_fn(placement, variant.split("-")[0], batch, device, seed=0 if args.form != "ddp" else dist.rank,
                             log=lambda *a: None)
                # a fixed number of steps: the processes must run the same collectives
                t = measure({variant: fn}, Timer(device), args.warmup, args.steps, args.repeats, min_run_ms=0)[variant]
                images = batch * (dist.world_size if args.form == "ddp" else 1)
                row = result["rows"][f"{batch}/{variant}"] = {
                    "batch": batch, "variant": variant, "ms": t["ms"], "images_per_s": rate(images, t["ms"]),
                    "spread": t["spread"], "warmup_s": t["warmup_s"]}
                if args.profile and device.type == "cuda":   # every process: the same collectives
                    prof = profile_breakdown(fn, args.profile, Timer(device))
                    row["profile"] = {k: prof[k] for k in ("ms_per_step", "total_ms")}
                fn.step.release()            # before the process group ends (pytorch/pytorch#115388)
                del placement, fn
                dist.barrier()
        if dist.is_main:
            Path(args.json).write_text(json.dumps(result, indent=1))
    finally:
        dist.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
