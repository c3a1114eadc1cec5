"""Which formulation of each layer is fastest on this GPU (alexnet.fastconv), and how fast the
loader reads a prepared split. Writes JSON and prints a short table last; with --best-file it
writes the winning fast options as `conv1=...,conv2=...` for `alexnet bench --fast`.

    PYTHONPATH=src python benchmarks/conv_variants.py [--batch 256] [--out FILE] [--best-file FILE]
                                                      [--loader-data PREPARED_DIR] [--skip-layers]

A. Each convolution alone, bf16 channels_last, cudnn.benchmark: forward, and forward + backward
   (conv1: weight gradient only, as in training), for every formulation; torchvision's five
   convolutions beside them. TFLOP/s counts the useful multiply-adds (x2), not the zeros of
   s2d/blockdiag.
B. The whole training step of alexnet2012 (eager), the fast defaults with one option changed at a
   time, and the plain reference path.
A'. The two big max-pools alone: torch's and the Triton one (alexnet.kernels.max_pool), with a
   check that the Triton one computes the same function (else the network rows leave it out).
C. BatchLoader alone (pinned memory, H2D copy) on a prepared split: reader x threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from alexnet import fastconv
from alexnet.tools.bench import make_optimizer, random_images, train_fn
from alexnet.models import build_model

LINES: list[str] = []


def say(line=""):
    print(line, flush=True)
    LINES.append(line)


def timed(fn, warmup=5, steps=10, repeats=5) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    runs = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(steps):
            fn()
        b.record()
        b.synchronize()
        runs.append(a.elapsed_time(b) / steps)
    return statistics.median(runs)


# (name, cin, cout, kernel, stride, pad, groups, in_hw, out_hw)
OURS = [("conv1", 3, 96, 11, 4, 0, 1, 224, 55), ("conv2", 96, 256, 5, 1, 2, 2, 27, 27),
        ("conv3", 256, 384, 3, 1, 1, 1, 13, 13), ("conv4", 384, 384, 3, 1, 1, 2, 13, 13),
        ("conv5", 384, 256, 3, 1, 1, 2, 13, 13)]
TV = [("tv.conv1", 3, 64, 11, 4, 2, 1, 224, 55), ("tv.conv2", 64, 192, 5, 1, 2, 1, 27, 27),
      ("tv.conv3", 192, 384, 3, 1, 1, 1, 13, 13), ("tv.conv4", 384, 256, 3, 1, 1, 1, 13, 13),
      ("tv.conv5", 256, 256, 3, 1, 1, 1, 13, 13)]


def layer_rows(batch: int) -> list[dict]:
    rows = []
    cl = torch.channels_last
    for spec in OURS + TV:
        name, cin, cout, k, s, p, g, hw, ohw = spec
        macs = batch * ohw * ohw * cout * (cin // g) * k * k
        x = (torch.randn(batch, cin, hw, hw, device="cuda") * 30).to(torch.bfloat16).contiguous(memory_format=cl)
        w = (torch.randn(cout, cin // g, k, k, device="cuda") * 0.01).to(torch.bfloat16).contiguous(memory_format=cl)
        bias = torch.randn(cout, device="cuda").to(torch.bfloat16)
        first = name.endswith("conv1")
        if not first:
            x.requires_grad_()
        w.requires_grad_()
        bias.requires_grad_()
        if name == "conv1":
            modes = {"direct": lambda: F.conv2d(F.pad(x, (0, 3, 0, 3)), w, bias, stride=4),
                     "s2d": lambda: fastconv.space_to_depth_conv(x, w, bias, 4)}
        elif name.startswith("tv.") or g == 1:
            modes = {"dense": lambda: F.conv2d(x, w, bias, stride=s, padding=p)}
        else:
            modes = {m: (lambda m=m: fastconv.grouped_conv(x, w, bias, p, g, m)) for m in fastconv.GROUPED_MODES}
        for mode, f in modes.items():
            y = f()
            gy = torch.randn_like(y)
            inputs = (w, bias) if first else (x, w, bias)
            fwd = timed(lambda: f())
            both = timed(lambda: torch.autograd.grad(f(), inputs, gy))
            passes = 2 if first else 3
            r = {"layer": name, "mode": mode, "batch": batch, "gmacs": macs / 1e9, "fwd_ms": fwd,
                 "fwd_bwd_ms": both, "fwd_tflops": 2 * macs / fwd / 1e9,
                 "fwd_bwd_tflops": 2 * passes * macs / both / 1e9}
            rows.append(r)
            say(f"  {name:<9} {mode:<10} {macs / 1e9:8.1f} GMAC  fwd {fwd:7.3f} ms ({r['fwd_tflops']:5.0f} TFLOP/s)"
                f"  fwd+bwd {both:7.3f} ms ({r['fwd_bwd_tflops']:5.0f} TFLOP/s)")
        del x, w, bias
    return rows


POOLS = [("pool1", 96, 55), ("pool2", 256, 27)]


def pool_rows(batch: int) -> tuple[list[dict], bool]:
    """torch's max-pool (eager) and the Triton one that keeps its argmax, fwd and fwd+bwd; and whether
    the Triton one computes the same function (the network rows use it only then)."""
    rows, ok = [], True
    for name, c, hw in POOLS:
        x = (torch.randn(batch, c, hw, hw, device="cuda") * 3).to(torch.bfloat16)
        x = torch.relu(x).contiguous(memory_format=torch.channels_last).requires_grad_()   # ties at 0, as after ReLU
        ref = F.max_pool2d(x, 3, 2)
        y = fastconv.max_pool(x, 3, 2)
        gy = torch.randn_like(ref)
        same_fwd = torch.equal(y, ref)
        a, r = torch.autograd.grad(y, x, gy)[0].double(), torch.autograd.grad(ref, x, gy)[0].double()
        err = ((a - r).norm() / r.norm()).item()
        ok = ok and same_fwd and err < 1e-2
        say(f"  {name}: triton forward {'==' if same_fwd else '!='} torch, backward rel. error {err:.1e}")
        nbytes = x.numel() * 2
        for mode, f in (("torch", lambda: F.max_pool2d(x, 3, 2)), ("triton", lambda: fastconv.max_pool(x, 3, 2))):
            fwd = timed(lambda: f())
            both = timed(lambda: torch.autograd.grad(f(), x, gy))
            rows.append({"layer": name, "mode": mode, "batch": batch, "fwd_ms": fwd, "fwd_bwd_ms": both,
                         "input_MB": nbytes / 1e6})
            say(f"  {name:<9} {mode:<10} input {nbytes / 1e6:6.1f} MB  fwd {fwd:7.3f} ms  fwd+bwd {both:7.3f} ms")
    return rows, ok


def network_rows(batch: int, pool_ok: bool = True) -> tuple[list[dict], dict]:
    cl = torch.channels_last
    xs = random_images(batch, "cuda", cl, seed=1)
    labels = torch.randint(0, 1000, (batch,), device="cuda")
    torch.manual_seed(0)
    model = build_model("alexnet2012").cuda().to(memory_format=cl)
    ref = build_model("alexnet2012", impl="reference").cuda().to(memory_format=cl)
    opt, opt_ref = make_optimizer(model), make_optimizer(ref)
    base = dict(fastconv.DEFAULTS)
    if not pool_ok:
        base["pool"] = "torch"
    configs = {"defaults": base}
    for key, modes in (("conv1", fastconv.CONV1_MODES), ("conv2", fastconv.GROUPED_MODES),
                       ("conv4", fastconv.GROUPED_MODES), ("conv5", fastconv.GROUPED_MODES),
                       ("relu_lrn", (True, False)), ("pool", fastconv.POOL_MODES if pool_ok else ("torch",))):
        for m in modes:
            if m != base[key]:
                configs[f"{key}={m}"] = dict(base, **{key: m})
    rows = []
    step_ref = train_fn(ref, opt_ref, xs, labels, torch.bfloat16)
    t = timed(step_ref, warmup=8, steps=10, repeats=5)
    rows.append({"config": "reference (plain layers)", "ms": t, "images_per_s": batch / t * 1e3})
    say(f"  {'reference (plain layers)':<28} {t:7.2f} ms  {batch / t * 1e3:8,.0f} img/s")
    times = {}
    for name, opts in list(configs.items()) + [("defaults (again)", base)]:
        model.fast_options = opts
        step = train_fn(model, opt, xs, labels, torch.bfloat16)
        t = timed(step, warmup=8, steps=10, repeats=5)
        times[name] = t
        rows.append({"config": name, "options": opts, "ms": t, "images_per_s": batch / t * 1e3})
        say(f"  {name:<28} {t:7.2f} ms  {batch / t * 1e3:8,.0f} img/s")
    # the best mode of each option, changed one at a time; a change must win by more than the
    # defaults' own spread (run twice) and 1%
    noise = max(0.01, abs(times["defaults"] - times["defaults (again)"]) / times["defaults"])
    ref_t = min(times["defaults"], times["defaults (again)"])
    best = dict(base)
    for name, t in times.items():
        if "=" in name and t < ref_t * (1 - noise):
            key, val = name.split("=")
            cur = best[key]
            cur_t = times.get(f"{key}={cur}", ref_t) if cur != base[key] else ref_t
            if t < cur_t:
                best[key] = val if key != "relu_lrn" else (val == "True")
    return rows, best


def loader_rows(path: str, batch: int) -> list[dict]:
    from alexnet.data.loader import BatchLoader
    from alexnet.data.prepared import PreparedData

    data = PreparedData.open(path)
    split = data.split("train" if "train" in data.splits else data.splits[0])
    rows = []
    n = min(120, len(split) // batch - 1)
    for reader, threads in (("gather", 1), ("gather", 4), ("gather", 8), ("pread", 4), ("split", 4)):
        loader = BatchLoader(split, batch, shuffle=True, seed=threads, epoch=len(rows), drop_last=True,
                             device="cuda", threads=threads, reader=reader)
        t0, k = None, 0
        for i, (x, y) in enumerate(loader):
            if i == 10:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
            elif i > 10:
                k += 1
                if k >= n - 10:
                    break
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        rate = k * batch / dt
        rows.append({"reader": reader, "threads": threads, "images_per_s": rate,
                     "GBps": rate * data.size * data.size * 3 / 1e9})
        say(f"  reader {reader:<6} threads {threads:>2}: {rate:9,.0f} img/s ({rows[-1]['GBps']:.1f} GB/s)")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out")
    ap.add_argument("--best-file")
    ap.add_argument("--loader-data")
    ap.add_argument("--skip-layers", action="store_true")
    ap.add_argument("--layers", choices=["all", "pool"], default="all", help="pool: only the max-pool rows")
    ap.add_argument("--skip-network", action="store_true")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
           "batch": args.batch, "date": time.strftime("%Y-%m-%d %H:%M")}
    say(f"# conv_variants: {out['gpu']}, torch {out['torch']}, cuDNN {out['cudnn']}, batch {args.batch}, bf16 "
        "channels_last")
    pool_ok = True
    if not args.skip_layers:
        if args.layers == "all":
            say("A. convolutions alone")
            out["layers"] = layer_rows(args.batch)
        say("A'. max-pool 3/2 alone (bf16 channels_last, after ReLU)")
        out["pools"], pool_ok = pool_rows(args.batch)
        out["pool_ok"] = pool_ok
        if not pool_ok:
            say("  !! the Triton max-pool does not compute torch's function here: the network rows leave it out")
    if not args.skip_network:
        say("B. alexnet2012 training step, eager")
        out["network"], best = network_rows(args.batch, pool_ok)
        out["best"] = best
        text = ",".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in best.items())
        say(f"best: {text}")
        if args.best_file:
            with open(args.best_file, "w") as f:
                f.write(text)
    if args.loader_data:
        say("C. BatchLoader alone (pinned, H2D), batch " + str(args.batch))
        out["loader"] = loader_rows(args.loader_data, args.batch)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
