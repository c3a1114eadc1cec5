"""`alexnet bench`: training and inference throughput of the paper's network beside torchvision's,
measured in one run, on one device, with the same precision and optimizer.

Rows (images per second; ratio = alexnet2012 / torchvision):

* ``train``: one training step (forward, cross-entropy, backward, PaperSGD update with the paper's
  momentum and weight decay) on random float images resident on the device, 224x224, at each batch
  size. alexnet2012 runs its fastest path (``impl="auto"``: alexnet.fastconv's formulations, the
  fused ReLU + response-normalisation kernel), torchvision's ``alexnet`` its best settings; both
  channels_last, bf16 autocast, cudnn.benchmark and, where it works, torch.compile.
* ``infer``: the forward pass in eval mode, no autograd.
* ``tencrop``: the paper's test protocol, ``alexnet.evaluate.crop_probabilities`` with 10 views of
  each 256x256 uint8 image (images per second; each image is 10 forward passes).
* ``step_u8``: ``alexnet.train.TrainStep`` on random uint8 256x256 batches resident on the device
  (GPU augmentation included): the synthetic-data rate the end-to-end row is compared with.
* ``e2e``: the same TrainStep fed by ``BatchLoader`` from an `alexnet prepare` folder (``--data``,
  optionally replicated to ``--replicate-to`` images, or one made here from synthetic images),
  and the loader alone; with the projected time of 90 epochs of ImageNet (1,281,167 images).

Timing: warm-up steps first (compilation and cuDNN's autotuning happen there) and an untimed run,
then ``repeats`` runs of ``steps`` steps each (on CUDA each run lasts >= 250 ms), the two networks
alternating; CUDA events around each run; the median run gives the rate. ``--compile-mode
reduce-overhead`` replays the compiled steps as CUDA graphs (for both networks), which removes the
host overhead that bounds batch 128. ``--small`` (with ``--device cpu``) shrinks everything for CI.
Figures and their analysis: docs/notes-speed.md.
"""

from __future__ import annotations

import argparse
import sys

import contextlib
import dataclasses
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_TRAIN = 1_281_167
EPOCHS = 90
ROWS = ("train", "infer", "tencrop", "e2e")
NETS = ("alexnet2012", "torchvision")


@dataclass
class BenchConfig:
    device: str = "auto"
    small: bool = False
    batches: tuple[int, ...] | None = None   # default (128, 256); --small: (1,)
    steps: int | None = None                 # timed steps per run (20; small 1)
    repeats: int | None = None               # runs; the median counts (5; small 1)
    warmup: int | None = None                # untimed steps first (10; small 0)
    compile: bool | None = None              # default: on for CUDA, off for CPU
    compile_mode: str | None = None          # torch.compile(mode=...), e.g. max-autotune-no-cudagraphs
    reference: bool = False                  # alexnet2012 on its plain layers (impl="reference")
    fast: str | None = None                  # alexnet.fastconv options, e.g. "conv2=blockdiag"
    eval_batch: int | None = None            # images per ten-crop batch (128; small 1)
    data: str | None = None                  # a prepared folder for the end-to-end row
    replicate_to: int | None = None          # replicate its train split to this many images
    e2e_batches: tuple[int, ...] | None = None  # default: the batches
    e2e_steps: int | None = None             # timed loader-fed steps (300; small 1)
    threads: int | None = None               # loader threads (BatchLoader's default if None)
    reader: str = "auto"                     # BatchLoader reader: auto | gather | pread | split
    loader_variants: tuple[str, ...] = ()    # more end-to-end runs, each "reader:threads"
    workdir: str | None = None               # where made/replicated data go (default: a temp dir)
    cold: bool = False                       # evict the data file from the page cache first
    rows: tuple[str, ...] = ROWS
    profile: bool = False                    # torch.profiler breakdown of one train step per net
    seed: int = 0
    json_out: str | None = None              # results so far are written here after each section
    log: object = field(default=print, repr=False)

    def resolved(self) -> "BenchConfig":
        c = dataclasses.replace(self)
        small = c.small
        c.batches = tuple(c.batches or ((1,) if small else (128, 256)))
        c.steps = c.steps or (1 if small else 20)
        c.repeats = c.repeats or (1 if small else 5)
        c.warmup = c.warmup if c.warmup is not None else (0 if small else 10)
        c.eval_batch = c.eval_batch or (1 if small else 128)
        c.e2e_batches = tuple(c.e2e_batches or c.batches)
        c.e2e_steps = c.e2e_steps or (1 if small else 300)
        unknown = set(c.rows) - set(ROWS)
        if unknown:
            raise ValueError(f"unknown rows {sorted(unknown)}: {', '.join(ROWS)}")
        return c


