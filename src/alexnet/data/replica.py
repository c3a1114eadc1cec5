"""An ImageNet-size JPEG store made quickly from a few hundred photos, for measuring the data path at
full scale (1,281,167 training images of 256x256 in 1,000 classes) without ImageNet.

>>> make_replica_store("shared/data/imagenet-sample", "/data/replica")     # doctest: +SKIP

What it is, honestly: every image is one of the base photos (rescaled and centre-cropped to
``size + size // 8``), varied per copy so that no two are the same: a random ``size x size`` crop
(up to 32 pixels of shift at 256), a horizontal flip with probability 1/2, a gain per colour
channel in [0.8, 1.2] and an offset in [-20, 20] grey levels, and Gaussian noise of 2 grey levels
(from a fixed bank at a random place). Encoded like ``prepare --encoding jpeg``: the same bytes
per image as the real photos (about 20.2 KB at quality 90), so reading and decoding cost what they
would for ImageNet. Labels are ``i % classes``: nothing to learn, only to time.

The statistics (mean image, RGB covariance eigen-decomposition) are computed exactly over a
sample, every ``stats_every``-th training image (pixels before encoding), since summing every
image would cost a third of the time. The store is written in the format of
:mod:`alexnet.data.format` by worker processes on all cores, with a progress bar; a store that is
already complete for the same parameters is kept.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from alexnet.data import format as F

__all__ = ["make_replica_store", "IMAGENET_TRAIN", "IMAGENET_CLASSES"]

IMAGENET_TRAIN = 1_281_167
IMAGENET_CLASSES = 1000
NOISE = 2.0  # grey levels (standard deviation)


def _make_image(base: np.ndarray, bank: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """One varied copy of a random base photo: uint8 (size, size, 3)."""
    k = int(rng.integers(len(base)))
    span = base.shape[1] - size
    dy, dx, oy, ox = (int(v) for v in rng.integers(0, [span + 1, span + 1, size, size]))
    im = base[k, dy : dy + size, dx : dx + size]
    if rng.random() < 0.5:
        im = im[:, ::-1]
    x = im.astype(np.float32)
    x *= rng.uniform(0.8, 1.2, 3).astype(np.float32)
    x += rng.uniform(-20.0, 20.0, 3).astype(np.float32)
    x += bank[oy : oy + size, ox : ox + size]
    np.clip(x, 0, 255, out=x)
    return x.astype(np.uint8)


def _chunk(task: dict) -> dict:
    """Images ``start..start+count`` of one split: encoded to one blob file, sizes and sums returned."""
    from alexnet.data.decode import encode_store_jpeg
    from alexnet.data.stats import ColorSums
    from alexnet.runtime import atomic_write_bytes

    base = np.load(task["base"], mmap_mode="r")
    bank = np.load(task["bank"], mmap_mode="r")
    size, start = task["size"], task["start"]
    rng = np.random.default_rng([task["seed"], task["split_id"], start])
    sums = ColorSums(size) if task["stats_every"] else None
    blobs = []
    for i in range(start, start + task["count"]):
        img = _make_image(base, bank, rng, size)
        blobs.append(encode_store_jpeg(img, task["quality"]))
        if sums is not None and i % task["stats_every"] == 0:
            sums.add(img)
    atomic_write_bytes(Path(task["blob"]), b"".join(blobs))
    return {"split": task["split"], "chunk": task["chunk"], "sizes": np.array([len(b) for b in blobs], np.int64),
            "sums": sums.arrays() if sums is not None else None, "count": task["count"],
            "stats_count": sums.count if sums is not None else 0}


def _prepare_base(photos, out: Path, size: int, seed: int) -> tuple[Path, Path, int]:
    from alexnet.data.loader_bench import sample_images

    from alexnet.data.procs import one_thread

    with one_thread():
        base = sample_images(photos, size + size // 8)
    bank = (np.random.default_rng(seed).standard_normal((2 * size, 2 * size, 3)) * NOISE).astype(np.float32)
    work = out / F.PARTIAL
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "base.npy", base)
    np.save(work / "bank.npy", bank)
    return work / "base.npy", work / "bank.npy", len(base)


def _finish_split(out: Path, name: str, results: list[dict], classes: int) -> int:
    from alexnet.data.prepare_state import concatenate_blobs, save_npy

    results.sort(key=lambda r: r["chunk"])
    sizes = np.concatenate([r["sizes"] for r in results])
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    tmp = out / f"{name}.jpeg.partial"
    concatenate_blobs([out / F.PARTIAL / name / f"blob-{r['chunk']:07d}.jpg" for r in results],
                      [int(r["sizes"].sum()) for r in results], tmp, None)
    save_npy(out / F.offsets_file(name), offsets)
    save_npy(out / F.labels_file(name), np.arange(len(sizes), dtype=np.int64) % classes)
    tmp.replace(out / F.images_file(name, "jpeg"))
    return len(sizes)


def make_replica_store(photos, out, count: int = IMAGENET_TRAIN, classes: int = IMAGENET_CLASSES,
                       val_count: int = 10_000, size: int = 256, quality: int = F.DEFAULT_QUALITY,
                       workers: int | None = None, chunk_size: int = 1024, stats_every: int = 8, seed: int = 0,
                       progress: bool = True) -> Path:
    """Write a JPEG store of ``count`` train and ``val_count`` val images made from ``photos``
    (a folder of photos) into ``out``; returns ``out``. See the module's text for what it holds."""
    out = Path(out)
    params = {"photos": str(Path(photos).resolve()), "count": count, "classes": classes, "val_count": val_count,
              "size": size, "quality": quality, "stats_every": stats_every, "seed": seed, "noise": NOISE}
    meta = F.read_json(out / F.META)
    if meta is not None and meta.get("replica") == params:
        return out
    if out.exists():
        shutil.rmtree(out)
    base, bank, n_base = _prepare_base(photos, out, size, seed)
    tasks = []
    for split_id, (name, n) in enumerate((("train", count), ("val", val_count))):
        (out / F.PARTIAL / name).mkdir(parents=True, exist_ok=True)
        for k, start in enumerate(range(0, n, chunk_size)):
            tasks.append({"split": name, "split_id": split_id, "chunk": k, "start": start,
                          "count": min(chunk_size, n - start), "size": size, "quality": quality, "seed": seed,
                          "stats_every": stats_every if name == "train" else 0, "base": str(base),
                          "bank": str(bank), "blob": str(out / F.PARTIAL / name / f"blob-{k:07d}.jpg")})
    t0 = time.perf_counter()
    results = _run(tasks, workers, count + val_count, progress)
    seconds = time.perf_counter() - t0
    _publish(out, results, params, classes, size, quality, stats_every, n_base)
    if progress:
        print(f"replica: {count + val_count:,} images in {seconds:.1f} s: {(count + val_count) / seconds:,.0f} "
              f"images/s", file=sys.stderr)
    return out


