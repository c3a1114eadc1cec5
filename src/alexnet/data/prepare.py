"""Prepare a dataset once: decode, rescale, centre-crop, store, and compute the colour statistics.

``prepare(src, out)`` reads every image of ``src`` (see :mod:`alexnet.data.layouts`) once, in
parallel over all cores, rescales its short side to ``size`` (antialiased bilinear) and keeps the
central ``size x size`` square (paper, section 2), and writes the *prepared format* (version 1):

``out/meta.json``
    ``{"format": "alexnet-prepared", "version": 1, "size": S, "classes": [...],
    "class_names": [...], "pixel_scale": "0-255", "splits": {"train": {"count": N, "encoding":
    "raw", "skipped": k}, ...}, "stats_split": "train", "skipped": n}``. Written last: its
    presence means the folder is complete.
``out/stats.safetensors``
    ``mean`` float32 (3,S,S), the mean image (0-255); ``pca_eigvals`` float32 (3,), descending,
    the eigenvalues of the 3x3 covariance of RGB pixel values in the 0-255 scale; ``pca_eigvecs``
    float32 (3,3), the eigenvectors as columns (sign: largest component positive). Computed over
    the train split (the first split when there is no train), exactly: per-pixel sums and sums
    of outer products are accumulated in float64 (integer-valued, so exact and independent of
    order) and the mean image in int64.
``out/<split>.images`` (encoding ``raw``)
    uint8 array (N,S,S,3), HWC, no header: ``np.memmap(path, np.uint8, "r", shape=(N,S,S,3))``.
``out/<split>.jpeg`` + ``out/<split>.offsets.npy`` (encoding ``jpeg``)
    the images re-encoded as JPEG (quality 90) back to back; image i is bytes
    ``offsets[i]:offsets[i+1]`` (int64, N+1 entries).
``out/<split>.labels.npy``
    int64 (N,), indices into ``classes``.
``out/<split>.files.txt``
    the source file of each stored image (relative to ``src``), one per line, in stored order.
``out/skipped.txt``
    with ``skip_bad=True``: ``<file>\\t<problem>`` for each image left out.

Choice of encoding (measured on this project's 2-core CPU machine, one thread, 2,048 ImageNet
photos prepared at 256x256, batches of 256 random indices read from the page cache):
raw uint8 memmap ~6,100 img/s (fancy index; ~8,000 img/s with pread per image, i.e. 1.2-1.6 GB/s),
JPEG quality 90 (20.3 KB an image instead of 196.6 KB, 9.7x smaller) ~2,650 img/s to decode
(torchvision.io.decode_jpeg, libjpeg-turbo). Raw reads 2.3-3x faster per core and leaves the CPU
free, so it is the default; ``encoding="jpeg"`` is the choice when 196.6 KB x N does not fit on
disk (ImageNet train at 256: 252 GB raw, about 26 GB JPEG). See docs/notes-data.md.

Resuming: the work is cut into chunks of ``chunk_size`` consecutive images of a split. Raw
images go straight to their slots in a preallocated ``<split>.images.partial``; each finished
chunk is recorded in ``out/.partial/<split>/`` (its statistics and any bad files, written
atomically); records are merged from time to time into one ``base.npz``. A run that is
interrupted (Ctrl-C, a crash, a bad file) and started again with the same source and options
does only the chunks not yet recorded, and gives the same output as a clean run.

Bad input (empty, truncated, corrupt or non-image files) stops the run with a
:class:`~alexnet.errors.DataError` naming the file and the problem; with ``skip_bad=True`` those
images are left out and listed in ``out/skipped.txt``. A PNG named ``.JPEG``, grayscale and CMYK
JPEGs decode to RGB (CMYK through PIL, whose conversion inverts Adobe CMYK correctly).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from alexnet.errors import DataError
from alexnet.data.layouts import ImageList, find_splits

FORMAT = "alexnet-prepared"
VERSION = 1
ENCODINGS = ("raw", "jpeg")
JPEG_QUALITY = 90
PARTIAL = ".partial"
MERGE_EVERY = 64  # chunk records merged into base.npz every this many chunks

__all__ = ["prepare", "decode_image_file", "resize_center_crop", "load_image", "BadImage", "FORMAT", "VERSION"]


# ---------------------------------------------------------------------------- decoding


class BadImage(Exception):
    """An image file that cannot be decoded; ``str(e)`` is the problem, for the user."""


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _sniff(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _jpeg_components(data: bytes) -> int | None:
    """Number of colour components in the JPEG frame header (4 = CMYK/YCCK), None if not found."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            i += 1
            continue
        m = data[i + 1]
        if m == 0xFF:
            i += 1
            continue
        if m in _SOF:
            return data[i + 9] if i + 9 < n else None
        if m in (0x01, 0xD8) or 0xD0 <= m <= 0xD7:
            i += 2
            continue
        if m in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _pil_decode(data: bytes) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage("not an image (format not recognised)") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"image too large ({e})") from None
    except Exception as e:
        raise BadImage(f"truncated or corrupt image data ({str(e) or type(e).__name__})") from None
    try:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale: scale, not clip
            a = np.asarray(im, dtype=np.int64)
            a = np.clip(a >> 8 if a.max() > 255 else a, 0, 255).astype(np.uint8)
            arr = np.repeat(a[:, :, None], 3, axis=2)
        else:
            arr = np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as e:
        raise BadImage(f"image too large ({e})") from None
    except Exception as e:
        text = str(e) or type(e).__name__
        raise BadImage(f"truncated or corrupt image data ({text})") from None
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)


