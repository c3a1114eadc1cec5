"""How much does JPEG cost CIFAR-10? Tools for the dose-response check in docs/RESULTS.md.

The CIFAR-10 copy here is stored as JPEG at quality 75 with 4:2:0 chroma subsampling (read from the
files' quantisation tables), not as the original pixel arrays cuda-convnet trained on. Two commands:

    python scripts/cifar_jpeg_dose.py reencode SRC DST --quality Q
        every image of the class-folder tree SRC written again as JPEG quality Q (4:2:0) to DST;
        prints the RMS pixel change (0-255 scale) this adds.
    python scripts/cifar_jpeg_dose.py loss PHOTOS [--quality 75]
        the RMS pixel error that JPEG quality Q (4:2:0) causes on 32x32 natural images made from the
        photos in PHOTOS (resized, antialiased, several crops per photo): an estimate of what the
        CIFAR-10 copy lost against the original arrays.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image


def encode(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, subsampling=2)
    return buf.getvalue()


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    return Image.open(io.BytesIO(encode(img, quality))).convert("RGB")


def rms(a: Image.Image, b: Image.Image) -> float:
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(np.sqrt((d ** 2).mean()))


def reencode(src: Path, dst: Path, quality: int) -> None:
    files = sorted(src.rglob("*.jpg"))
    if not files:
        raise SystemExit(f"no .jpg files under {src}")
    sq = 0.0
    for f in files:
        img = Image.open(f).convert("RGB")
        data = encode(img, quality)
        sq += rms(img, Image.open(io.BytesIO(data)).convert("RGB")) ** 2
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    print(f"{len(files)} images re-encoded at quality {quality}: RMS change {np.sqrt(sq / len(files)):.2f} grey levels")


def loss(photos: Path, quality: int) -> None:
    errs = []
    rng = np.random.default_rng(0)
    for f in sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png")):
        img = Image.open(f).convert("RGB")
        w, h = img.size
        for _ in range(8):
            side = int(min(w, h) * rng.uniform(0.5, 1.0))
            x, y = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
            small = img.crop((x, y, x + side, y + side)).resize((32, 32), Image.Resampling.LANCZOS)
            errs.append(rms(small, jpeg(small, quality)))
    e = np.array(errs)
    print(f"{len(e)} natural 32x32 images: JPEG quality {quality} 4:2:0 RMS error {np.sqrt((e ** 2).mean()):.2f} "
          f"grey levels (median {np.median(e):.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reencode")
    r.add_argument("src", type=Path)
    r.add_argument("dst", type=Path)
    r.add_argument("--quality", type=int, required=True)
    lo = sub.add_parser("loss")
    lo.add_argument("photos", type=Path)
    lo.add_argument("--quality", type=int, default=75)
    args = ap.parse_args()
    if args.cmd == "reencode":
        reencode(args.src, args.dst, args.quality)
    else:
        loss(args.photos, args.quality)


if __name__ == "__main__":
    main()
