"""What GPU JPEG decoding takes from training on the same GPU: images/s of each nvImageCodec backend
alone, and how much it slows a GPU-saturating neighbour (bf16 matmuls on another stream of the same
process, standing in for the training step) while it decodes as fast as it can.

    PYTHONPATH=src python scripts/bench_decode_sm_cost.py STORE [--images 25600] [--seconds 4] [--backends HW_GPU_ONLY]

Backends: the hardware JPEG engines only, nvImageCodec's CUDA decoder only (on the SMs), and both
(engines first: what the loader's GPU workers use); `--backends A[+B]` measures some of them (each
set in its own process isolates failures: nvImageCodec 0.9.0's CUDA backend could not be created on
the H200s, "Code: 7", alone too). Prints a table last.
"""

from __future__ import annotations

import argparse
import threading
import time

import torch

from bench_gpu_decode import jpeg_parts

from alexnet.data.gpu_decode import NvImageCodec


def make(kinds: list[str]):
    """The loader's nvImageCodec decoder with only these backends; a batch -> (stacked pixels, owners)."""
    dec = NvImageCodec(torch.device("cuda", 0), threads=4, backends=kinds)

    def run(parts, stream):
        images, owners = dec(parts, stream)
        return torch.stack(images), owners

    return run


def decode_loop(run, parts, batch, stream, stop, counter):
    keep = []
    with torch.cuda.stream(stream):
        while not stop.is_set():
            for i in range(0, len(parts) - batch + 1, batch):
                keep.append(run(parts[i : i + batch], stream))
                counter[0] += batch
                if len(keep) > 4:
                    keep.pop(0)
                if stop.is_set():
                    break
    stream.synchronize()


def matmul_rate(seconds: float) -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    s = torch.cuda.Stream()
    n, t = 0, time.perf_counter()
    with torch.cuda.stream(s):
        while time.perf_counter() - t < seconds:
            for _ in range(20):
                a @ a
            s.synchronize()
            n += 20
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("--images", type=int, default=25_600)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--priority", type=int, default=0, help="the decoder stream's priority (-1: high)")
    ap.add_argument("--backends", nargs="+", default=["HW_GPU_ONLY", "GPU_ONLY", "HW_GPU_ONLY+GPU_ONLY"],
                    help="backend sets to measure, each KIND[+KIND] (nvImageCodec BackendKind names)")
    a = ap.parse_args()
    parts, size = jpeg_parts(a.store, "train", a.images)
    alone = matmul_rate(a.seconds)
    rows = []
    for kinds in (b.split("+") for b in a.backends):
        try:
            run = make(kinds)
        except RuntimeError as e:  # the CUDA backend on the H200s: "Could not create decoder. Code: 7"
            rows.append(("+".join(kinds), None, None, None))
            print(rows[-1], e, flush=True)
            continue
        stream = torch.cuda.Stream(priority=a.priority)
        with torch.cuda.stream(stream):
            for i in range(3):
                run(parts[i * a.batch : (i + 1) * a.batch], stream)
        stream.synchronize()
        results = []
        for with_matmul in (False, True):
            stop, counter = threading.Event(), [0]
            th = threading.Thread(target=decode_loop, args=(run, parts, a.batch, stream, stop, counter))
            t = time.perf_counter()
            th.start()
            mm = matmul_rate(a.seconds) if with_matmul else time.sleep(a.seconds)
            stop.set()
            th.join()
            results.append((counter[0] / (time.perf_counter() - t), mm))
        (solo, _), (beside, mm) = results
        rows.append(("+".join(kinds), solo, beside, mm / alone))
        print(rows[-1], flush=True)
    print(f"\n{torch.cuda.get_device_name(0)}: {len(parts):,} JPEGs {size}x{size} from {a.store}, lists of {a.batch}; "
          f"neighbour: 8192^3 bf16 matmuls, {alone:,.0f}/s alone; decoder stream priority {a.priority}")
    print(f"{'backends':<22}{'img/s alone':>12}{'img/s beside':>13}{'neighbour keeps':>16}")
    for name, solo, beside, keeps in rows:
        if solo is None:
            print(f"{name:<22}{'cannot be created':>41}")
            continue
        print(f"{name:<22}{solo:>12,.0f}{beside:>13,.0f}{keeps:>16.0%}")


if __name__ == "__main__":
    main()
