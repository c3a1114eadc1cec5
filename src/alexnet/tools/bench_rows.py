"""The rows of `alexnet bench` beyond the training step: inference and ten-crop evaluation beside
torchvision's alexnet, the end-to-end rate from prepared data, and the profiles."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from alexnet.data.loader import BatchLoader
from alexnet.data.prepared import PreparedData
from alexnet.evaluate import crop_probabilities
from alexnet.models import build_model
from alexnet.tools import bench_data, bench_steps
from alexnet.tools.timing import Timer, device_busy, measure, profile_breakdown, rate

__all__ = ["peer_rows", "e2e_rows", "profiles"]

PEERS = ("alexnet2012", "torchvision")


def _nets(device: torch.device, compile_: bool) -> dict:
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    nets = {}
    for name in PEERS:
        torch.manual_seed(0)
        model = build_model(name).to(device).to(memory_format=fmt).eval()
        nets[name] = torch.compile(model) if compile_ else model
    return nets


def peer_rows(cfg, device: torch.device, result: dict, save) -> None:
    """Inference and ten-crop evaluation, the paper's net beside torchvision's (compiled on CUDA)."""
    cuda, timer = device.type == "cuda", Timer(device)
    amp = torch.bfloat16 if cuda else None
    nets = _nets(device, cuda and "compiled" in cfg.variants)
    for row in [r for r in ("infer", "tencrop") if r in cfg.rows]:
        for batch in cfg.batches if row == "infer" else cfg.batches[:1]:
            cfg.log(f"{row}: alexnet2012 and torchvision, batch {batch} ...")
            if row == "infer":
                x = (torch.randn(batch, 3, 224, 224, device=device) * 60).contiguous(
                    memory_format=torch.channels_last if cuda else torch.contiguous_format)
                fns = {n: (lambda net=net: _infer(net, x, amp)) for n, net in nets.items()}
            else:
                u8 = bench_steps.random_u8(batch, device)
                u8 = u8 if cuda else u8.contiguous()
                mean = bench_steps.stats_for(device)[0]
                fns = {n: (lambda net=net: crop_probabilities([net], u8, mean, 224, 10, amp, cuda, [1.0]))
                       for n, net in nets.items()}
            t = measure(fns, timer, cfg.warmup, cfg.steps, cfg.repeats)
            r = {"row": row, "batch": batch} | {n: {"images_per_s": rate(batch, v["ms"]), "ms": v["ms"]}
                                                for n, v in t.items()}
            r["ratio"] = r["alexnet2012"]["images_per_s"] / r["torchvision"]["images_per_s"]
            result["peers"].append(r)
            cfg.log(f"  alexnet2012 {r['alexnet2012']['images_per_s']:,.1f} img/s, torchvision "
                    f"{r['torchvision']['images_per_s']:,.1f} img/s, ratio {r['ratio']:.3f}")
            save()


@torch.no_grad()
def _infer(net, x, amp):
    with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
        return net(x)


def e2e_rows(cfg, device: torch.device, result: dict, save, best_step: dict) -> None:
    """The step `alexnet train` runs by default, fed by the loader, beside the same step on resident data
    (`best_step[batch]`) and the loader alone, for each worker count in cfg.workers."""
    timer = Timer(device)
    workdir = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="alexnet-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    out = result["e2e"] = {"rows": []}
    try:
        out["data"] = bench_data.ensure_data(cfg, workdir, cfg.log)
        data = PreparedData.open(out["data"]["path"])
        split = data.split("train" if "train" in data.splits else data.splits[0])
        out["images"], out["encoding"] = len(split), split.encoding
        out["page_cache_before"] = bench_data.page_cache_fraction(split.path)
        variant = "graphed" if device.type == "cuda" else "eager"
        for batch in cfg.batches:
            placement = bench_steps.build_form("alexnet2012", device)
            step = bench_steps.step_fn(placement, variant, batch, device, cfg.seed, log=cfg.log).step
            steps = max(1, min(cfg.e2e_steps, len(split) // batch - cfg.warmup - 1))
            for workers in cfg.workers:
                opts = {} if workers is None else {"workers": workers}

                def loader(epoch):
                    return BatchLoader(split, batch, shuffle=True, seed=cfg.seed, epoch=epoch, drop_last=True,
                                       device=device, **opts)

                cfg.log(f"e2e: batch {batch}, {split.encoding} store, workers {workers or 'default'} ...")
                alone = bench_data.timed_loop(loader(0), None, cfg.warmup, steps, timer)
                fed = bench_data.timed_loop(loader(1), step, cfg.warmup, steps, timer)
                r = {"batch": batch, "workers": workers, "variant": variant,
                     "loader_images_per_s": batch * alone["steps"] / alone["seconds"],
                     "e2e_images_per_s": batch * fed["steps"] / fed["seconds"], "steps": fed["steps"]}
                if batch in best_step:
                    r["resident_images_per_s"] = best_step[batch]
                    r["e2e_over_resident"] = r["e2e_images_per_s"] / best_step[batch]
                r["epoch_minutes"] = 1_281_167 / r["e2e_images_per_s"] / 60
                out["rows"].append(r)
                cfg.log(f"  {r['e2e_images_per_s']:,.1f} img/s end to end"
                        + (f" = {100 * r['e2e_over_resident']:.1f}% of the resident step" if batch in best_step else "")
                        + f"; loader alone {r['loader_images_per_s']:,.1f} img/s")
                save()
            del placement, step
        out["page_cache_after"] = bench_data.page_cache_fraction(split.path)
    finally:
        if not cfg.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def profiles(cfg, device: torch.device, result: dict, save) -> None:
    """GPU time by kernel category for the grouped step, and per GPU for the two columns."""
    timer, batch = Timer(device), max(cfg.batches)
    out = result["profile"] = {"batch": batch}
    for form, variant in (("alexnet2012", "compiled"), ("columns-2gpu", "eager")):
        if form not in cfg.forms:
            continue
        fn = bench_steps.step_fn(bench_steps.build_form(form, device), variant, batch, device, cfg.seed)
        out[form] = {"kernels": profile_breakdown(fn, 10, timer)}
        if form.startswith("columns"):
            out[form]["per_gpu"] = device_busy(fn, 10, timer)
            for dev, d in out[form]["per_gpu"].items():
                cfg.log(f"  {form} GPU {dev}: busy {d['busy_ms']:.2f} ms of {d['wall_ms']:.2f} ms per step "
                        f"(exchanges {d['exchange_ms']:.2f} ms, idle {d['idle_ms']:.2f} ms)")
        save()
