"""One chunk of ``prepare``, as a worker process does it: decode, crop, store, sum the statistics.

A task is a dict (see ``prepare._tasks``); the result says which images were bad and carries the
chunk's exact colour sums. Raw images go straight to their slots of ``<split>.images.partial``;
JPEGs to one blob file per chunk, written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from alexnet.data.decode import BadImage, encode_store_jpeg, load_image
from alexnet.data.stats import ColorSums

__all__ = ["process_chunk"]


def _decode_all(task: dict):
    """(images (n,S,S,3), ok mask, bad [(index, problem)], sums or None). Every image is tried, so
    that one pass names all bad files."""
    size, start, paths = task["size"], task["start"], task["paths"]
    n = len(paths)
    out = np.zeros((n, size, size, 3), dtype=np.uint8)
    ok = np.zeros(n, dtype=bool)
    bad: list[tuple[int, str]] = []
    sums = ColorSums(size) if task["stats"] else None
    for j, p in enumerate(paths):
        try:
            out[j] = load_image(p, size)
        except BadImage as e:
            bad.append((start + j, " ".join(str(e).split())))  # one line
            continue
        ok[j] = True
        if sums is not None:
            sums.add(out[j])
    return out, ok, bad, sums


def _write_raw(path: str, images: np.ndarray, start: int) -> None:
    isz = images[0].nbytes if len(images) else 0
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(images.reshape(-1))
        pos, total = 0, images.nbytes
        while pos < total:
            pos += os.pwrite(fd, view[pos:], start * isz + pos)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _write_jpeg(path: str, images: np.ndarray, ok: np.ndarray, quality: int) -> np.ndarray:
    from alexnet.runtime import atomic_write_bytes

    blobs = [encode_store_jpeg(images[j], quality) for j in np.flatnonzero(ok).tolist()]
    atomic_write_bytes(Path(path), b"".join(blobs))
    return np.array([len(b) for b in blobs], dtype=np.int64)


def process_chunk(task: dict) -> dict:
    """Decode, crop and store images ``task['start']...`` of one split; return their statistics.

    ``failed``: a bad image and no ``skip_bad``: nothing is written and the chunk is not recorded
    (the bad images are all named)."""
    images, ok, bad, sums = _decode_all(task)
    result = {"split": task["split"], "chunk": task["chunk"], "bad": bad, "count": len(images),
              "failed": bool(bad) and not task["skip_bad"]}
    if result["failed"]:
        return result
    target = task["images"] if task["encoding"] == "raw" else task["blob"]
    try:
        if task["encoding"] == "raw":
            _write_raw(target, images, task["start"])
        else:
            result["sizes"] = _write_jpeg(target, images, ok, task["quality"])
    except OSError as e:
        result["write_error"] = (target, f"cannot be written ({e.strerror or e})")
        return result
    if sums is not None:
        result["sums"] = sums.arrays()
    return result
