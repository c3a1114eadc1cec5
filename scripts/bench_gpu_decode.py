"""GPU JPEG decoders on a prepared JPEG store: images/s of each decoder the loader can use on the GPU
(nvImageCodec on the hardware JPEG engines, torchvision's nvJPEG on the SMs), alone on one GPU and
on every GPU at once (one process each), and how far their pixels are from the CPU decoder's
(libjpeg-turbo through torchvision, what the loader's workers use).

    PYTHONPATH=src python scripts/bench_gpu_decode.py STORE [--split train] [--batch 256] [--images 25600]

The JPEG bytes are read into memory first (page cache), so this measures decoding only: bytes in
host memory to (B,S,S,3) uint8 on the GPU, one list per batch, synchronised at the end; and how
much of the interpreter a busy Python thread keeps while another thread decodes (the training loop
is such a thread), and how many CPU cores the decoding keeps busy meanwhile (this process's CPU time
over the wall time: the loader's CPU workers need those cores). nvImageCodec is measured with each
of `--nvimgcodec-threads` CPU threads. Prints a table last.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.multiprocessing as mp

from alexnet.data import format as F
from alexnet.data.gpu_decode import NvImageCodec, gpu_decoder, nvimgcodec_available
from alexnet.data.prepared import PreparedData


def jpeg_parts(store: str, split: str, count: int) -> tuple[list[torch.Tensor], int]:
    data = PreparedData.open(store)
    sp = data.split(split)
    if sp.encoding != "jpeg":
        raise SystemExit(f"{store}: split {split} is {sp.encoding}, not JPEG")
    off = np.load(data.path / F.offsets_file(split))
    n = min(count, len(off) - 1)
    blob = np.fromfile(sp.path, dtype=np.uint8, count=int(off[n]))
    t = torch.from_numpy(blob)
    return [t[int(off[i]) : int(off[i + 1])] for i in range(n)], sp.size


def decoder(name: str, dev: torch.device):
    """"torchvision", "nvimgcodec" (its default threads) or "nvimgcodec:N" (N CPU threads)."""
    if ":" in name:
        return NvImageCodec(dev, threads=int(name.split(":")[1]))
    return gpu_decoder(name, dev)


def rate(name: str, parts, batch: int, device: str, reps: int = 2, cores: list | None = None) -> float:
    """Best images/s of `reps` passes; appends to `cores` the CPU cores the best pass kept busy."""
    dev = torch.device(device)
    torch.cuda.set_device(dev)
    dec = decoder(name, dev)
    stream = torch.cuda.Stream(dev)
    keep = []
    with torch.cuda.stream(stream):
        for i in range(0, 3 * batch, batch):  # warm-up: the decoder's buffers
            keep.append(torch.stack(dec(parts[i : i + batch], stream)[0]))
    stream.synchronize()
    best, busy = 0.0, 0.0
    for _ in range(reps):
        keep.clear()
        t, cpu = time.perf_counter(), time.process_time()
        with torch.cuda.stream(stream):
            for i in range(0, len(parts) - batch + 1, batch):
                images, owners = dec(parts[i : i + batch], stream)
                keep.append((torch.stack(images), owners))
                if len(keep) > 4:
                    keep.pop(0)
        stream.synchronize()
        wall = time.perf_counter() - t
        if (len(parts) // batch) * batch / wall > best:
            best, busy = (len(parts) // batch) * batch / wall, (time.process_time() - cpu) / wall
    if cores is not None:
        cores.append(busy)
    return best


def interpreter_left(name: str, parts, batch: int, device: str, seconds: float = 2.0) -> float:
    """How much of the interpreter a busy Python thread gets while this thread decodes, against
    while it sleeps (1.0: the decoder releases the GIL throughout; near 0: it holds it)."""
    import threading

    dev = torch.device(device)
    dec = decoder(name, dev)
    stream = torch.cuda.Stream(dev)

    def spin(flag, out):
        n = 0
        while not flag.is_set():
            n += 1
        out.append(n)

    def spun(work) -> float:
        flag, out = threading.Event(), []
        th = threading.Thread(target=spin, args=(flag, out))
        t = time.perf_counter()
        th.start()
        work(t)
        flag.set()
        th.join()
        return out[0] / (time.perf_counter() - t)

    def decoding(t):
        with torch.cuda.stream(stream):
            while time.perf_counter() - t < seconds:
                for i in range(0, len(parts) - batch + 1, batch):
                    dec(parts[i : i + batch], stream)
                    stream.synchronize()
                    if time.perf_counter() - t > seconds:
                        break

    idle = spun(lambda t: time.sleep(seconds))
    return spun(decoding) / idle


def pixel_diff(name: str, parts, device: str, n: int = 512) -> tuple[float, int]:
    from alexnet.data.decode import decode_store_jpeg

    dev = torch.device(device)
    dec = decoder(name, dev)
    stream = torch.cuda.Stream(dev)
    with torch.cuda.stream(stream):
        got = torch.stack(dec(parts[:n], stream)[0])
    stream.synchronize()
    ref = torch.stack([decode_store_jpeg(p, got.shape[1], "-", i) for i, p in enumerate(parts[:n])])
    d = (got.cpu().int() - ref.int()).abs()
    return float(d.float().mean()), int(d.max())


def _worker(rank: int, name: str, store: str, split: str, count: int, batch: int, results) -> None:
    parts, _ = jpeg_parts(store, split, count)
    results[rank] = rate(name, parts, batch, f"cuda:{rank}")


def all_gpus(name: str, store: str, split: str, count: int, batch: int) -> list[float]:
    n = torch.cuda.device_count()
    with mp.Manager() as m:
        results = m.dict()
        mp.spawn(_worker, args=(name, store, split, count, batch, results), nprocs=n)
        return [results[r] for r in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("--split", default="train")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--images", type=int, default=25_600)
    ap.add_argument("--nvimgcodec-threads", type=int, nargs="+", default=[4],
                    help="nvImageCodec's CPU threads to try (the GPU worker uses 4)")
    ap.add_argument("--no-all-gpus", action="store_true", help="skip the every-GPU-at-once column")
    a = ap.parse_args()
    parts, size = jpeg_parts(a.store, a.split, a.images)
    names = ([f"nvimgcodec:{t}" for t in a.nvimgcodec_threads] if nvimgcodec_available() else []) + ["torchvision"]
    rows = []
    for name in names:
        cores: list = []
        one = rate(name, parts, a.batch, "cuda:0", cores=cores)
        mean_abs, worst = pixel_diff(name, parts, "cuda:0")
        left = interpreter_left(name, parts, a.batch, "cuda:0")
        many = torch.cuda.device_count() > 1 and not a.no_all_gpus
        each = all_gpus(name, a.store, a.split, a.images, a.batch) if many else [one]
        rows.append((name, one, cores[0], each, mean_abs, worst, left))
        print(name, one, cores[0], each, mean_abs, worst, left, flush=True)
    print(f"\n{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}, {len(parts):,} JPEGs of {size}x{size} "
          f"from {a.store} ({sum(map(len, parts)) / len(parts):,.0f} B each), lists of {a.batch}")
    print(f"{'decoder':<15}{'1 GPU img/s':>12}{'CPU cores busy':>15}{'all GPUs at once (each)':>34}"
          f"{'vs CPU: mean |d|':>18}{'max':>5}{'interpreter left':>18}")
    for name, one, busy, each, mean_abs, worst, left in rows:
        at_once = f"{sum(each):,.0f} ({', '.join(f'{e:,.0f}' for e in each)})"
        print(f"{name:<15}{one:>12,.0f}{busy:>15.2f}{at_once:>34}{mean_abs:>18.3f}{worst:>5}{left:>18.2f}")


if __name__ == "__main__":
    main()
