"""Single-thread decode rate of the store's JPEGs (256x256, quality 90, 4:2:0) by torchvision's
`decode_jpeg` (what the loader uses) and, when installed, `simplejpeg` (also libjpeg-turbo), with
its fast-DCT / fast-upsampling options, and how far their pixels are from torchvision's.

    PYTHONPATH=src python scripts/bench_jpeg_decoders.py [PHOTOS]   (default ../shared/data/imagenet-sample)

Prints a table; nothing is written. The loader's workers decode with simplejpeg since this
measurement (`--cpu-decoder`, docs/notes-data.md), with torchvision as the fallback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from alexnet.data.decode import encode_store_jpeg


def store_jpegs(photos: Path) -> list[bytes]:
    out = []
    for f in sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png")):
        im = Image.open(f).convert("RGB")
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((256, 256))
        out.append(encode_store_jpeg(np.array(im), 90))
    return out


def rate(fn, items, reps: int = 5) -> float:
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        for b in items:
            fn(b)
        best = max(best, len(items) / (time.perf_counter() - t))
    return best


def main() -> None:
    torch.set_num_threads(1)
    photos = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/imagenet-sample")
    blobs = store_jpegs(photos)
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    ref = [decode_jpeg(t, mode=ImageReadMode.RGB).permute(1, 2, 0).numpy().astype(np.int16) for t in tensors]
    rows = [("torchvision decode_jpeg", rate(lambda t: decode_jpeg(t, mode=ImageReadMode.RGB), tensors), 0.0, 0)]
    try:
        import simplejpeg
    except ImportError:
        simplejpeg = None
    if simplejpeg is not None:
        for name, kw in (("simplejpeg", {}), ("simplejpeg fastdct", {"fastdct": True}),
                         ("simplejpeg fastdct fastupsample", {"fastdct": True, "fastupsample": True})):
            r = rate(lambda b, kw=kw: simplejpeg.decode_jpeg(b, colorspace="RGB", **kw), blobs)
            diff = [np.abs(simplejpeg.decode_jpeg(b, colorspace="RGB", **kw).astype(np.int16) - x)
                    for b, x in zip(blobs, ref)]
            rows.append((name, r, float(np.mean([d.mean() for d in diff])), int(max(d.max() for d in diff))))
    print(f"{len(blobs)} images 256x256 JPEG q90, mean {int(np.mean([len(b) for b in blobs])):,} bytes; one thread")
    print("decoder | images/s | vs torchvision | mean abs pixel diff | max\n---|---|---|---|---")
    for name, r, mean, mx in rows:
        print(f"{name} | {r:,.0f} | {r / rows[0][1]:.2f}x | {mean:.3f} | {mx}")
    if simplejpeg is None:
        print("(simplejpeg not installed: pip install simplejpeg for its rows)")


if __name__ == "__main__":
    main()
