"""The prepared store on disk: file names, version, encodings and ``meta.json``, in one place for
the writers (:mod:`~alexnet.data.prepare`, :mod:`~alexnet.data.replica`) and the reader
(:mod:`~alexnet.data.prepared`).

A store is a folder::

    meta.json                   written last: its presence means the folder is complete
    stats.safetensors           mean (3,S,S) float32, pca_eigvals (3,) float32, pca_eigvecs (3,3) float32
    <split>.images              encoding "raw": uint8 (N,S,S,3), HWC, no header
    <split>.jpeg                encoding "jpeg": the images as baseline JPEGs back to back
    <split>.offsets.npy         encoding "jpeg": int64 (N+1,), image i is bytes offsets[i]:offsets[i+1]
    <split>.labels.npy          int64 (N,), indices into meta["classes"]
    <split>.files.txt           optional: the source file of each image, one per line
    skipped.txt                 optional: "<file>\\t<problem>" of each image left out (skip_bad)

``meta.json``::

    {"format": "alexnet-prepared", "version": 1, "size": S, "classes": [...], "class_names": [...],
     "pixel_scale": "0-255", "stats_split": "train", "skipped": k, "source": "...", "created": "...",
     "splits": {"train": {"count": N, "encoding": "raw", "skipped": k},
                "val": {"count": M, "encoding": "jpeg", "quality": 90, "skipped": 0}}}

Statistics are in the 0-255 scale, computed from the pixels before any JPEG encoding. Version 1
stores written before ``quality`` was recorded are JPEG quality 90 (the only one written then).
The version changes only when a reader of the previous version would misread a new store.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from alexnet.errors import DataError

__all__ = ["FORMAT", "VERSION", "ENCODINGS", "DEFAULT_QUALITY", "RAW_LIMIT_BYTES", "PARTIAL", "image_bytes",
           "images_file", "offsets_file", "labels_file", "files_file", "choose_encoding", "split_entry",
           "make_meta", "read_meta", "check_split_files", "read_json", "write_stats", "read_stats", "SplitInfo"]

FORMAT = "alexnet-prepared"
VERSION = 1
ENCODINGS = ("raw", "jpeg")
CHOICES = ("auto",) + ENCODINGS
DEFAULT_QUALITY = 90
# "auto" stores raw pixels while the raw store stays at most this large, JPEG beyond. Raw costs no
# CPU to read but must sit in the page cache to be fast: 32 GB is a quarter of the 128 GB H200
# machines' memory and half their 64 GB disk. ImageNet at 256 (252 GB raw) becomes JPEG (25 GB at
# quality 90); CIFAR-10 (0.18 GB) and the 60,000-image benchmark set (11.8 GB) stay raw.
RAW_LIMIT_BYTES = 32_000_000_000
PARTIAL = ".partial"
META = "meta.json"
STATS = "stats.safetensors"
SKIPPED = "skipped.txt"
BAD_LIST = "bad-images.txt"


def image_bytes(size: int) -> int:
    return size * size * 3


def images_file(split: str, encoding: str) -> str:
    return f"{split}.images" if encoding == "raw" else f"{split}.jpeg"


def offsets_file(split: str) -> str:
    return f"{split}.offsets.npy"


def labels_file(split: str) -> str:
    return f"{split}.labels.npy"


def files_file(split: str) -> str:
    return f"{split}.files.txt"


def check_quality(quality, where) -> int:
    if not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 100:
        raise DataError(where, f"JPEG quality must be an integer in 1..100, got {quality!r}")
    return quality


def choose_encoding(encoding: str, count: int, size: int, where) -> str:
    """The encoding a store of ``count`` images of ``size`` gets: "auto" is raw up to RAW_LIMIT_BYTES."""
    if encoding not in CHOICES:
        raise DataError(where, f"unknown encoding {encoding!r}; choose one of {', '.join(CHOICES)}")
    if encoding != "auto":
        return encoding
    return "raw" if count * image_bytes(size) <= RAW_LIMIT_BYTES else "jpeg"


def split_entry(count: int, encoding: str, skipped: int, quality: int | None) -> dict:
    entry = {"count": int(count), "encoding": encoding, "skipped": int(skipped)}
    if encoding == "jpeg":
        entry["quality"] = int(quality)
    return entry


def make_meta(size: int, classes: list[str], class_names: list[str], splits: dict[str, dict], stats_split: str,
              source: str, **extra) -> dict:
    import time

    meta = {"format": FORMAT, "version": VERSION, "size": int(size), "classes": list(classes),
            "class_names": list(class_names), "pixel_scale": "0-255", "splits": splits, "stats_split": stats_split,
            "skipped": sum(int(s.get("skipped", 0)) for s in splits.values()), "source": source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    meta.update(extra)
    return meta


def read_json(path: Path):
    """The parsed JSON at ``path``, or None when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


