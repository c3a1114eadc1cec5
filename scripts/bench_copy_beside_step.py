"""Does a batch's copy to the GPU slow the training step beside it? (issue 11, fifteenth session)

`alexnet profile` found the step's kernels ~0.12 ms (2.3%) slower end to end than on GPU-resident
batches at 256, with CPU decoding as with GPU workers, mostly in memory-bound kernels (elementwise,
matmul, layout), hardly in the convolutions. One thing every end-to-end step has and the resident step
lacks: the next batch's 50 MB copy to the GPU on a side stream. Here the graphed step of the paper's
net at 256 on resident batches (`alexnet bench`'s step) is timed alone and with a copy issued on a
side stream before each step, in alternating rounds on one GPU:

  none   the resident step alone
  h2d50  host (page-locked) to GPU, 50.3 MB: a 256x256 uint8 batch of 256, what `alexnet train` copies
  h2d38  the same for 224x224 crops, 38.5 MB
  d2h50  GPU to host, 50.3 MB: a GPU worker's copy of its decoded batch back to the ring
  d2d50  GPU to GPU, 50.3 MB: the same bytes through the GPU's memory without PCIe
  photos the resident step alone, on the sample photos (--photos DIR: JPEGs, resized to 256x256 and
         repeated to the batch) instead of random noise: whether the step's time depends on the pixels

While each variant runs, nvidia-smi samples the SM clock and the power draw every 100 ms.

    python scripts/bench_copy_beside_step.py [--steps 300] [--rounds 3] [--batch 256] [--photos DIR]
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import tempfile
import time

import torch

from alexnet.tools.bench_steps import build_form, step_fn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--photos", help="a folder of JPEGs for the `photos` row")
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True  # as `alexnet bench` and `alexnet train` run the step
    one = step_fn(build_form("alexnet2012", dev), "graphed", args.batch, dev, log=lambda *a: None)
    for _ in range(30):  # compile, warm up, capture
        one()
    torch.cuda.synchronize()
    b = args.batch
    host = {n: torch.empty(n, dtype=torch.uint8, pin_memory=True) for n in (b * 256 * 256 * 3, b * 224 * 224 * 3)}
    gpu = {n: torch.empty(n, dtype=torch.uint8, device=dev) for n in host}
    src = torch.randint(0, 256, (b * 256 * 256 * 3,), dtype=torch.uint8, device=dev)
    big, small = sorted(host, reverse=True)
    side = torch.cuda.Stream()
    copies = {
        "none": None,
        "h2d50": lambda: gpu[big].copy_(host[big], non_blocking=True),
        "h2d38": lambda: gpu[small].copy_(host[small], non_blocking=True),
        "d2h50": lambda: host[big].copy_(src, non_blocking=True),
        "d2d50": lambda: gpu[big].copy_(src, non_blocking=True),
    }
    if args.photos:
        photos = photo_batch(args.photos, b, dev)
        photo_labels = torch.randint(0, 1000, (b,), device=dev)
        copies["photos"] = "photos"
    smi_log = tempfile.NamedTemporaryFile(suffix=".csv", delete=False).name
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,clocks.sm,power.draw", "--format=csv,noheader,nounits",
                            "-lms", "100", "-f", smi_log])
    windows: dict[str, list[tuple[float, float]]] = {k: [] for k in copies}
    times: dict[str, list[float]] = {k: [] for k in copies}
    for _ in range(args.rounds):
        for name, copy in copies.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            t0 = time.time()
            start.record()
            for _ in range(args.steps):
                if copy == "photos":  # what one() does, with the photos as the batch (a graph of their own)
                    one.step(photos, photo_labels)
                    continue
                if copy is not None:
                    side.wait_stream(torch.cuda.current_stream())  # the copy starts with the step
                    with torch.cuda.stream(side):
                        copy()
                one()
            end.record()
            torch.cuda.synchronize()
            windows[name].append((t0, time.time()))
            times[name].append(start.elapsed_time(end) / args.steps)
    time.sleep(0.3)
    smi.terminate()
    smi.wait()
    samples = read_smi(smi_log)
    base = min(times["none"])
    print(f"{torch.cuda.get_device_name()}, batch {b}, {args.steps} steps x {args.rounds} rounds, graphed step")
    print(f"{'copy':6} {'ms/step (each round)':>28} {'best':>7} {'img/s':>7} {'vs none':>8} {'SM MHz':>7} {'W':>5}")
    for name, t in times.items():
        rounds = " ".join(f"{x:.3f}" for x in t)
        inside = [(c, w) for ts, c, w in samples if any(a + 0.2 <= ts <= z for a, z in windows[name])]
        mhz, watts = (sum(v) / len(v) for v in zip(*inside)) if inside else (float("nan"), float("nan"))
        print(f"{name:6} {rounds:>28} {min(t):7.3f} {b / min(t) * 1e3:7.0f} {min(t) / base - 1:+8.2%} {mhz:7.0f} {watts:5.0f}")


def photo_batch(folder: str, batch: int, device) -> torch.Tensor:
    """The JPEGs in `folder` decoded, resized to 256x256 (aspect not kept: only the pixels' statistics
    matter here) and repeated to `batch`, as (B, 3, 256, 256) uint8 channels_last on `device`."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from torchvision.transforms.v2.functional import resize

    files = sorted(pathlib.Path(folder).glob("*.JPEG")) or sorted(pathlib.Path(folder).glob("*.jp*g"))
    imgs = [resize(decode_jpeg(read_file(str(f)), mode=ImageReadMode.RGB), [256, 256], antialias=True) for f in files]
    x = torch.stack([imgs[i % len(imgs)] for i in range(batch)]).to(device)
    return x.contiguous(memory_format=torch.channels_last)


def read_smi(path: str) -> list[tuple[float, float, float]]:
    """(unix time, SM MHz, watts) from nvidia-smi's CSV samples."""
    from datetime import datetime

    rows = []
    for line in pathlib.Path(path).read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            ts = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            rows.append((ts, float(parts[1]), float(parts[2])))
        except (ValueError, IndexError):
            continue
    return rows


if __name__ == "__main__":
    main()
