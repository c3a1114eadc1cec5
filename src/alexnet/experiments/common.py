"""The paper's experiments, each a set of ordinary training runs made with `alexnet.train.train`.

`relu_vs_tanh` is Figure 1 (how many epochs each activation needs to reach 25% training error);
`ablations` is section 3's list of choices (response normalisation, overlapping pooling, dropout,
PCA colour noise, two columns), each switched off in turn. This module holds what both share:

- `prepared_data` / `subset_prepared`: prepare image folders once, and cut a class-balanced subset
  (for a small CPU budget) into a prepared folder of its own;
- `run_or_reuse` / `run_many`: one run directory per (configuration, seed). A finished run with
  the same configuration is reused; an unfinished one, or one with fewer epochs of the same
  configuration, is continued with train's exact resume. `run_many` can run several at once in
  separate processes (`jobs`), which pays on a GPU: these small nets are launch-bound, and one
  process leaves the GPU idle most of the time;
- `time_step` / `budget_table`: the measured seconds of one training step on the chosen device,
  turned into a plan (runs x seconds) printed before anything long starts;
- `seed_summary`, `epochs_to_error`: the statistics the experiments report.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from alexnet.errors import DataError

__all__ = ["budget_table", "epochs_to_error", "experiment_data", "format_table", "prepared_data", "run_many", "run_or_reuse",
           "seed_summary", "subset_prepared", "time_step"]

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Statistics


def seed_summary(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min, max and n of per-seed numbers;
    values that are None (a run that never got there) are counted in `missing`."""
    got = [float(v) for v in values if v is not None]
    n = len(got)
    mean = sum(got) / n if n else None
    std = (sum((v - mean) ** 2 for v in got) / (n - 1)) ** 0.5 if n > 1 else (0.0 if n else None)
    return {"mean": mean, "std": std, "min": min(got) if got else None, "max": max(got) if got else None,
            "n": n, "missing": len(values) - n, "values": list(values)}


def epochs_to_error(errors: list[float], threshold: float, chance: float) -> float | None:
    """The (fractional) epoch at which a per-epoch error curve first reaches `threshold`.

    `errors[i]` is the error measured over epoch i + 1; the curve starts at (0, chance). Between
    two epochs the crossing is linearly interpolated. None if the curve never gets there.
    """
    prev_x, prev_y = 0.0, chance
    for i, y in enumerate(errors):
        x = float(i + 1)
        if y <= threshold:
            if prev_y <= threshold:
                return prev_x
            return prev_x + (prev_y - threshold) / (prev_y - y) * (x - prev_x)
        prev_x, prev_y = x, y
    return None


def format_table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Data


def prepared_data(data: str | Path, work: Path, image_size: int, log: Log = print) -> Path:
    """`data` itself when it is an `alexnet prepare` folder; otherwise image folders prepared once
    into `work/data` (resumable, and returned at once when already done)."""
    from alexnet.data.prepare import prepare
    from alexnet.data.prepared import is_prepared

    src = Path(data)
    if not src.exists():
        raise DataError(src, "no such file or directory")
    if is_prepared(src):
        return src
    out = work / "data"
    log(f"preparing {src} -> {out} ({image_size}x{image_size}); done once, reused by every run")
    return prepare(src, out, size=image_size, progress=True)


def experiment_data(data: str | Path, work: Path, image_size: int, train_images: int | None,
                    test_images: int | None, log: Log = print) -> Path:
    """The prepared data an experiment runs on: `data` prepared once under `work`, cut to a
    class-balanced subset of `train_images` / `test_images` (test and val) when either is given."""
    prepared = prepared_data(data, work, image_size, log)
    if not (train_images or test_images):
        return prepared
    from alexnet.data.prepared import PreparedData

    sizes = {s: None for s in PreparedData.open(prepared).splits}
    sizes["train"] = train_images
    for s in ("test", "val"):
        if s in sizes:
            sizes[s] = test_images
    return subset_prepared(prepared, work / "data-subset", sizes)


def _balanced(labels: np.ndarray, n: int, classes: int, seed: int) -> np.ndarray:
    """`n` positions, as equal a number from each class as there is, chosen at random; sorted."""
    perm = np.random.default_rng(seed).permutation(len(labels))
    per, extra = divmod(n, classes)
    chosen = []
    for c in range(classes):
        want = per + (1 if c < extra else 0)
        chosen.append(perm[labels[perm] == c][:want])
    return np.sort(np.concatenate(chosen))