class SplitInfo:
    """One split as meta.json describes it."""

    def __init__(self, name: str, entry: dict):
        self.name = name
        self.count = int(entry["count"])
        self.encoding = entry.get("encoding", "raw")
        self.quality = int(entry.get("quality", DEFAULT_QUALITY)) if self.encoding == "jpeg" else None
        if self.count < 0 or self.encoding not in ENCODINGS:
            raise ValueError(name)


def read_meta(path: Path) -> tuple[dict, dict[str, SplitInfo]]:
    """meta.json of the store at ``path``, checked; raises a one-line DataError."""
    meta_path = path / META
    if not meta_path.exists():
        if (path / PARTIAL).is_dir():
            raise DataError(path, "preparation did not finish; run prepare again with the same source and "
                                  "options to resume it")
        raise DataError(path, "is not a prepared data folder (no meta.json); make one with `alexnet prepare`")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(meta_path, f"is corrupt ({e}); prepare the data again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(meta_path, f"is not {FORMAT} metadata")
    if meta.get("version") != VERSION:
        raise DataError(meta_path, f"is format version {meta.get('version')!r}; this alexnet reads version "
                                   f"{VERSION}: prepare the data again")
    try:
        size = int(meta["size"])
        classes = meta["classes"]
        assert size > 0 and isinstance(classes, list) and classes
        assert isinstance(meta["splits"], dict) and meta["splits"]
        splits = {name: SplitInfo(name, entry) for name, entry in meta["splits"].items()}
    except (KeyError, TypeError, ValueError, AssertionError):
        raise DataError(meta_path, "is incomplete or malformed; prepare the data again") from None
    return meta, splits


def check_split_files(path: Path, size: int, info: SplitInfo) -> None:
    """The files of one split exist and a raw array has the size its count says."""
    data = path / images_file(info.name, info.encoding)
    must = [data, path / labels_file(info.name)]
    if info.encoding == "jpeg":
        must.append(path / offsets_file(info.name))
    for f in must:
        if not f.exists():
            raise DataError(f, f"is missing (split '{info.name}'); prepare the data again")
    if info.encoding == "raw":
        want = info.count * image_bytes(size)
        have = data.stat().st_size
        if have != want:
            raise DataError(data, f"has {have} bytes, expected {info.count} images x {image_bytes(size)} = {want}; "
                                  "the file is truncated or from another preparation: prepare the data again")


def write_stats(out: Path, mean: np.ndarray, eigvals: np.ndarray, eigvecs: np.ndarray) -> None:
    from safetensors.numpy import save

    from alexnet.runtime import atomic_write_bytes

    atomic_write_bytes(out / STATS, save({"mean": mean, "pca_eigvals": eigvals, "pca_eigvecs": eigvecs}))


def read_stats(path: Path, size: int):
    """(mean (3,S,S), eigvals (3,), eigvecs (3,3)) as float32 tensors; raises DataError."""
    from safetensors.torch import load_file

    stats_path = path / STATS
    try:
        stats = load_file(str(stats_path))
        mean, vals, vecs = stats["mean"], stats["pca_eigvals"], stats["pca_eigvecs"]
    except FileNotFoundError:
        raise DataError(stats_path, "is missing; prepare the data again") from None
    except Exception as e:
        raise DataError(stats_path, f"is corrupt ({type(e).__name__}); prepare the data again") from None
    if tuple(mean.shape) != (3, size, size) or tuple(vals.shape) != (3,) or tuple(vecs.shape) != (3, 3):
        raise DataError(stats_path, f"holds shapes that do not fit size {size}; prepare the data again")
    return mean.float(), vals.float(), vecs.float()
