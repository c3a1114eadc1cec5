"""Measurements of the data path, to run where the numbers matter.

``measure(path, ...)``: images/s of the loader alone (workers, decoding, the copy to the device;
no training) for each setting, printed as a table. On the GPU machine::

    python -c "from alexnet.data.loader_bench import measure; measure('/data/d60k', batch=256)"

``jpeg_table(photos, ...)``: what JPEG encoding costs against raw pixels: bytes per image, pixel
error (mean absolute error and PSNR against the raw pixels) and encode/decode rates on one core.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["measure", "jpeg_table", "sample_images"]


def _loader_rate(split, batch: int, workers: int, decode: str, device, seconds: float, step=None,
                 gpu_workers: int = 1, cpu_decoder: str = "auto", gpu_ahead: int | None = None) -> dict:
    """Images/s over whole epochs (after one warm-up batch) for one setting."""
    from alexnet.data.feeder import Feeder
    from alexnet.data.loader import BatchLoader

    t0 = time.perf_counter()
    cuda = torch.device(device).type == "cuda"
    feeder = None
    if workers or decode != "cpu":
        feeder = Feeder(split, batch, shuffle=True, seed=0, drop_last=True, device=device, workers=workers,
                        decode=decode, gpu_workers=gpu_workers, cpu_decoder=cpu_decoder,
                        **({} if gpu_ahead is None else {"gpu_ahead": gpu_ahead}))
    try:
        def epoch(e):
            if feeder is not None:
                return feeder.epoch(e)
            return BatchLoader(split, batch, shuffle=True, seed=0, epoch=e, drop_last=True, device=device, workers=0)

        it = iter(epoch(0))
        next(it)  # workers started and warm
        if cuda:
            torch.cuda.synchronize()
        startup = time.perf_counter() - t0
        procs = [os.getpid()] + (feeder.pids() if feeder is not None else [])  # this process, then its workers
        cpu0, filled0 = _cpu_seconds(procs), list(feeder.filled) if feeder is not None else None
        images, e, t1 = 0, 0, time.perf_counter()
        while time.perf_counter() - t1 < seconds:
            for x, y in it:
                if step is not None:
                    step(x, y)
                images += len(y)
                if time.perf_counter() - t1 >= seconds:
                    break
            e += 1
            it = iter(epoch(e))
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t1
        cores = [(b - a) / elapsed for a, b in zip(cpu0, _cpu_seconds(procs))]
        share = feeder.gpu_share(filled0) if feeder is not None else None
    finally:
        if feeder is not None:
            feeder.close()
    w = workers if feeder is not None else 0
    return {"images_per_s": images / elapsed, "startup_s": startup, "images": images, "cores_main": cores[0],
            "cores_cpu_workers": sum(cores[1 : 1 + w]), "cores_gpu_workers": sum(cores[1 + w :]),
            "gpu_share": share or 0.0}


def _cpu_seconds(pids: list[int]) -> list[float]:
    """CPU time (user + system, all threads) of each process so far, from /proc (0.0 where absent)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out = []
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out.append((int(fields[11]) + int(fields[12])) / tick)  # utime, stime
        except (OSError, IndexError, ValueError):
            out.append(0.0)
    return out


