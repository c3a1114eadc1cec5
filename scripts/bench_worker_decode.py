"""One loader worker's JPEG work, per decoder: `JpegReader.fill` (pread each image, decode it into the
ring slot) on batches of 64 random images of a JPEG store, on one core, best of 8 batches, a few
rounds alternating the decoders; and whether the decoders' pixels agree.

    PYTHONPATH=src python scripts/bench_worker_decode.py [STORE]

STORE: a prepared JPEG store (default: a 2,000-image replica store made in /tmp/worker-decode-store
from ../shared/data/imagenet-sample). Prints a table last.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from alexnet.data import format as F
from alexnet.data.decode import CPU_DECODERS
from alexnet.data.feeder_worker import JpegReader
from alexnet.data.prepared import PreparedData
from alexnet.data.ring import Ring, SlotLayout


def main() -> None:
    torch.set_num_threads(1)
    store = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/worker-decode-store")
    if not (store / "meta.json").exists():
        from alexnet.data.replica import make_replica_store

        make_replica_store(Path(__file__).parents[1] / "../shared/data/imagenet-sample", store, count=2000,
                           progress=False)
    data = PreparedData.open(store)
    sp = data.split("train")
    decoders = [d for d in CPU_DECODERS if d != "auto"]
    readers = {d: JpegReader({"kind": "jpeg", "path": str(sp.path), "size": data.size, "cpu_decoder": d,
                              "offsets": str(data.path / F.offsets_file(sp.name))}) for d in decoders}
    ring = Ring(2, SlotLayout(256, data.size, pixels=True, blob=0))
    rng = np.random.default_rng(0)
    rates = {d: [] for d in decoders}
    for _ in range(3):
        for d, r in readers.items():
            best = 0.0
            for _ in range(8):
                rows = rng.choice(len(sp), 64)
                t = time.perf_counter()
                r.fill(ring, 0, rows)
                best = max(best, 64 / (time.perf_counter() - t))
            rates[d].append(best)
    rows = np.arange(min(256, len(sp)))
    readers[decoders[0]].fill(ring, 0, rows)
    readers[decoders[1]].fill(ring, 1, rows)
    diff = (ring.images(0, len(rows)).int() - ring.images(1, len(rows)).int()).abs().max().item()
    print(f"\n{store}: {len(sp):,} JPEGs of {data.size}x{data.size}; one core; batches of 64; best of 8, 3 rounds")
    print(f"{'decoder':<12}{'images/s per round':>30}{'vs torchvision':>16}")
    base = np.median(rates["torchvision"])
    for d in decoders:
        print(f"{d:<12}{', '.join(f'{x:,.0f}' for x in rates[d]):>30}{np.median(rates[d]) / base:>15.2f}x")
    print(f"max pixel difference between them over {len(rows)} images: {diff}")


if __name__ == "__main__":
    main()