def _run(tasks: list[dict], workers: int | None, total: int, progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    from alexnet.data.procs import context, one_thread, usable_cores, worker_setup

    workers = max(1, min(workers or usable_cores(), len(tasks)))
    results = []
    with tqdm(total=total, unit="img", desc="replica", disable=not progress, smoothing=0.05) as bar:
        if workers == 1:
            with one_thread():
                for t in tasks:
                    results.append(_chunk(t))
                    bar.update(t["count"])
            return results
        pool = context().Pool(workers, initializer=worker_setup)
        try:
            for r in pool.imap_unordered(_chunk, tasks, chunksize=1):
                results.append(r)
                bar.update(r["count"])
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    return results


def _publish(out: Path, results: list[dict], params: dict, classes: int, size: int, quality: int,
             stats_every: int, n_base: int) -> None:
    from alexnet.data.stats import ColorSums, color_stats
    from alexnet.runtime import atomic_write_text

    splits = {}
    for name in ("train", "val"):
        part = [r for r in results if r["split"] == name]
        if part:
            splits[name] = F.split_entry(_finish_split(out, name, part, classes), "jpeg", 0, quality)
    sums = ColorSums(size)
    for r in results:
        if r["sums"] is not None:
            sums.merge(r["sums"])
    sampled = sum(r["stats_count"] for r in results)
    a = sums.arrays()
    F.write_stats(out, *color_stats(a["sum"], a["rgb"], a["outer"], sampled, int(a["pixels"])))
    names = [f"class{c:04d}" for c in range(classes)]
    meta = F.make_meta(size, names, names, splits, "train", f"replica of {params['photos']} ({n_base} photos)",
                       replica=params, stats_sample=f"every {stats_every}th train image ({sampled:,} images)")
    atomic_write_text(out / F.META, json.dumps(meta, indent=1))
    shutil.rmtree(out / F.PARTIAL, ignore_errors=True)