def decode_bytes(data: bytes) -> torch.Tensor:
    """Decode image bytes to a uint8 RGB tensor (3,H,W); raises :class:`BadImage`."""
    if len(data) == 0:
        raise BadImage("empty file (0 bytes)")
    kind = _sniff(data)
    use_pil = kind is None  # BMP, TIFF, ... and anything unknown: PIL says what it is
    if kind == "jpeg":
        # CMYK/YCCK: PIL (torchvision's handling differs between versions). A JPEG that does not
        # end with the end-of-image marker is checked by PIL, which rejects truncated data.
        if _jpeg_components(data) == 4 or not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
            use_pil = True
    if not use_pil:
        from torchvision.io import ImageReadMode, decode_image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except Exception:
            img = None  # PIL decides: it decodes what it can and names the problem otherwise
        if img is not None:
            if img.ndim == 4:  # animated GIF: first frame
                img = img[0]
            if img.dtype != torch.uint8:  # 16-bit PNG
                img = (img.to(torch.int32) >> 8).to(torch.uint8)
            return img
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _pil_decode(data)


def decode_image_file(path) -> torch.Tensor:
    """Decode an image file to uint8 RGB (3,H,W); raises :class:`BadImage` with the problem."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadImage(f"cannot be read ({e.strerror or e})") from None
    return decode_bytes(data)


def resize_center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Rescale the short side to ``size`` (antialiased bilinear) and keep the central square.

    Same geometry as ``torchvision.transforms.v2.functional.resize(img, size)`` followed by
    ``center_crop(img, size)``. Returns uint8 (3,size,size).
    """
    h, w = img.shape[-2:]
    if min(h, w) != size:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2.functional import resize

        if h <= w:
            nh, nw = size, int(size * w / h)
        else:
            nh, nw = int(size * h / w), size
        img = resize(img, [nh, nw], interpolation=InterpolationMode.BILINEAR, antialias=True)
        h, w = nh, nw
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img[:, top : top + size, left : left + size]


def load_image(path, size: int) -> np.ndarray:
    """Decode, rescale and centre-crop one image: uint8 (size,size,3) HWC."""
    img = resize_center_crop(decode_image_file(path), size)
    return np.ascontiguousarray(img.permute(1, 2, 0).numpy())


# ---------------------------------------------------------------------------- small file helpers


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode())