def subset_prepared(src: str | Path, out: Path, sizes: dict[str, int | None], seed: int = 0) -> Path:
    """A prepared folder holding a class-balanced random subset of some splits of `src`.

    `sizes` maps a split to its number of images (None: all of it). The statistics (mean image, PCA)
    are the full training split's, copied unchanged. Reused when `out` already holds this subset.
    """
    from alexnet.data.prepare import FORMAT, VERSION
    from alexnet.data.prepared import PreparedData, is_prepared

    src = Path(src)
    data = PreparedData.open(src)
    want = {"subset_of": str(src.resolve()), "sizes": {k: v for k, v in sizes.items()}, "seed": seed}
    if is_prepared(out) and json.loads((out / "meta.json").read_text()).get("subset") == want:
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    meta = {k: v for k, v in data.meta.items() if k != "splits"}
    meta["splits"], meta["subset"] = {}, want
    for name in data.splits:
        if name not in sizes:
            continue
        split = data.split(name)
        labels = split.labels.numpy()
        n = sizes[name]
        idx = np.arange(len(split)) if n is None or n >= len(split) else _balanced(labels, n, len(data.classes), seed)
        with open(out / f"{name}.images", "wb") as f:
            for lo in range(0, len(idx), 2048):
                batch = split.read(idx[lo:lo + 2048])                       # (B, 3, S, S), a view of HWC
                f.write(batch.permute(0, 2, 3, 1).contiguous().numpy().tobytes())
        np.save(out / f"{name}.labels.npy", labels[idx].astype(np.int64))
        files = split.files
        if files:
            (out / f"{name}.files.txt").write_text("".join(files[i] + "\n" for i in idx.tolist()))
        meta["splits"][name] = {"count": int(len(idx)), "encoding": "raw", "skipped": 0}
    shutil.copyfile(src / "stats.safetensors", out / "stats.safetensors")
    assert meta.get("format") == FORMAT and meta.get("version") == VERSION
    (out / "meta.json").write_text(json.dumps(meta, indent=1))    # last: its presence means complete
    return out


# ---------------------------------------------------------------------------------------------
# Runs

_NOT_SPEC = {"out", "progress", "resume", "epochs"}   # fields that do not change what a run computes


def _spec(cfg) -> dict:
    return json.loads(json.dumps({k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_SPEC},
                                 default=str))


def _read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_or_reuse(cfg, log: Log = print) -> dict:
    """Train `cfg` into `cfg.out`, or reuse / continue what that directory already holds.

    Returns {"run", "metrics" (one dict per epoch), "result" (train's return), "seconds", "reused",
    "error" (a message when training stopped with TrainingDiverged, else None)}.
    """
    from alexnet.errors import TrainingDiverged
    from alexnet.train import train

    run = Path(cfg.out)
    marker = run / "experiment.json"
    spec = _spec(cfg)
    if marker.exists():
        done = json.loads(marker.read_text())
        if done.get("spec") == spec and done.get("epochs") == cfg.epochs:
            done["reused"] = True
            return done
        if done.get("spec") == spec and done.get("error"):
            done["reused"] = True     # diverged before: it would diverge again
            return done
    resume = False
    if (run / "last.pt").exists() and (run / "spec.json").exists():
        before = json.loads((run / "spec.json").read_text())
        done_epochs = max([m["epoch"] for m in _read_metrics(run) if m.get("complete", True)], default=0)
        resume = before == spec and done_epochs <= cfg.epochs
    if not resume and run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    (run / "spec.json").write_text(json.dumps(spec, indent=1))
    t0 = time.perf_counter()
    error = None
    try:
        result = train(dataclasses.replace(cfg, resume=resume), log=log)
    except TrainingDiverged as e:
        result, error = {}, str(e)
        log(f"stopped: {e}")
    record = {"run": str(run), "spec": spec, "epochs": cfg.epochs, "metrics": _read_metrics(run),
              "result": result, "seconds": time.perf_counter() - t0, "reused": False, "error": error,
              "continued": resume}
    marker.write_text(json.dumps(record, indent=1, default=str))
    return record


def _worker(cfg_fields: dict, name: str, threads: int) -> dict:
    from alexnet.config import TrainConfig

    torch.set_num_threads(threads)
    return run_or_reuse(TrainConfig(**cfg_fields), log=lambda msg: print(f"[{name}] {msg}", flush=True))