def measure(path, batch: int = 256, workers_list=(0, 2, 4, 8, 14), decode_modes=("cpu", "cuda", "mixed"),
            seconds: float = 10.0, device: str | None = None, split: str = "train", step=None,
            gpu_workers_list=(1, 2), cpu_decoders=("auto",), gpu_ahead_list=(None,)) -> list[dict]:
    """Print (and return) loader-alone images/s of the store at ``path`` for each number of (CPU)
    workers and each decoding (``"cuda"`` and ``"mixed"``, with each number of GPU workers in
    ``gpu_workers_list``, only for a JPEG store on a GPU; 0 workers = in-process threads, or with
    ``"cuda"`` GPU workers alone), with each of ``cpu_decoders`` for the CPU workers.
    ``gpu_ahead_list``: the Feeder's ``gpu_ahead`` values to try with GPU workers (None: its default).
    ``step(images, labels)``, optional, runs on every batch (e.g. a training step, to measure the
    loader beside it)."""
    from alexnet.data.prepared import PreparedData

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    data = PreparedData.open(path)
    sp = data.split(split)
    rows = []
    print(f"loader alone: {path} split {split}: {len(sp):,} images {data.size}x{data.size}, {sp.encoding}"
          f"{'' if sp.quality is None else f' q{sp.quality}'}, batch {batch}, device {device}, {seconds:.0f} s each")
    print(f"{'workers':>7} {'decode':>22} {'images/s':>10} {'MB/s in':>8} {'start s':>7} {'GPU share':>9} "
          f"{'cores: main':>11} {'CPU wk':>6} {'GPU wk':>6}")
    per_image = data.size * data.size * 3 if sp.encoding == "raw" else float(np.diff(sp.offsets()).mean())
    for decode in decode_modes:
        if decode != "cpu" and (sp.encoding != "jpeg" or torch.device(device).type != "cuda"):
            continue
        gpus = gpu_workers_list if decode != "cpu" else (0,)
        cpus = [w for w in (workers_list if decode != "cuda" else (0,)) if not (decode == "mixed" and w == 0)]
        decoders = cpu_decoders if sp.encoding == "jpeg" and decode != "cuda" else ("auto",)
        aheads = gpu_ahead_list if decode != "cpu" else (None,)
        for g, w, cd, ahead in itertools.product(gpus, cpus, decoders, aheads):
            r = _loader_rate(sp, batch, w, decode, device, seconds, step, g, cd, ahead)
            r.update(workers=w, decode=decode, gpu_workers=g, cpu_decoder=cd, encoding=sp.encoding, batch=batch,
                     gpu_ahead=ahead)
            rows.append(r)
            name = (f"{decode} +{g}gpu" if decode != "cpu" else decode) + (f" {cd}" if cd != "auto" else "")
            name += "" if ahead is None else f" ahead {ahead}"
            cores = "".join(f" {r[k]:>6.2f}" for k in ("cores_main", "cores_cpu_workers", "cores_gpu_workers"))
            print(f"{w:>7} {name:>22} {r['images_per_s']:>10,.0f} "
                  f"{r['images_per_s'] * per_image / 1e6:>8,.0f} {r['startup_s']:>7.1f} {r['gpu_share']:>9.0%}"
                  f"     {cores}", flush=True)
    return rows


def sample_images(photos, size: int) -> np.ndarray:
    """The photos in a folder (recursively), each rescaled and centre-cropped: uint8 (n,S,S,3)."""
    from alexnet.data.decode import load_image
    from alexnet.data.layouts import IMAGE_EXTENSIONS

    files = sorted(p for p in Path(photos).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    return np.stack([load_image(f, size) for f in files])


def _rate(fn, items, repeat: int) -> float:
    t = time.perf_counter()
    for _ in range(repeat):
        for it in items:
            fn(it)
    return repeat * len(items) / (time.perf_counter() - t)


def jpeg_table(photos, size: int = 256, qualities=(85, 90, 95), repeat: int = 3) -> list[dict]:
    """Print (and return), per JPEG quality: bytes per image, mean absolute error and PSNR against
    the raw pixels (over all images and channels), and encode/decode images/s on one thread."""
    from alexnet.data.decode import decode_store_jpeg, encode_store_jpeg

    torch.set_num_threads(1)
    images = sample_images(photos, size) if not isinstance(photos, np.ndarray) else photos
    print(f"{len(images)} images at {size}x{size}; raw {size * size * 3:,} bytes each; one thread")
    print(f"{'quality':>7} {'bytes/img':>10} {'x smaller':>9} {'MAE':>6} {'PSNR dB':>8} {'enc/s':>7} {'dec/s':>7}")
    rows = []
    for q in qualities:
        blobs = [encode_store_jpeg(im, q) for im in images]
        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        back = np.stack([decode_store_jpeg(t, size, "-", i).numpy() for i, t in enumerate(tensors)])
        diff = back.astype(np.float64) - images.astype(np.float64)
        mse = float((diff ** 2).mean())
        enc = _rate(lambda im: encode_store_jpeg(im, q), images, repeat)
        dec = _rate(lambda t: decode_store_jpeg(t, size, "-", 0), tensors, repeat)
        r = {"quality": q, "bytes": float(np.mean([len(b) for b in blobs])), "mae": float(np.abs(diff).mean()),
             "psnr": 10 * np.log10(255 ** 2 / mse), "encode_per_s": enc, "decode_per_s": dec}
        rows.append(r)
        print(f"{q:>7} {r['bytes']:>10,.0f} {size * size * 3 / r['bytes']:>9.1f} {r['mae']:>6.2f} {r['psnr']:>8.2f} "
              f"{enc:>7,.0f} {dec:>7,.0f}", flush=True)
    return rows
