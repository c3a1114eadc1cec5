"""What ``prepare`` has finished, kept on disk so that an interrupted run resumes; and publishing a
finished split.

Each finished chunk is recorded in ``out/.partial/<split>/chunk-K.npz`` (its colour sums and its
bad images, written atomically); the records are folded into one ``base.npz`` every
``merge_every`` chunks. Raw pixels are in ``<split>.images.partial`` already; JPEG chunks in
``blob-K.jpg`` with their sizes in ``blob-K.sizes.npy``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from alexnet.data import format as F
from alexnet.data.layouts import ImageList
from alexnet.data.stats import ColorSums
from alexnet.runtime import atomic_write_bytes, atomic_write_text

__all__ = ["SplitState", "finish_raw", "finish_jpeg", "concatenate_blobs", "remove_split_files", "digest", "relative",
           "save_npy"]

SPLIT_SUFFIXES = (".images", ".images.partial", ".jpeg", ".jpeg.partial", ".offsets.npy", ".labels.npy",
                  ".files.txt")


def save_npz(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def remove_split_files(out: Path, name: str) -> None:
    for suffix in SPLIT_SUFFIXES:
        (out / (name + suffix)).unlink(missing_ok=True)


def digest(lst: ImageList) -> str:
    h = hashlib.sha256()
    for p, y in zip(lst.paths, lst.labels):
        h.update(f"{p}\t{y}\n".encode())
    h.update(json.dumps(lst.classes).encode())
    return h.hexdigest()


def relative(p: Path, src: Path) -> str:
    try:
        return Path(p).relative_to(src).as_posix()
    except ValueError:
        return str(p)


class SplitState:
    """Recorded progress of one split in ``out/.partial/<split>/``."""

    def __init__(self, out: Path, name: str, lst: ImageList, size: int, chunk_size: int, stats: bool,
                 merge_every: int = 64):
        self.out, self.name, self.list, self.size = out, name, lst, size
        self.n = len(lst)
        self.chunk_size, self.stats, self.merge_every = chunk_size, stats, merge_every
        self.nchunks = (self.n + chunk_size - 1) // chunk_size
        self.dir = out / F.PARTIAL / name
        self.digest = digest(lst)
        self._reset()

    def _reset(self) -> None:
        self.done = np.zeros(self.nchunks, dtype=bool)
        self.sums = ColorSums(self.size) if self.stats else None
        self.bad_idx: list[int] = []
        self.bad_problem: list[str] = []
        self.unmerged: list[Path] = []

    def chunk_range(self, k: int) -> tuple[int, int]:
        return k * self.chunk_size, min(self.n, (k + 1) * self.chunk_size)

    # -- loading
    def load(self) -> None:
        info = F.read_json(self.dir / "job.json")
        if info is None or info.get("digest") != self.digest or info.get("count") != self.n:
            if self.dir.exists():
                shutil.rmtree(self.dir)
            remove_split_files(self.out, self.name)
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.dir / "job.json", json.dumps({"digest": self.digest, "count": self.n}))
            return
        base = self.dir / "base.npz"
        if base.exists():
            try:
                with np.load(base) as z:
                    self._add(z)
                    self.done |= z["done"].astype(bool)
            except Exception:  # a damaged base: start the split again
                shutil.rmtree(self.dir)
                self._reset()
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

    def _add(self, z) -> None:
        if self.stats:
            self.sums.merge(z)
        self.bad_idx += [int(i) for i in z["bad_idx"]]
        self.bad_problem += [str(p) for p in z["bad_problem"]]

    # -- recording
    def record(self, res: dict) -> None:
        k = res["chunk"]
        if "sizes" in res:
            save_npy(self.dir / f"blob-{k:07d}.sizes.npy", res["sizes"])
        arrays = {"chunk": np.array(k), "bad_idx": np.array([b[0] for b in res["bad"]], dtype=np.int64),
                  "bad_problem": np.array([b[1] for b in res["bad"]], dtype=str)}
        if self.stats:
            arrays.update(res["sums"])
        path = self.dir / f"chunk-{k:07d}.npz"
        save_npz(path, **arrays)
        self._add(arrays)
        self.done[k] = True
        self.unmerged.append(path)
        if len(self.unmerged) >= self.merge_every:
            self.merge()

    def merge(self) -> None:
        """Fold the chunk records into base.npz (atomically), then delete them."""
        if not self.unmerged:
            return
        arrays = {"done": self.done, "bad_idx": np.array(self.bad_idx, dtype=np.int64),
                  "bad_problem": np.array(self.bad_problem, dtype=str)}
        if self.stats:
            arrays.update(self.sums.arrays())
        save_npz(self.dir / "base.npz", **arrays)
        for p in self.unmerged:
            p.unlink(missing_ok=True)
        self.unmerged = []

    def bad(self) -> list[tuple[int, str]]:
        return sorted(zip(self.bad_idx, self.bad_problem))


# ---------------------------------------------------------------------------- publishing a split


def _write_list(st: SplitState, order: np.ndarray, src: Path) -> None:
    save_npy(st.out / F.labels_file(st.name), np.asarray(st.list.labels, dtype=np.int64)[order])
    files = [relative(st.list.paths[i], src) for i in order.tolist()]
    atomic_write_text(st.out / F.files_file(st.name), "".join(f + "\n" for f in files))


def finish_raw(st: SplitState, src: Path) -> None:
    """Fill the slots of skipped images from the tail, truncate, publish. Idempotent steps."""
    isz = F.image_bytes(st.size)
    bad = np.array(sorted(set(st.bad_idx)), dtype=np.int64)
    good = np.setdiff1d(np.arange(st.n, dtype=np.int64), bad)
    ng = len(good)
    holes = bad[bad < ng]
    sources = good[good >= ng]
    order = np.arange(ng, dtype=np.int64)
    order[holes] = sources
    partial = st.out / f"{st.name}.images.partial"
    if partial.exists():
        marker = st.dir / "compacted"
        if len(holes) and not marker.exists():
            # Sources lie at or beyond ng, destinations below: redoing the moves is harmless.
            fd = os.open(partial, os.O_RDWR)
            try:
                for h, s in zip(holes.tolist(), sources.tolist()):
                    os.pwrite(fd, os.pread(fd, isz, s * isz), h * isz)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            atomic_write_text(marker, "done\n")
        os.truncate(partial, ng * isz)
    _write_list(st, order, src)
    if partial.exists():
        os.replace(partial, st.out / F.images_file(st.name, "raw"))


def concatenate_blobs(blobs: list[Path], chunk_bytes: list[int], target: Path, marker: Path | None,
                      every: int = 64) -> None:
    """Append the chunk files to ``target`` in order, deleting each group of ``every`` once it is on
    disk, so that the store and its chunks never take twice the space (ImageNet: 25 GB, not 50).

    ``marker`` (if given) records how many chunks are in; a rerun after an interruption cuts the
    target back to that point and goes on."""
    done = int((F.read_json(marker) or {}).get("chunks", 0)) if marker is not None else 0
    start = int(sum(chunk_bytes[:done]))
    with open(target, "r+b" if target.exists() else "wb") as f:
        f.truncate(start)
        f.seek(start)
        for k in range(done, len(blobs)):
            with open(blobs[k], "rb") as b:
                shutil.copyfileobj(b, f, 1 << 24)
            if (k + 1) % every == 0 or k + 1 == len(blobs):
                f.flush()
                os.fsync(f.fileno())
                if marker is not None:
                    atomic_write_text(marker, json.dumps({"chunks": k + 1}))
                for j in range(max(done, k + 1 - every), k + 1):
                    blobs[j].unlink(missing_ok=True)
        f.flush()
        os.fsync(f.fileno())


def finish_jpeg(st: SplitState, src: Path) -> None:
    """Concatenate the chunk blobs into ``<split>.jpeg`` and write its offsets."""
    bad = set(st.bad_idx)
    order = np.array([i for i in range(st.n) if i not in bad], dtype=np.int64)
    final = st.out / F.images_file(st.name, "jpeg")
    sizes = [np.load(st.dir / f"blob-{k:07d}.sizes.npy") for k in range(st.nchunks)]
    if not final.exists():
        concatenate_blobs([st.dir / f"blob-{k:07d}.jpg" for k in range(st.nchunks)], [int(z.sum()) for z in sizes],
                          st.out / f"{st.name}.jpeg.partial", st.dir / "concatenated.json")
    sizes = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    save_npy(st.out / F.offsets_file(st.name), offsets)
    _write_list(st, order, src)
    if not final.exists():
        os.replace(st.out / f"{st.name}.jpeg.partial", final)