def run_many(cfgs: list, jobs: int = 1, log: Log = print) -> list[dict]:
    """`run_or_reuse` for each configuration, `jobs` at a time in separate (spawned) processes."""
    if jobs <= 1 or len(cfgs) <= 1:
        out = []
        for cfg in cfgs:
            name = Path(cfg.out).name
            out.append(run_or_reuse(cfg, log=lambda msg, name=name: log(f"[{name}] {msg}")))
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // jobs)
    ctx = multiprocessing.get_context("spawn")   # a forked CUDA context is unusable
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = [pool.submit(_worker, dataclasses.asdict(c), Path(c.out).name, threads) for c in cfgs]
        return [f.result() for f in futures]


# ---------------------------------------------------------------------------------------------
# Budget


@torch.no_grad()
def _eval_pass(model, x):
    return model(x)


def time_step(arch: str, options: dict, crop: int, image_size: int, batch: int, device: str = "auto",
              precision: str = "auto", steps: int | None = None, warmup: int | None = None) -> dict:
    """Measured seconds of one training step (augmentation on the device, forward, backward, the
    paper's SGD update) and of evaluating 256 images, on synthetic data, the same way train runs
    them (bf16 autocast and channels_last on CUDA). A handful of steps: on a CPU each is slow and
    steady; on a GPU the first ones pay for cuDNN's autotuning and are left out."""
    import torch.nn.functional as F

    from alexnet.data.augment import Augment, train_views
    from alexnet.models import build_model
    from alexnet.optim import PaperSGD
    from alexnet.runtime import resolve_device

    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    steps = steps or (10 if cuda else 3)
    warmup = warmup or (5 if cuda else 2)
    opts = dict(options)
    if "input_size" in opts or arch.startswith("cifar"):
        opts["input_size"] = crop
    model = build_model(arch, **opts).to(dev)
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model.to(memory_format=fmt)
    amp = torch.bfloat16 if (precision == "bf16" or (precision == "auto" and cuda)) else None
    opt = PaperSGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator(device=dev).manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8, device=dev, generator=g)
    labels = torch.randint(0, model_classes(model), (batch,), device=dev, generator=g)
    mean = torch.full((3, image_size, image_size), 120.0, device=dev)
    eigvals, eigvecs = torch.ones(3, device=dev), torch.eye(3, device=dev)
    aug = Augment(crop=crop)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def one_step():
        x = train_views(images, mean, eigvals, eigvecs, aug, g).contiguous(memory_format=fmt)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(model(x).float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    for _ in range(warmup):
        one_step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        one_step()
    sync()
    step_s = (time.perf_counter() - t0) / steps
    model.eval()
    xe = torch.zeros(batch, 3, crop, crop, device=dev).contiguous(memory_format=fmt)
    with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
        if cuda:
            _eval_pass(model, xe)
            sync()
        t0 = time.perf_counter()
        for _ in range(max(1, steps // 2)):
            _eval_pass(model, xe)
        sync()
    eval_s = (time.perf_counter() - t0) / max(1, steps // 2) * 256 / batch
    return {"step_seconds": step_s, "eval_seconds_per_256": eval_s, "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if cuda else "cpu", "batch": batch}


def model_classes(model) -> int:
    return model.config.num_classes


RUN_OVERHEAD_S = 3.0   # start-up, checkpoints, the first (cuDNN benchmark) steps


def run_seconds(timing: dict, epochs: int, train_images: int, eval_images: int, batch: int) -> float:
    steps = train_images // batch
    per_epoch = steps * timing["step_seconds"] + math.ceil(eval_images / 256) * timing["eval_seconds_per_256"]
    return RUN_OVERHEAD_S + epochs * per_epoch


def budget_table(rows: list[dict]) -> str:
    """rows: {"what", "runs", "epochs", "seconds_per_run"} -> a printed plan with the total."""
    total = sum(r["runs"] * r["seconds_per_run"] for r in rows)
    body = [[r["what"], r["runs"], r["epochs"], f"{r['seconds_per_run']:.1f}",
             f"{r['runs'] * r['seconds_per_run']:.0f}"] for r in rows]
    body.append(["total", sum(r["runs"] for r in rows), "", "", f"{total:.0f} s ({total / 60:.1f} min)"])
    return format_table(["runs of", "runs", "epochs", "s/run (est.)", "s"], body)