# ------------------------------------------------------------------------------------------ timing


class Timer:
    """Milliseconds of `steps` calls of a function: CUDA events on CUDA, the host clock elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def run(self, fn, steps: int) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        return (time.perf_counter() - t0) * 1e3


def measure(fns: dict, timer: Timer, warmup: int, steps: int, repeats: int, min_run_ms: float | None = None) -> dict:
    """Median ms per call of each function; warm-up first, then the functions alternate run by run.

    On CUDA each run lasts at least `min_run_ms` (default 250 ms: more steps for fast calls), and an
    untimed run of that length follows the warm-up, so the clocks are up before timing starts.
    """
    out = {}
    if min_run_ms is None:
        min_run_ms = 250.0 if timer.cuda else 0.0
    n_steps = {}
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
        n_steps[name] = n
        out[name]["steps_per_run"] = n
    for _ in range(repeats):
        for name, fn in fns.items():
            out[name]["runs_ms"].append(timer.run(fn, n_steps[name]) / n_steps[name])
    for name, r in out.items():
        r["ms"] = statistics.median(r["runs_ms"])
        r["spread"] = (max(r["runs_ms"]) - min(r["runs_ms"])) / r["ms"] if r["ms"] > 0 else 0.0
    return out


# ------------------------------------------------------------------------------------------ models


def build_nets(cfg: BenchConfig, device: torch.device) -> dict:
    """{name: {"model", "net" (compiled or not), "compile"}} for alexnet2012 and torchvision."""
    from alexnet.models import build_model

    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    nets = {}
    for name in NETS:
        torch.manual_seed(cfg.seed)
        if name == "alexnet2012":
            impl = "reference" if cfg.reference else ("fast" if cfg.fast else "auto")
            model = build_model("alexnet2012", impl=impl, fast=cfg.fast or "")
        else:
            model = build_model("torchvision")
        model = model.to(device).to(memory_format=fmt)
        use = cfg.compile if cfg.compile is not None else device.type == "cuda"
        net = model
        if use:
            kw = {"dynamic": False}
            if cfg.compile_mode:
                kw["mode"] = cfg.compile_mode
            net = torch.compile(model, **kw)
        nets[name] = {"model": model, "net": net, "compile": "on" if use else "off", "compile_error": None}
    return nets


def _guarded(entry: dict, fn_of_net, log):
    """fn_of_net(net) -> step fn; if the compiled net fails on its first call, fall back to eager."""
    state = {"fn": fn_of_net(entry["net"]), "checked": entry["compile"] != "on"}

    def call():
        if state["checked"]:
            return state["fn"]()
        try:
            r = state["fn"]()
            state["checked"] = True
            return r
        except Exception as e:  # noqa: BLE001 - report and measure eager instead
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            log(f"  torch.compile failed ({msg}); measuring eager instead")
            entry["compile"], entry["compile_error"], entry["net"] = "failed", msg, entry["model"]
            state["fn"], state["checked"] = fn_of_net(entry["model"]), True
            return state["fn"]()

    return call


def make_optimizer(model):
    from alexnet.optim import PaperSGD, param_groups

    return PaperSGD(param_groups(model, "paper", 0.01, 5e-4), lr=0.01, momentum=0.9, weight_decay=5e-4)


def random_images(batch: int, device, fmt, n: int = 2, size: int = 224, seed: int = 0) -> list[torch.Tensor]:
    """n different random float batches (mean-subtracted pixel scale), never zeros."""
    g = torch.Generator(device=device).manual_seed(seed)
    return [(torch.randn(batch, 3, size, size, device=device, generator=g) * 60).contiguous(memory_format=fmt)
            for _ in range(n)]


def random_u8(batch: int, device, size: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randint(0, 256, (batch, size, size, 3), device=device, dtype=torch.uint8, generator=g)
    return x.permute(0, 3, 1, 2)  # channels_last, as BatchLoader delivers


def _autocast(device_type: str, amp):
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=amp)


def train_fn(net, opt, xs, labels, amp, graphs: bool = False):
    i = [0]

    def step():
        if graphs:  # CUDA graphs (compile mode reduce-overhead): a new step begins here
            torch.compiler.cudagraph_mark_step_begin()
        x = xs[i[0] % len(xs)]
        i[0] += 1
        with _autocast(x.device.type, amp):
            logits = net(x)
            loss = F.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def infer_fn(net, xs, amp):
    i = [0]

    def step():
        x = xs[i[0] % len(xs)]
        i[0] += 1
        with torch.no_grad(), _autocast(x.device.type, amp):
            return net(x)

    return step


# -------------------------------------------------------------------------------------------- data


def make_synthetic_source(root: Path, n: int, seed: int = 0) -> Path:
    """n random smooth JPEGs (300x280) in root/train/c{k}/: an image-folder tree for `prepare`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / "train" / f"c{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[0:280, 0:300].astype(np.float32)
        c = rng.uniform(0, 1, (3, 4))
        img = np.stack([c[k, 0] * 255 * yy / 279 * c[k, 1] + c[k, 2] * 120 * np.sin(xx / (9 + 20 * c[k, 3]))
                        for k in range(3)], -1)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"img{i:05d}.jpg", quality=90)
    return root


