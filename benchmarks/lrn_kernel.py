"""Time cross-channel response normalisation on the GPU: torch's nn.LocalResponseNorm, the Triton
kernel, the kernel fused with the ReLU before it, and ReLU alone (the floor: it moves the same
bytes), forward + backward at the paper's conv1 and conv2 sizes in bf16 channels_last. Then a
sweep of the kernels' launch parameters, and a whole plain two-column AlexNet training step with
and without response normalisation.

    PYTHONPATH=src python benchmarks/lrn_kernel.py [--batch 256] [--sweep none|narrow|full]
                                                    [--no-network] [--log FILE] [--table FILE]

Bytes counted are the fewest a pass must move: forward reads x and writes y, backward reads x
and dy and writes dx, so 5 tensor passes for forward + backward. GB/s = those bytes / median time.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import sys

import torch
import torch.nn.functional as F
import triton
from torch import nn
from triton.testing import do_bench

from alexnet.kernels import fused_response_norm
from alexnet.kernels import response_norm as rn
from alexnet.layers import ResponseNorm

SIZE, SCALE, BETA, K = 5, 1e-4 / 5, 0.75, 2.0  # the 2012 code's constants (alpha / size)
LAYERS = {"conv1": (96, 55, 55), "conv2": (256, 27, 27)}
LOG = {"file": None}


def say(*parts):
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    if LOG["file"]:
        with open(LOG["file"], "a") as f:
            f.write(line + "\n")


def bench(fn, rep=200):
    return do_bench(fn, warmup=50, rep=rep, return_mode="median")


def copy_rate() -> float:
    n = 1 << 29  # 1 GiB of bf16
    a = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    b = torch.empty_like(a)
    ms = bench(lambda: b.copy_(a))
    return 2 * a.numel() * a.element_size() / ms / 1e6  # GB/s


def fwd_bwd(f, x, g):
    def run():
        y = f(x)
        torch.autograd.grad(y, x, g)
    return run


def layer_rows(name, batch, peak):
    c, h, w = LAYERS[name]
    x = torch.randn(batch, c, h, w, device="cuda", dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn_like(x)
    ref = nn.LocalResponseNorm(SIZE, alpha=SCALE * SIZE, beta=BETA, k=K)
    variants = {
        "relu + nn.LocalResponseNorm": lambda t: ref(torch.relu(t)),
        "nn.LocalResponseNorm": ref,
        "relu + triton LRN": lambda t: fused_response_norm(torch.relu(t), SIZE, SCALE, BETA, K),
        "triton LRN": lambda t: fused_response_norm(t, SIZE, SCALE, BETA, K),
        "triton relu+LRN fused": lambda t: fused_response_norm(t, SIZE, SCALE, BETA, K, relu=True),
        "relu alone (floor)": torch.relu,
    }
    floor_bytes = 5 * x.numel() * x.element_size()
    rows = []
    for label, f in variants.items():
        ms = bench(fwd_bwd(f, x, g))
        gbs = floor_bytes / ms / 1e6
        rows.append((name, label, ms, gbs, 100 * gbs / peak))
        say(f"  {name} {label}: {ms:.4f} ms {gbs:.0f} GB/s")
    # the kernels alone, with and without the fused ReLU
    xd = x.detach()
    kernels = []
    for relu in (True, False):
        tag = "relu+" if relu else ""
        kernels += [
            (f"kernel {tag}fwd", lambda r=relu: rn.lrn_forward(xd, SIZE, SCALE, BETA, K, r), 2),
            (f"kernel {tag}bwd flat", lambda r=relu: rn.lrn_backward(
                xd, g, SIZE, SCALE, BETA, K, r, variant="flat"), 3),
            (f"kernel {tag}bwd tile", lambda r=relu: rn.lrn_backward(
                xd, g, SIZE, SCALE, BETA, K, r, variant="tile"), 3),
        ]
    for label, fn, passes in kernels:
        ms = bench(fn)
        gbs = passes * x.numel() * x.element_size() / ms / 1e6
        rows.append((name, label, ms, gbs, 100 * gbs / peak))
        say(f"  {name} {label}: {ms:.4f} ms {gbs:.0f} GB/s")
    return rows, floor_bytes


def sweep(batch, full: bool):
    """Launch parameters per kernel; returns the best setting summed over both layers."""
    saved = dict(rn.CONFIG)
    if full:
        grids = {
            "fwd": [dict(fwd_block=b, fwd_warps=w) for b, w in itertools.product([1024, 2048, 4096], [4, 8])],
            "bwd flat": [dict(bwd_block=b, bwd_warps=w) for b, w in itertools.product([512, 1024, 2048], [4, 8])],
            "bwd tile": [dict(tile_elems=e, tile_warps=w, tile_progs_per_sm=p)
                         for e, w, p in itertools.product([1024, 2048, 4096], [4, 8], [2, 4, 8])],
        }
    else:  # around the full sweep's optimum (docs/notes-kernels.md), smaller blocks included
        grids = {
            "fwd": [dict(fwd_block=b, fwd_warps=w) for b, w in [(512, 4), (512, 8), (1024, 8), (1024, 16)]],
            "bwd flat": [dict(bwd_block=b, bwd_warps=w) for b, w in [(256, 4), (512, 4), (512, 8), (1024, 8)]],
            "bwd tile": [dict(tile_elems=e, tile_warps=w, tile_progs_per_sm=p)
                         for e, w, p in [(512, 4, 16), (512, 8, 8), (512, 8, 16), (1024, 8, 8),
                                         (1024, 16, 4), (1024, 16, 8), (2048, 16, 4)]],
        }
    tensors = {}
    for name, (c, h, w) in LAYERS.items():
        x = torch.randn(batch, c, h, w, device="cuda", dtype=torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last)
        tensors[name] = (x, torch.randn_like(x))
    best = {}
    for kernel, grid in grids.items():
        results = []
        for cfg in grid:
            rn.CONFIG.update(saved)
            rn.CONFIG.update(cfg)
            total, parts = 0.0, []
            for name, (x, g) in tensors.items():
                if kernel == "fwd":
                    fn = lambda: rn.lrn_forward(x, SIZE, SCALE, BETA, K, True)  # noqa: E731
                else:
                    v = kernel.split()[1]
                    fn = lambda: rn.lrn_backward(x, g, SIZE, SCALE, BETA, K, True, variant=v)  # noqa: E731
                try:
                    ms = bench(fn, rep=100)
                except Exception as e:  # e.g. out of resources for one setting
                    ms = float("inf")
                    say(f"  {kernel} {cfg} failed: {type(e).__name__}: {str(e)[:120]}")
                parts.append(ms)
                total += ms
            results.append((total, cfg, parts))
            say(f"  sweep {kernel:9s} {cfg} " + " ".join(f"{p:.4f}" for p in parts) + f" sum {total:.4f} ms")
        results.sort(key=lambda r: r[0])
        best[kernel] = results[0]
    rn.CONFIG.clear()
    rn.CONFIG.update(saved)
    return best


# -------------------------------------------------------------------------------------------
# A plain two-column AlexNet (groups=2 convolutions), 227x227 input, as in MEASUREMENTS.md.


class Net(nn.Module):
    def __init__(self, norm: str):
        super().__init__()
        self.norm = norm
        self.c1 = nn.Conv2d(3, 96, 11, stride=4)
        self.c2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)
        self.c3 = nn.Conv2d(256, 384, 3, padding=1)
        self.c4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        self.c5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
        self.fc = nn.Sequential(nn.Dropout(), nn.Linear(9216, 4096), nn.ReLU(inplace=True),
                                nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
                                nn.Linear(4096, 1000))
        self.lrn = nn.LocalResponseNorm(SIZE, alpha=SCALE * SIZE, beta=BETA, k=K)
        self.rn = ResponseNorm(SIZE, SCALE, BETA, K, groups=2)  # per column, as in 2012

    def relu_norm(self, x):
        if self.norm == "none":
            return F.relu(x, inplace=True)
        if self.norm == "torch":
            return self.lrn(F.relu(x, inplace=True))
        if self.norm == "triton":
            return self.rn(F.relu(x, inplace=True))
        return fused_response_norm(x, SIZE, SCALE, BETA, K, relu=True, groups=2)  # "fused"

    def forward(self, x):
        x = F.max_pool2d(self.relu_norm(self.c1(x)), 3, 2)
        x = F.max_pool2d(self.relu_norm(self.c2(x)), 3, 2)
        x = F.relu(self.c3(x), inplace=True)
        x = F.relu(self.c4(x), inplace=True)
        x = F.max_pool2d(F.relu(self.c5(x), inplace=True), 3, 2)
        return self.fc(torch.flatten(x, 1))


def network(batch):
    torch.backends.cudnn.benchmark = True
    img = torch.randn(batch, 3, 227, 227, device="cuda").to(memory_format=torch.channels_last)
    lab = torch.randint(0, 1000, (batch,), device="cuda")
    rows = []
    for norm in ["none", "torch", "triton", "fused"]:
        torch.manual_seed(0)
        net = Net(norm).cuda().to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(net(img), lab)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        ms = do_bench(step, warmup=200, rep=1500, return_mode="median")
        rows.append((norm, ms, batch / ms * 1e3))
        say(f"  network LRN={norm}: {ms:.3f} ms/step {batch / ms * 1e3:.0f} img/s")
        del net, opt
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--sweep", choices=["none", "narrow", "full"], default="narrow")
    ap.add_argument("--no-network", action="store_true")
    ap.add_argument("--log", default=None, help="also append the output here, line by line")
    ap.add_argument("--table", default=None, help="also write the final table here")
    args = ap.parse_args(argv)
    LOG["file"] = args.log
    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    dev = torch.cuda.get_device_name()
    stamp = datetime.date.today().isoformat()
    say(f"# {dev}, torch {torch.__version__}, triton {triton.__version__}, {stamp}, batch {args.batch}")
    say(f"# CONFIG {rn.CONFIG}")
    peak = copy_rate()
    say(f"# device copy: {peak:,.0f} GB/s (bytes read + written)")

    if args.sweep != "none":
        best = sweep(args.batch, args.sweep == "full")
        for kernel, (total, cfg, parts) in best.items():
            say(f"# best {kernel}: {cfg} conv1 {parts[0]:.4f} ms conv2 {parts[1]:.4f} ms")
            rn.CONFIG.update(cfg)
        rn.CONFIG["bwd_nhwc"] = min(["flat", "tile"], key=lambda v: best["bwd " + v][0])
        say(f"# using CONFIG {rn.CONFIG}")

    rows, floors = [], {}
    for name in LAYERS:
        r, floors[name] = layer_rows(name, args.batch, peak)
        rows += r
    net = [] if args.no_network else network(args.batch)

    lines = ["", f"## {dev}, {stamp}: bf16 channels_last, batch {args.batch}, "
             f"copy {peak:,.0f} GB/s"]
    for name in LAYERS:
        fb = floors[name]
        lines.append(f"{name} {args.batch}x{'x'.join(map(str, LAYERS[name]))}: floor "
                     f"{fb / 1e6:.0f} MB fwd+bwd = {fb / peak / 1e6:.3f} ms")
    lines.append(f"{'layer':6s} {'fwd+bwd (or kernel)':28s} {'ms':>8s} {'GB/s':>7s} {'%copy':>6s}")
    for name, label, ms, gbs, pct in rows:
        lines.append(f"{name:6s} {label:28s} {ms:8.3f} {gbs:7.0f} {pct:6.1f}")
    if net:
        base = net[0][1]
        lines.append(f"{'network step':22s} {'ms':>8s} {'img/s':>8s} {'rate vs none':>12s}")
        for norm, ms, ips in net:
            lines.append(f"LRN={norm:18s} {ms:8.2f} {ips:8.0f} {base / ms:12.3f}")
    for line in lines:
        say(line)
    if args.table:
        with open(args.table, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