def _atomic_savez(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _atomic_write_bytes(path, buf.getvalue())


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    _atomic_write_bytes(path, buf.getvalue())


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------- the worker


def _init_worker() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the main process stops the pool
    torch.set_num_threads(1)


def _process_chunk(task: dict) -> dict:
    """Decode, crop and store images ``task['start']...`` of one split; return their statistics."""
    size, start, paths = task["size"], task["start"], task["paths"]
    n = len(paths)
    out = np.zeros((n, size, size, 3), dtype=np.uint8)
    ok = np.zeros(n, dtype=bool)
    bad: list[tuple[int, str]] = []
    stats = task["stats"]
    if stats:
        msum = np.zeros((size, size, 3), dtype=np.uint32)  # exact: chunk_size * 255 < 2**32
        rgb = np.zeros(3, dtype=np.float64)
        outer = np.zeros((3, 3), dtype=np.float64)
    for j, p in enumerate(paths):
        try:
            out[j] = load_image(p, size)
            ok[j] = True
            if stats:
                # (3, pixels) in float64: integer-valued, so these sums are exact (< 2**53), in any
                # order. Per image, so that the float copy stays in cache.
                pix = np.ascontiguousarray(out[j].reshape(-1, 3).T, dtype=np.float64)
                rgb += pix.sum(axis=1)
                outer += pix @ pix.T
                np.add(msum, out[j], out=msum)
        except BadImage as e:
            bad.append((start + j, " ".join(str(e).split())))  # one line
            if not task["skip_bad"]:
                return {"split": task["split"], "chunk": task["chunk"], "bad": bad, "failed": True}
    result = {"split": task["split"], "chunk": task["chunk"], "bad": bad, "failed": False}
    if task["encoding"] == "raw":
        isz = size * size * 3
        fd = os.open(task["images"], os.O_WRONLY)
        try:
            view = memoryview(out.reshape(-1))
            pos, total = 0, n * isz
            while pos < total:
                pos += os.pwrite(fd, view[pos:], start * isz + pos)
            os.fdatasync(fd)
        except OSError as e:
            result["write_error"] = (task["images"], f"cannot be written ({e.strerror or e})")
            return result
        finally:
            os.close(fd)
    else:
        from torchvision.io import encode_jpeg

        blobs, sizes = [], np.zeros(n, dtype=np.int64)
        for j in range(n):
            if ok[j]:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    b = encode_jpeg(torch.from_numpy(out[j]).permute(2, 0, 1).contiguous(), quality=task["quality"])
                blobs.append(b.numpy().tobytes())
                sizes[j] = len(blobs[-1])
        try:
            _atomic_write_bytes(Path(task["blob"]), b"".join(blobs))
        except OSError as e:
            result["write_error"] = (task["blob"], f"cannot be written ({e.strerror or e})")
            return result
        result["sizes"] = sizes[ok]
    if stats:
        result["sum"] = msum
        result["rgb"] = rgb
        result["outer"] = outer
        result["pixels"] = int(ok.sum()) * size * size
    return result


# ---------------------------------------------------------------------------- per-split state


class _SplitState:
    """Recorded progress of one split in ``out/.partial/<split>/``."""

    def __init__(self, out: Path, name: str, lst: ImageList, size: int, chunk_size: int, stats: bool, digest: str):
        self.out, self.name, self.list, self.size = out, name, lst, size
        self.n = len(lst)
        self.chunk_size = chunk_size
        self.nchunks = (self.n + chunk_size - 1) // chunk_size
        self.stats = stats
        self.dir = out / PARTIAL / name
        self.digest = digest
        self.done = np.zeros(self.nchunks, dtype=bool)
        self.sum = np.zeros((size, size, 3), dtype=np.int64) if stats else None
        self.rgb = np.zeros(3, dtype=np.float64)
        self.outer = np.zeros((3, 3), dtype=np.float64)
        self.pixels = 0
        self.bad_idx: list[int] = []
        self.bad_problem: list[str] = []
        self.unmerged: list[Path] = []

    # -- loading
    def load(self) -> None:
        info = _read_json(self.dir / "job.json")
        if info is None or info.get("digest") != self.digest or info.get("count") != self.n:
            if self.dir.exists():
                shutil.rmtree(self.dir)
            _remove_split_files(self.out, self.name)
            self.dir.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(self.dir / "job.json", json.dumps({"digest": self.digest, "count": self.n}))
            return
        base = self.dir / "base.npz"
        if base.exists():
            try:
                with np.load(base) as z:
                    self._add(z, merged_done=z["done"])
            except Exception:  # a damaged base: start the split again
                shutil.rmtree(self.dir)
                self.__init__(self.out, self.name, self.list, self.size, self.chunk_size, self.stats, self.digest)
                return self.load()
        for rec in sorted(self.dir.glob("chunk-*.npz")):
            try:
                with np.load(rec) as z:
                    k = int(z["chunk"])
                    if self.done[k]:  # already in base: a leftover of an interrupted merge
                        rec.unlink()
                        continue
                    self._add(z)
                    self.done[k] = True
                    self.unmerged.append(rec)
            except Exception:
                rec.unlink(missing_ok=True)

    def _add(self, z, merged_done=None) -> None:
        if merged_done is not None:
            self.done |= merged_done.astype(bool)
        if self.stats:
            self.sum += z["sum"]
            self.rgb += z["rgb"]
            self.outer += z["outer"]
            self.pixels += int(z["pixels"])
        self.bad_idx += [int(i) for i in z["bad_idx"]]
        self.bad_problem += [str(p) for p in z["bad_problem"]]

    # -- recording
    def record(self, res: dict) -> None:
        k = res["chunk"]
        arrays = {
            "chunk": np.array(k),
            "bad_idx": np.array([b[0] for b in res["bad"]], dtype=np.int64),
            "bad_problem": np.array([b[1] for b in res["bad"]], dtype=str),
        }
        if self.stats:
            arrays.update(sum=res["sum"], rgb=res["rgb"], outer=res["outer"], pixels=np.array(res["pixels"]))
        path = self.dir / f"chunk-{k:07d}.npz"
        _atomic_savez(path, **arrays)
        self._add(arrays)
        self.done[k] = True
        self.unmerged.append(path)
        if len(self.unmerged) >= MERGE_EVERY:
            self.merge()

    def merge(self) -> None:
        """Fold the chunk records into base.npz (atomically), then delete them."""
        if not self.unmerged:
            return
        arrays = {
            "done": self.done,
            "bad_idx": np.array(self.bad_idx, dtype=np.int64),
            "bad_problem": np.array(self.bad_problem, dtype=str),
        }
        if self.stats:
            arrays.update(sum=self.sum, rgb=self.rgb, outer=self.outer, pixels=np.array(self.pixels))
        _atomic_savez(self.dir / "base.npz", **arrays)
        for p in self.unmerged:
            p.unlink(missing_ok=True)
        self.unmerged = []


_SPLIT_FILES = (".images", ".images.partial", ".jpeg", ".jpeg.partial", ".offsets.npy", ".labels.npy", ".files.txt")


def _remove_split_files(out: Path, name: str) -> None:
    for suffix in _SPLIT_FILES:
        (out / (name + suffix)).unlink(missing_ok=True)


def _digest(lst: ImageList, src: Path) -> str:
    h = hashlib.sha256()
    for p, y in zip(lst.paths, lst.labels):
        h.update(f"{p}\t{y}\n".encode())
    h.update(json.dumps(lst.classes).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------- finishing a split


def _relative(p: Path, src: Path) -> str:
    try:
        return p.relative_to(src).as_posix()
    except ValueError:
        return str(p)


def _finish_raw(st: _SplitState, src: Path) -> tuple[np.ndarray, np.ndarray]:
    """Fill the slots of skipped images from the tail, truncate, publish. Idempotent steps."""
    size = st.size
    isz = size * size * 3
    bad = np.array(sorted(set(st.bad_idx)), dtype=np.int64)
    good = np.setdiff1d(np.arange(st.n, dtype=np.int64), bad)
    ng = len(good)
    holes = bad[bad < ng]
    sources = good[good >= ng]
    order = np.arange(ng, dtype=np.int64)
    order[holes] = sources
    partial = st.out / f"{st.name}.images.partial"
    final = st.out / f"{st.name}.images"
    if partial.exists():
        marker = st.dir / "compacted"
        if len(holes) and not marker.exists():
            # Sources lie at or beyond ng, destinations below: redoing the moves is harmless.
            fd = os.open(partial, os.O_RDWR)
            try:
                for h, s in zip(holes.tolist(), sources.tolist()):
                    data = os.pread(fd, isz, s * isz)
                    os.pwrite(fd, data, h * isz)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            _atomic_write_text(marker, "done\n")
        os.truncate(partial, ng * isz)
    labels = np.asarray(st.list.labels, dtype=np.int64)[order]
    files = [_relative(st.list.paths[i], src) for i in order.tolist()]
    _atomic_save_npy(st.out / f"{st.name}.labels.npy", labels)
    _atomic_write_text(st.out / f"{st.name}.files.txt", "".join(f + "\n" for f in files))
    if partial.exists():
        os.replace(partial, final)
    return labels, order


def _finish_jpeg(st: _SplitState, src: Path) -> None:
    bad = set(st.bad_idx)
    order = np.array([i for i in range(st.n) if i not in bad], dtype=np.int64)
    final = st.out / f"{st.name}.jpeg"
    sizes = [np.load(st.dir / f"blob-{k:07d}.sizes.npy") for k in range(st.nchunks)]
    sizes = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    if not final.exists():
        tmp = st.out / f"{st.name}.jpeg.partial"
        with open(tmp, "wb") as f:
            for k in range(st.nchunks):
                with open(st.dir / f"blob-{k:07d}.jpg", "rb") as b:
                    shutil.copyfileobj(b, f, 1 << 24)
            f.flush()
            os.fsync(f.fileno())
    _atomic_save_npy(st.out / f"{st.name}.offsets.npy", offsets)
    _atomic_save_npy(st.out / f"{st.name}.labels.npy", np.asarray(st.list.labels, dtype=np.int64)[order])
    files = [_relative(st.list.paths[i], src) for i in order.tolist()]
    _atomic_write_text(st.out / f"{st.name}.files.txt", "".join(f + "\n" for f in files))
    if not final.exists():
        os.replace(st.out / f"{st.name}.jpeg.partial", final)


# ---------------------------------------------------------------------------- statistics


def color_stats(mean_sum: np.ndarray, rgb: np.ndarray, outer: np.ndarray, count: int, pixels: int):
    """Mean image (3,S,S) and the eigen-decomposition of the RGB covariance, from exact sums."""
    mean = (mean_sum.astype(np.float64) / max(count, 1)).transpose(2, 0, 1)
    m = rgb / max(pixels, 1)
    cov = outer / max(pixels, 1) - np.outer(m, m)
    cov = (cov + cov.T) / 2
    vals, vecs = np.linalg.eigh(cov)
    vals, vecs = vals[::-1].copy(), vecs[:, ::-1].copy()
    for j in range(3):  # deterministic sign: the largest component of each eigenvector positive
        if vecs[np.argmax(np.abs(vecs[:, j])), j] < 0:
            vecs[:, j] = -vecs[:, j]
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731 (safetensors writes raw buffers)
    return f32(mean), f32(np.maximum(vals, 0)), f32(vecs)


# ---------------------------------------------------------------------------- prepare


def _existing_meta_matches(meta: dict, src: Path, size: int, encoding: str, lists: dict[str, ImageList]) -> bool:
    if meta.get("format") != FORMAT or meta.get("version") != VERSION or meta.get("size") != size:
        return False
    if meta.get("source") != str(src):
        return False
    first = next(iter(lists.values()))
    if meta.get("classes") != first.classes:
        return False
    splits = meta.get("splits", {})
    for name, lst in lists.items():
        s = splits.get(name)
        if not s or s.get("encoding") != encoding or s.get("count", -1) + s.get("skipped", 0) != len(lst):
            return False
    return True


def prepare(
    src,
    out,
    size: int = 256,
    splits: list[str] | None = None,
    workers: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    encoding: str = "raw",
    chunk_size: int = 256,
    on_chunk: Callable[[str, int], None] | None = None,
) -> Path:
    """Prepare ``src`` (an image-folder tree or ImageNet layout) into ``out``; returns ``out``.

    ``splits``: which splits (default: all of train/val/test present). ``workers``: processes
    (default: all cores; 1 = in this process). ``skip_bad``: leave out unreadable images and list
    them in ``out/skipped.txt`` instead of stopping. ``encoding``: ``"raw"`` (uint8 arrays,
    fastest to read) or ``"jpeg"`` (quality 90, about 10x smaller). ``on_chunk(split, k)`` is
    called after chunk ``k`` is recorded (a hook for progress reports and tests).

    A run that was interrupted resumes where it stopped; a folder that is already complete for
    the same source and options is returned at once.
    """
    if encoding not in ENCODINGS:
        raise DataError(out, f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    if not isinstance(size, int) or size < 1:
        raise DataError(out, f"size must be a positive integer, got {size!r}")
    if not 1 <= chunk_size <= 1_000_000:
        raise DataError(out, f"chunk_size must be in 1..1000000, got {chunk_size}")
    import torchvision.io  # noqa: F401  (imported once here, inherited by forked workers)
    import torchvision.transforms.v2.functional  # noqa: F401

    src = Path(src).expanduser().resolve()
    out = Path(out).expanduser()
    lists = find_splits(src, splits)
    for name, lst in lists.items():
        if len(lst) == 0:
            raise DataError(src / name, "holds no images")
    stats_split = "train" if "train" in lists else next(iter(lists))

    meta_path = out / "meta.json"
    if meta_path.exists():
        meta = _read_json(meta_path)
        if meta is not None and _existing_meta_matches(meta, src, size, encoding, lists):
            shutil.rmtree(out / PARTIAL, ignore_errors=True)
            return out
        raise DataError(
            out, "already holds prepared data of another source or other options; delete it or choose another folder"
        )
    if out.exists():
        if not out.is_dir():
            raise DataError(out, "is a file, expected a folder for the prepared data")
        if any(out.iterdir()) and not (out / PARTIAL).is_dir():
            raise DataError(out, "is not empty and holds no prepared data; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)

    job = {"format": FORMAT, "version": VERSION, "size": size, "encoding": encoding, "chunk_size": chunk_size,
           "classes": next(iter(lists.values())).classes, "stats_split": stats_split}
    job_path = out / PARTIAL / "job.json"
    old = _read_json(job_path)
    if old != job:
        if (out / PARTIAL).exists():  # an unfinished run with other options: start afresh
            shutil.rmtree(out / PARTIAL)
            for p in list(out.iterdir()):
                if p.is_file() and any(p.name.endswith(x) for x in _SPLIT_FILES + (".safetensors", "skipped.txt")):
                    p.unlink()
        (out / PARTIAL).mkdir(parents=True, exist_ok=True)
        _atomic_write_text(job_path, json.dumps(job))

    states: dict[str, _SplitState] = {}
    for name, lst in lists.items():
        st = _SplitState(out, name, lst, size, chunk_size, name == stats_split, _digest(lst, src))
        st.load()
        states[name] = st

    # Space for the raw arrays (sparse files: only what is still to be written counts).
    isz = size * size * 3
    if encoding == "raw":
        need = 0
        for st in states.values():
            if not (out / f"{st.name}.images").exists():
                need += int((~st.done).sum()) * chunk_size * isz
        free = shutil.disk_usage(out).free
        if need > free:
            raise DataError(out, f"needs about {need / 1e9:.1f} GB more disk space, {free / 1e9:.1f} GB free "
                                 "(encoding='jpeg' needs about 10x less)")
        for st in states.values():
            partial = out / f"{st.name}.images.partial"
            if not (out / f"{st.name}.images").exists() and not partial.exists():
                with open(partial, "wb") as f:
                    f.truncate(st.n * isz)

    tasks = []
    for st in states.values():
        if (out / f"{st.name}.{'images' if encoding == 'raw' else 'jpeg'}").exists():
            continue
        for k in np.flatnonzero(~st.done).tolist():
            lo, hi = k * chunk_size, min(st.n, (k + 1) * chunk_size)
            tasks.append({
                "split": st.name, "chunk": k, "start": lo, "size": size, "encoding": encoding,
                "paths": [str(p) for p in st.list.paths[lo:hi]], "skip_bad": skip_bad,
                "stats": st.stats, "quality": JPEG_QUALITY,
                "images": str(out / f"{st.name}.images.partial"),
                "blob": str(st.dir / f"blob-{k:07d}.jpg"),
            })

    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(int(workers), len(tasks) or 1))

    def handle(res: dict) -> None:
        st = states[res["split"]]
        if res["failed"]:
            idx, problem = res["bad"][0]
            raise DataError(st.list.paths[idx], f"{problem} (prepare with skip_bad=True / --skip-bad to leave out "
                                                "unreadable images)")
        if "write_error" in res:
            raise DataError(*res["write_error"])
        if "sizes" in res:
            _atomic_save_npy(st.dir / f"blob-{res['chunk']:07d}.sizes.npy", res["sizes"])
        st.record(res)
        bar.update(len(task_of[(res["split"], res["chunk"])]["paths"]))
        if on_chunk is not None:
            on_chunk(res["split"], res["chunk"])

    from tqdm.auto import tqdm

    task_of = {(t["split"], t["chunk"]): t for t in tasks}
    bar = tqdm(total=sum(len(t["paths"]) for t in tasks), unit="img", desc=f"prepare {out.name}",
               disable=not progress, smoothing=0.05)
    try:
        if workers == 1:
            for t in tasks:
                handle(_process_chunk(t))
        else:
            import multiprocessing as mp

            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            ex = ProcessPoolExecutor(workers, mp_context=mp.get_context(method), initializer=_init_worker)
            pending = set()
            it = iter(tasks)
            try:
                while True:
                    while len(pending) < 2 * workers:
                        t = next(it, None)
                        if t is None:
                            break
                        pending.add(ex.submit(_process_chunk, t))
                    if not pending:
                        break
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in sorted(finished, key=lambda f: (f.result()["split"], f.result()["chunk"])):
                        handle(f.result())
            finally:
                ex.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
        for st in states.values():
            st.merge()

    # Publish each split, then the statistics, then meta.json (last).
    skipped_lines = []
    split_meta = {}
    for name, st in states.items():
        if encoding == "raw":
            _finish_raw(st, src)
        else:
            _finish_jpeg(st, src)
        bad = sorted(zip(st.bad_idx, st.bad_problem))
        skipped_lines += [f"{_relative(st.list.paths[i], src)}\t{p}" for i, p in bad]
        split_meta[name] = {"count": st.n - len(bad), "encoding": encoding, "skipped": len(bad)}
    sst = states[stats_split]
    count = split_meta[stats_split]["count"]
    if count == 0:
        raise DataError(src / stats_split, "no image could be read, so there are no statistics")
    mean, vals, vecs = color_stats(sst.sum, sst.rgb, sst.outer, count, sst.pixels)
    from safetensors.numpy import save as st_save

    _atomic_write_bytes(out / "stats.safetensors",
                        st_save({"mean": mean, "pca_eigvals": vals, "pca_eigvecs": vecs}))
    if skipped_lines:
        _atomic_write_text(out / "skipped.txt", "".join(line + "\n" for line in skipped_lines))
    else:
        (out / "skipped.txt").unlink(missing_ok=True)
    first = next(iter(lists.values()))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "size": size,
        "classes": first.classes,
        "class_names": first.class_names,
        "pixel_scale": "0-255",
        "splits": split_meta,
        "stats_split": stats_split,
        "skipped": len(skipped_lines),
        "source": str(src),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _atomic_write_text(meta_path, json.dumps(meta, indent=1))
    shutil.rmtree(out / PARTIAL, ignore_errors=True)
    return out
