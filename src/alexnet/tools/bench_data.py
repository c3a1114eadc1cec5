"""Data for the end-to-end benchmark: a prepared folder made here from synthetic images or given,
replicated to a size worth timing, its page-cache state, and a timed loop over a loader."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

__all__ = ["make_synthetic_source", "replicate_prepared", "page_cache_fraction", "evict", "ensure_data", "timed_loop"]


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


def ensure_data(cfg, workdir: Path, log) -> dict:
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
        n = 8 if cfg.cpu_sized else 64
        t0 = time.perf_counter()
        images = make_synthetic_source(workdir / "synthetic-src", n, cfg.seed)
        src = prepare(images, workdir / "synthetic-prepared", size=256, workers=1 if cfg.cpu_sized else None,
                      progress=False)
        info["source"] = f"synthetic: {n} random JPEGs prepared at 256 in {time.perf_counter() - t0:.1f} s"
    target = cfg.replicate_to
    if target is None and not cfg.data:
        target = 8 * max(cfg.batches) if cfg.cpu_sized else 40 * max(cfg.batches)
    if target:
        log(f"replicating {src} to {target:,} images ...")
        rep = replicate_prepared(src, workdir / f"replicated-{target}", target, log)
        log(f"  wrote {rep['bytes'] / 1e9:.1f} GB in {rep['write_s']:.1f} s")
        info["replicated"] = rep
        src = Path(rep["path"])
    info["path"] = str(src)
    return info


def timed_loop(loader, step, warmup: int, steps: int, timer) -> dict:
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