def replicate_prepared(src, dst, count: int, log=print) -> dict:
    """A prepared folder whose train split repeats `src`'s train split (or its only split) to
    `count` images (rows and labels cycled). Checks the disk first and shrinks `count` to fit."""
    from alexnet.data.prepared import PreparedData

    data = PreparedData.open(src)
    name = "train" if "train" in data.splits else data.splits[0]
    split = data.split(name)
    if split.encoding != "raw":
        raise ValueError("replication needs a raw-encoded prepared split")
    n, size = len(split), data.size
    isz = size * size * 3
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dst).free
    margin = 3 * 2**30
    asked = count
    if count * isz > free - margin:
        count = max(n, int((free - margin) // isz) // 1000 * 1000)
        log(f"  disk: {free / 1e9:.1f} GB free, {asked:,} images need {asked * isz / 1e9:.1f} GB: using {count:,}")
    rows = np.memmap(split.path, np.uint8, "r", shape=(n, size, size, 3))
    t0 = time.perf_counter()
    with open(dst / "train.images", "wb") as f:
        done = 0
        while done < count:
            k = min(n, count - done)
            f.write(memoryview(np.ascontiguousarray(rows[:k])).cast("B"))
            done += k
    seconds = time.perf_counter() - t0
    labels = split.labels.numpy()
    np.save(dst / "train.labels.npy", np.resize(labels, count).astype(np.int64))
    shutil.copy(Path(src) / "stats.safetensors", dst / "stats.safetensors")
    meta = dict(data.meta)
    meta["splits"] = {"train": {"count": count, "encoding": "raw", "skipped": 0}}
    meta["stats_split"] = "train"
    meta["source"] = f"{data.meta.get('source', src)} ({name}, {n} images, replicated to {count})"
    (dst / "meta.json").write_text(json.dumps(meta, indent=1))
    return {"path": str(dst), "images": count, "asked": asked, "source_images": n, "bytes": count * isz,
            "write_s": seconds, "write_GBps": count * isz / seconds / 1e9 if seconds > 0 else None}


def page_cache_fraction(path) -> float | None:
    """Fraction of a file's pages in the page cache (mincore(2)), or None where that cannot be read."""
    try:
        import ctypes
        import mmap

        size = os.path.getsize(path)
        if size == 0:
            return 1.0
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr is None or addr == ctypes.c_void_p(-1).value:
                return None
            try:
                vec = (ctypes.c_ubyte * ((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
                if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                    return None
                return float((np.frombuffer(vec, dtype=np.uint8) & 1).mean())
            finally:
                libc.munmap(ctypes.c_void_p(addr), size)
        finally:
            os.close(fd)
    except Exception:  # noqa: BLE001 - informational only
        return None


def evict(path) -> None:
    """Flush and drop a file's pages from the page cache (a cold read follows)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def ensure_data(cfg: BenchConfig, workdir: Path, log) -> dict:
    """The prepared folder for the end-to-end row: --data, or synthetic images prepared here;
    replicated when asked (or, for the synthetic data, to a size worth timing)."""
    from alexnet.data.prepare import prepare
    from alexnet.data.prepared import is_prepared

    info: dict = {}
    if cfg.data:
        src = Path(cfg.data)
        if not is_prepared(src):
            raise ValueError(f"{src} is not an `alexnet prepare` output folder")
        info["source"] = str(src)
    else:
        n = 8 if cfg.small else 64
        t0 = time.perf_counter()
        images = make_synthetic_source(workdir / "synthetic-src", n, cfg.seed)
        src = prepare(images, workdir / "synthetic-prepared", size=256, workers=1 if cfg.small else None,
                      progress=False)
        info["source"] = f"synthetic: {n} random JPEGs prepared at 256 in {time.perf_counter() - t0:.1f} s"
    target = cfg.replicate_to
    if target is None and not cfg.data:
        target = 8 * max(cfg.e2e_batches) if cfg.small else 40 * max(cfg.e2e_batches)
    if target:
        log(f"replicating {src} to {target:,} images ...")
        rep = replicate_prepared(src, workdir / f"replicated-{target}", target, log)
        log(f"  wrote {rep['bytes'] / 1e9:.1f} GB in {rep['write_s']:.1f} s")
        info["replicated"] = rep
        src = Path(rep["path"])
    info["path"] = str(src)
    return info


# ----------------------------------------------------------------------------------------- profile


CATEGORIES = ("convolutions", "matmul (fc layers)", "response norm (Triton)", "max-pool",
              "fused elementwise (inductor Triton)", "elementwise (ATen)", "layout copies",
              "optimizer", "memcpy/memset", "other")


def categorize(name: str) -> str:
    n = name.lower()
    if "lrn" in n:
        return "response norm (Triton)"
    if "max_pool" in n or "maxpool" in n or n.startswith("_pool_"):
        return "max-pool"
    if "nchwtonhwc" in n or "nhwctonchw" in n:
        return "layout copies"
    if any(k in n for k in ("fprop", "dgrad", "wgrad", "conv", "implicit_gemm", "cudnn", "xmma_fprop")):
        return "convolutions"
    if any(k in n for k in ("gemm", "nvjet", "cutlass", "cublas", "matmul", "splitk", "gemv")):
        return "matmul (fc layers)"
    if "multi_tensor_apply" in n or "foreach" in n:
        return "optimizer"
    if n.startswith("memcpy") or n.startswith("memset"):
        return "memcpy/memset"
    if "triton" in n:
        return "fused elementwise (inductor Triton)"
    if any(k in n for k in ("copy", "transpose", "permute", "cat_", "catarray")):
        return "layout copies"
    if any(k in n for k in ("elementwise", "vectorized", "reduce", "dropout", "relu", "threshold", "softmax",
                            "nll", "loss", "fill", "index", "random", "distribution", "philox")):
        return "elementwise (ATen)"
    return "other"


def profile_breakdown(fn, steps: int, timer: Timer) -> dict:
    """GPU time per step by category (torch.profiler kernel times) and the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    timer.sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        timer.sync()
    cats = {c: 0.0 for c in CATEGORIES}
    kernels = []
    for evt in prof.key_averages():
        us = getattr(evt, "self_device_time_total", None)
        if us is None:
            us = getattr(evt, "self_cuda_time_total", 0.0)
        if not us:
            continue
        ms = us / 1e3 / steps
        cats[categorize(evt.key)] += ms
        kernels.append({"name": evt.key[:160], "ms_per_step": ms, "calls_per_step": evt.count / steps,
                        "category": categorize(evt.key)})
    kernels.sort(key=lambda k: -k["ms_per_step"])
    total = sum(cats.values())
    return {"ms_per_step": {k: v for k, v in cats.items() if v > 0}, "total_ms": total, "top_kernels": kernels[:40]}


# -------------------------------------------------------------------------------------------- main


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        try:
            import triton

            env["triton"] = triton.__version__
        except ImportError:
            env["triton"] = None
    else:
        env["cpu_threads"] = torch.get_num_threads()
    env["cpus"] = os.cpu_count()
    env["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return env


def _rate(batch: int, ms: float) -> float:
    return batch / ms * 1e3 if ms > 0 else float("nan")


def run_bench(cfg: BenchConfig) -> dict:
    cfg = cfg.resolved()
    log = cfg.log or (lambda *a, **k: None)
    from alexnet.runtime import resolve_device

    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    amp = torch.bfloat16 if cuda else None
    fmt = torch.channels_last if cuda else torch.contiguous_format
    timer = Timer(device)
    result: dict = {"env": environment(device), "config": {
        k: v for k, v in dataclasses.asdict(cfg).items() if k != "log"}, "rows": [], "nets": {}}
    result["config"]["precision"] = "bf16 autocast" if amp else "fp32"
    result["config"]["memory_format"] = "channels_last" if cuda else "contiguous"
    from alexnet.models import fast

    result["config"]["fast_options"] = ("reference (plain layers)" if cfg.reference or not cuda
                                        else fast.format_choices(fast.parse_choices(cfg.fast)))
    log(f"alexnet bench on {result['env'].get('gpu', 'cpu')} (torch {torch.__version__}"
        f"{', cuDNN ' + str(result['env']['cudnn']) if cuda else ''}), batches {list(cfg.batches)}")
    nets = build_nets(cfg, device)
    for name, e in nets.items():
        result["nets"][name] = {"params": sum(p.numel() for p in e["model"].parameters())}

    def save():
        if cfg.json_out:
            Path(cfg.json_out).write_text(json.dumps(result, indent=1, default=str))

    def add(row, batch, unit, times: dict, extra=None):
        r = {"row": row, "batch": batch, "unit": unit}
        for name, t in times.items():
            r[name] = {"images_per_s": _rate(t.get("images", batch), t["ms"]), "ms": t["ms"],
                       "spread": t.get("spread", 0.0), "warmup_s": t.get("warmup_s")}
        if all(n in r for n in NETS):
            r["ratio"] = r["alexnet2012"]["images_per_s"] / r["torchvision"]["images_per_s"]
        if extra:
            r.update(extra)
        result["rows"].append(r)
        save()
        parts = [f"{n} {r[n]['images_per_s']:,.0f} img/s ({r[n]['ms']:.2f} ms, spread {100 * r[n]['spread']:.0f}%)"
                 for n in times]
        log(f"  {row} batch {batch}: " + "; ".join(parts) + (f"; ratio {r['ratio']:.3f}" if "ratio" in r else ""))
        return r

    # -- training steps, synthetic float data resident on the device
    if "train" in cfg.rows:
        log("train step: forward + loss + backward + PaperSGD, random 224x224 images on the device")
        for b in cfg.batches:
            labels = torch.randint(0, 1000, (b,), device=device)
            xs = random_images(b, device, fmt, seed=cfg.seed + b)
            fns = {}
            for name, e in nets.items():
                e["model"].train()
                e.setdefault("opt", make_optimizer(e["model"]))
                graphs = bool(cfg.compile_mode and "reduce-overhead" in cfg.compile_mode and e["compile"] == "on")
                fns[name] = _guarded(e, lambda net, e=e, g=graphs: train_fn(net, e["opt"], xs, labels, amp, g), log)
            add("train", b, "images/s", measure(fns, timer, cfg.warmup, cfg.steps, cfg.repeats))
            del xs

    # -- profiler breakdown of one train step per network at the largest batch
    if cfg.profile and cuda:
        b = max(cfg.batches)
        labels = torch.randint(0, 1000, (b,), device=device)
        xs = random_images(b, device, fmt, seed=cfg.seed + 11)
        result["profile"] = {"batch": b}
        for name, e in nets.items():
            e["model"].train()
            e.setdefault("opt", make_optimizer(e["model"]))
            p = profile_breakdown(train_fn(e["net"], e["opt"], xs, labels, amp), 10, timer)
            result["profile"][name] = p
        log(format_profile(result["profile"]))
        save()

    # -- end-to-end: loader -> TrainStep, beside TrainStep on resident uint8 batches
    if "e2e" in cfg.rows:
        result["e2e"] = run_e2e(cfg, nets, device, amp, fmt, timer, log, add)
        save()

    # -- inference
    if "infer" in cfg.rows:
        log("inference: forward in eval mode, no autograd")
        for b in cfg.batches:
            xs = random_images(b, device, fmt, seed=cfg.seed + 7 * b)
            fns = {}
            for name, e in nets.items():
                e["model"].eval()
                fns[name] = _guarded(e, lambda net: infer_fn(net, xs, amp), log)
            add("infer", b, "images/s", measure(fns, timer, cfg.warmup, cfg.steps, cfg.repeats))
            del xs

    # -- ten-crop evaluation
    if "tencrop" in cfg.rows:
        from alexnet.evaluate import crop_probabilities

        b = cfg.eval_batch
        log(f"ten-crop evaluation: crop_probabilities, {b} uint8 256x256 images x 10 views per batch")
        u8 = random_u8(b, device, seed=cfg.seed + 3) if cuda else random_u8(b, device).contiguous()
        mean = torch.rand(3, 256, 256, device=device) * 255
        fns = {}
        for name, e in nets.items():
            e["model"].eval()
            fns[name] = _guarded(e, lambda net: (lambda: crop_probabilities(
                [net], u8, mean, 224, 10, amp, cuda, [1.0])), log)
        add("tencrop", b, "images/s (10 views each)", measure(fns, timer, cfg.warmup, cfg.steps, cfg.repeats),
            {"views_per_image": 10})

    for name, e in nets.items():
        result["nets"][name]["compile"] = e["compile"]
        if e["compile_error"]:
            result["nets"][name]["compile_error"] = e["compile_error"]
    try:
        from torch._dynamo.utils import counters

        result["graph_breaks"] = int(sum(counters["graph_break"].values()))
    except Exception:  # noqa: BLE001
        result["graph_breaks"] = None
    return result


def run_e2e(cfg, nets, device, amp, fmt, timer, log, add) -> dict:
    from alexnet.data.augment import Augment
    from alexnet.data.loader import BatchLoader
    from alexnet.data.prepared import PreparedData
    from alexnet.parallel.distributed import DistributedContext
    from alexnet.parallel.placement import Placement
    from alexnet.step import TrainStep

    workdir = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="alexnet-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    out: dict = {"batches": {}}
    try:
        out["data"] = ensure_data(cfg, workdir, log)
        data = PreparedData.open(out["data"]["path"])
        name = "train" if "train" in data.splits else data.splits[0]
        split = data.split(name)
        out["images"] = len(split)
        if cfg.cold:
            evict(split.path)
        out["page_cache_before"] = page_cache_fraction(split.path)
        log(f"end-to-end: {len(split):,} images of {data.size}x{data.size} from {out['data']['path']}"
            + (f", {100 * out['page_cache_before']:.0f}% in the page cache" if out["page_cache_before"] is not None
               else ""))
        stats = (data.mean.to(device), data.pca_eigvals.to(device), data.pca_eigvecs.to(device))
        e = nets["alexnet2012"]
        e["model"].train()
        e.setdefault("opt", make_optimizer(e["model"]))
        gen = torch.Generator(device=device).manual_seed(cfg.seed)
        placement = Placement("single", e["model"], DistributedContext(), "paper")
        placement.net = e["net"]
        step = TrainStep(placement, e["opt"], Augment(crop=224), stats, gen, amp, fmt)
        for b in cfg.e2e_batches:
            # synthetic uint8 batches on the device: the rate to match
            u8 = [random_u8(b, device, seed=cfg.seed + k) for k in range(2)]
            if device.type != "cuda":
                u8 = [x.contiguous() for x in u8]
            labels = torch.randint(0, len(data.classes), (b,), device=device)
            i = [0]

            def synth():
                i[0] += 1
                return step(u8[i[0] % 2], labels)

            synth_t = measure({"alexnet2012": _guarded(e, lambda net: synth, log)}, timer, cfg.warmup, cfg.steps,
                              cfg.repeats)
            synth_row = add("step_u8", b, "images/s", synth_t)
            del u8
            # the loader alone, then loader -> TrainStep: the default loader, then any variants
            steps = max(1, min(cfg.e2e_steps, len(split) // b - cfg.warmup - 1))
            synth_rate = synth_row["alexnet2012"]["images_per_s"]
            configs = [(cfg.reader, cfg.threads)] + [_loader_variant(v) for v in cfg.loader_variants]
            for k, (reader, threads) in enumerate(configs):
                kw = {"reader": reader} | ({} if threads is None else {"threads": threads})

                def loader(kw=kw):
                    return BatchLoader(split, b, shuffle=True, seed=cfg.seed, epoch=b, drop_last=True,
                                       device=device, **kw)

                probe = loader()
                only = _timed_loop(probe, None, cfg.warmup, steps, timer)
                fed = _timed_loop(loader(), step, cfg.warmup, steps, timer)
                rate = b * fed["steps"] / fed["seconds"]
                r = {"loader_only_images_per_s": b * only["steps"] / only["seconds"],
                     "e2e_images_per_s": rate, "synthetic_images_per_s": synth_rate,
                     "e2e_over_synthetic": rate / synth_rate, "steps": fed["steps"], "seconds": fed["seconds"],
                     "reader": probe.reader, "threads": probe.threads,
                     "projected_90_epochs_h": EPOCHS * IMAGENET_TRAIN / rate / 3600}
                if k == 0:
                    out["batches"][str(b)] = r
                else:
                    out.setdefault("variants", []).append(dict(r, batch=b))
                log(f"  e2e batch {b} [{probe.reader}, {probe.threads} threads]: {rate:,.0f} img/s = "
                    f"{100 * r['e2e_over_synthetic']:.1f}% of the synthetic {synth_rate:,.0f}; loader alone "
                    f"{r['loader_only_images_per_s']:,.0f} img/s; 90 ImageNet epochs: "
                    f"{r['projected_90_epochs_h']:.2f} h")
        out["page_cache_after"] = page_cache_fraction(split.path)
    finally:
        if not cfg.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return out


def _loader_variant(text: str) -> tuple[str, int | None]:
    reader, _, threads = text.partition(":")
    return reader, int(threads) if threads else None


def _timed_loop(loader, step, warmup: int, steps: int, timer: Timer) -> dict:
    """Wall time of `steps` batches after `warmup` batches (synchronised at both ends)."""
    t0, n = None, 0
    if warmup <= 0:
        timer.sync()
        t0 = time.perf_counter()
    for k, (x, y) in enumerate(loader):
        if step is not None:
            step(x, y)
        if warmup > 0 and k + 1 == warmup:
            timer.sync()
            t0 = time.perf_counter()
        elif k + 1 > warmup:
            n += 1
            if n >= steps:
                break
    timer.sync()
    if t0 is None:  # fewer batches than the warm-up
        return {"steps": 0, "seconds": float("nan")}
    return {"steps": n, "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------ output


def format_profile(prof: dict) -> str:
    names = [n for n in NETS if n in prof]
    lines = [f"GPU time per training step by kernel category, batch {prof['batch']} (ms, torch.profiler)",
             f"{'category':<38}" + "".join(f"{n:>14}" for n in names)]
    for c in CATEGORIES:
        vals = [prof[n]["ms_per_step"].get(c, 0.0) for n in names]
        if any(vals):
            lines.append(f"{c:<38}" + "".join(f"{v:>14.2f}" for v in vals))
    lines.append(f"{'total':<38}" + "".join(f"{prof[n]['total_ms']:>14.2f}" for n in names))
    return "\n".join(lines)


def format_table(result: dict) -> str:
    env = result["env"]
    cfgd = result["config"]
    head = (f"alexnet bench: {env.get('gpu', 'CPU')}, torch {env['torch']}"
            + (f", cuDNN {env['cudnn']}, Triton {env.get('triton')}" if "cudnn" in env else "")
            + f", {cfgd['precision']}, {cfgd['memory_format']}")
    comp = ", ".join(f"{n}: compile {result['nets'][n].get('compile')}" for n in NETS if n in result["nets"])
    lines = [head, comp, f"alexnet2012 path: {cfgd['fast_options']}",
             f"{'row':<34}{'batch':>6}{'alexnet2012':>14}{'torchvision':>14}{'ratio':>8}"]
    labels = {"train": "train step (img/s)", "infer": "inference (img/s)",
              "tencrop": "ten-crop eval (img/s, 10 views)", "step_u8": "TrainStep, uint8 on device (img/s)"}
    for r in result["rows"]:
        a = r.get("alexnet2012", {}).get("images_per_s")
        t = r.get("torchvision", {}).get("images_per_s")
        lines.append(f"{labels.get(r['row'], r['row']):<34}{r['batch']:>6}"
                     f"{(f'{a:,.0f}' if a else '-'):>14}{(f'{t:,.0f}' if t else '-'):>14}"
                     f"{(format(r['ratio'], '.3f') if 'ratio' in r else '-'):>8}")
    e2e = result.get("e2e")
    if e2e:
        for b, r in e2e.get("batches", {}).items():
            lines.append(f"{'end-to-end from prepared (img/s)':<34}{b:>6}{r['e2e_images_per_s']:>14,.0f}"
                         f"{'-':>14}{'-':>8}   {100 * r['e2e_over_synthetic']:.1f}% of uint8 step; loader alone "
                         f"{r['loader_only_images_per_s']:,.0f} ({r['reader']}, {r['threads']} threads); "
                         f"90 epochs {r['projected_90_epochs_h']:.2f} h")
        for r in e2e.get("variants", []):
            lines.append(f"{'  e2e, loader ' + r['reader'] + ', ' + str(r['threads']) + ' threads':<34}{r['batch']:>6}"
                         f"{r['e2e_images_per_s']:>14,.0f}{'-':>14}{'-':>8}   {100 * r['e2e_over_synthetic']:.1f}% of "
                         f"uint8 step; loader alone {r['loader_only_images_per_s']:,.0f}")
        d = e2e.get("data", {})
        pc = e2e.get("page_cache_before")
        lines.append(f"  data: {e2e.get('images', 0):,} images ({d.get('source', '')})"
                     + (f"; page cache {100 * pc:.0f}% warm at start" if pc is not None else ""))
    return "\n".join(lines)


def main(cfg: BenchConfig, as_json: bool = False, json_out: str | None = None) -> dict:
    if json_out:
        cfg = dataclasses.replace(cfg, json_out=json_out)
    result = run_bench(cfg)
    text = json.dumps(result, default=str)
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=1, default=str))
    print(text if as_json else format_table(result))
    return result


def cmd_bench(args: argparse.Namespace) -> int:

    if args.small and args.device == "auto":
        args.device = "cpu"
    log = (lambda *a, **k: print(*a, file=sys.stderr, flush=True)) if args.json else \
        (lambda *a, **k: print(*a, flush=True))
    cfg = BenchConfig(device=args.device, small=args.small, batches=tuple(args.batch) if args.batch else None,
                      steps=args.steps, repeats=args.repeats, warmup=args.warmup, compile=args.compile,
                      compile_mode=args.compile_mode, reference=args.reference, fast=args.fast,
                      eval_batch=args.eval_batch, data=args.data, replicate_to=args.replicate_to,
                      e2e_batches=tuple(args.e2e_batch) if args.e2e_batch else None, e2e_steps=args.e2e_steps,
                      threads=args.threads, reader=args.reader, loader_variants=tuple(args.loader_variants or ()),
                      workdir=args.workdir, cold=args.cold,
                      rows=tuple(args.rows) if args.rows else ("train", "infer", "tencrop", "e2e"),
                      profile=args.profile, log=None if args.quiet else log)
    try:
        main(cfg, as_json=args.json, json_out=args.json_out)
    except ValueError as e:
        print(f"alexnet bench: error: {e}", file=sys.stderr)
        return 2
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="training/inference throughput of alexnet2012 beside torchvision's alexnet, "
                                     "ten-crop evaluation and end-to-end training from prepared data")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--small", action="store_true", help="tiny batches and few steps, no compile (CI on the CPU)")
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes (default 128 256)")
    p.add_argument("--steps", type=int, help="timed steps per run (default 20)")
    p.add_argument("--repeats", type=int, help="timed runs; the median counts (default 5)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 10)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile both networks (default: on CUDA)")
    p.add_argument("--compile-mode", help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    p.add_argument("--reference", action="store_true", help="alexnet2012 on its plain layers (impl=reference)")
    p.add_argument("--fast", help="alexnet.fastconv options, e.g. conv1=s2d,conv2=blockdiag,relu_lrn=1")
    p.add_argument("--rows", nargs="+", choices=["train", "infer", "tencrop", "e2e"],
                   help="what to measure (default: all)")
    p.add_argument("--eval-batch", type=int, help="images per ten-crop batch (default 128)")
    p.add_argument("--data", help="an `alexnet prepare` folder for the end-to-end row (default: synthetic images)")
    p.add_argument("--replicate-to", type=int, help="repeat its train split to this many images first")
    p.add_argument("--e2e-batch", type=int, nargs="+", help="end-to-end batch sizes (default: --batch)")
    p.add_argument("--e2e-steps", type=int, help="timed loader-fed steps (default 300)")
    p.add_argument("--threads", type=int, help="loader threads")
    p.add_argument("--reader", choices=["auto", "gather", "pread", "split"], default="auto", help="loader reader")
    p.add_argument("--loader-variants", nargs="+", metavar="READER:THREADS",
                   help="more end-to-end runs with other loader settings, e.g. pread:4 gather:1")
    p.add_argument("--workdir", help="keep made or replicated data here (default: a temporary folder)")
    p.add_argument("--cold", action="store_true", help="drop the data file from the page cache first")
    p.add_argument("--profile", action="store_true", help="GPU time per op category of one train step")
    p.add_argument("--json", action="store_true", help="print the results as JSON (progress to stderr)")
    p.add_argument("--json-out", help="also write the JSON results to this file")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_bench)
