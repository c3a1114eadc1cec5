"""Read a prepared data folder (the store of :mod:`alexnet.data.format`).

>>> data = PreparedData.open("prepared/imagenet")
>>> train = data.split("train")
>>> x = train.read([5, 1, 3])          # uint8 (3, 3, S, S), channels_last in memory
>>> y = train.labels[[5, 1, 3]]        # int64
>>> fit, held = train.holdout(0.1)     # hold out 10% of train for validation
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import torch

from alexnet.data import format as F
from alexnet.data.format import FORMAT
from alexnet.errors import DataError

_OPEN_LOCK = threading.Lock()       # see PreparedSplit._open

__all__ = ["PreparedData", "PreparedSplit", "is_prepared"]


def is_prepared(path) -> bool:
    """True if ``path`` is a finished prepared folder (it has an alexnet-prepared meta.json)."""
    try:
        meta = json.loads((Path(path) / F.META).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def _as_index_array(indices) -> np.ndarray:
    if isinstance(indices, torch.Tensor):
        return indices.detach().cpu().numpy().astype(np.int64, copy=False).reshape(-1)
    return np.asarray(indices, dtype=np.int64).reshape(-1)


class PreparedSplit:
    """One split: ``len``, ``labels`` (int64), ``read(indices)`` -> uint8 (B,3,S,S)."""

    def __init__(self, data: "PreparedData", name: str, count: int, encoding: str, index: np.ndarray | None = None,
                 quality: int | None = None):
        self.data, self.name, self.encoding, self.quality = data, name, encoding, quality
        self.size = data.size
        self._count = count  # images stored in the split's files
        self._index = index  # a subset: positions in the stored split
        self._mm = None
        self._offsets = None
        self._labels_all: torch.Tensor | None = None

    def __getstate__(self):  # picklable (e.g. for spawned processes): reopen the files there
        state = dict(self.__dict__)
        state["_mm"] = None
        state["_offsets"] = None
        return state

    # -- basic facts
    def __len__(self) -> int:
        return self._count if self._index is None else len(self._index)

    def __repr__(self) -> str:
        sub = "" if self._index is None else f", subset of {self._count}"
        return f"PreparedSplit({self.name!r}, {len(self)} images{sub}, {self.size}x{self.size}, {self.encoding})"

    @property
    def path(self) -> Path:
        return self.data.path / F.images_file(self.name, self.encoding)

    @property
    def labels(self) -> torch.Tensor:
        """int64 labels, one per image of this (sub)split."""
        if self._labels_all is None:
            path = self.data.path / F.labels_file(self.name)
            try:
                with _OPEN_LOCK:                    # np.load from threads: see _open
                    arr = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DataError(path, f"cannot be read ({e}); prepare the data again") from None
            if arr.shape != (self._count,):
                raise DataError(path, f"holds {arr.shape} labels, expected ({self._count},); prepare the data again")
            arr = arr.astype(np.int64, copy=False)
            if self._count and (arr.min() < 0 or arr.max() >= len(self.data.classes)):
                raise DataError(path, f"labels outside 0..{len(self.data.classes) - 1}; prepare the data again")
            self._labels_all = torch.from_numpy(arr)
        if self._index is None:
            return self._labels_all
        return self._labels_all[torch.from_numpy(self._index)]

    @property
    def files(self) -> list[str]:
        """Source file of each image (relative to the prepared source), when recorded."""
        path = self.data.path / F.files_file(self.name)
        try:
            names = path.read_text().splitlines()
        except OSError:
            return []
        if self._index is None:
            return names
        return [names[i] for i in self._index.tolist()]

    # -- subsets
    def subset(self, indices) -> "PreparedSplit":
        """The images at ``indices`` (positions in this split), as a split of their own."""
        idx = _as_index_array(indices)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"subset indices outside 0..{len(self) - 1}")
        base = idx if self._index is None else self._index[idx]
        sub = PreparedSplit(self.data, self.name, self._count, self.encoding, base.copy(), self.quality)
        sub._labels_all = self._labels_all
        return sub

    def holdout(self, fraction: float, seed: int = 0) -> tuple["PreparedSplit", "PreparedSplit"]:
        """(rest, held): a random ``fraction`` of the images held out, e.g. for validation.

        Deterministic for a seed; both parts keep their images in stored order.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
        n = len(self)
        k = int(round(n * fraction))
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).numpy()
        held = np.sort(perm[:k])
        rest = np.sort(perm[k:])
        return self.subset(rest), self.subset(held)

    # -- reading
    def _open(self):
        # One opening per split, under a lock: the in-process loader reads from several threads, and
        # np.load's header parsing (ast.literal_eval) is not safe to run in two threads at once on
        # CPython 3.11 ("AST constructor recursion depth mismatch").
        if self._mm is None:
            with _OPEN_LOCK:
                if self._mm is None:
                    self._open_files()
        return self._mm

    def _open_files(self) -> None:
        S = self.size
        path = self.path
        try:
            if self.encoding == "raw":
                if self._count == 0:
                    self._mm = np.zeros((0, S, S, 3), dtype=np.uint8)
                else:
                    self._mm = np.memmap(path, np.uint8, "r", shape=(self._count, S, S, 3))
            else:
                off = np.load(self.data.path / F.offsets_file(self.name), allow_pickle=False)
                total = int(off[-1]) if off.ndim == 1 and len(off) else -1
                if off.shape != (self._count + 1,) or total != path.stat().st_size or np.any(np.diff(off) <= 0):
                    raise DataError(path, "does not match its offsets.npy; prepare the data again")
                self._offsets = off
                self._mm = np.memmap(path, np.uint8, "r") if total else np.zeros(0, np.uint8)
        except (OSError, ValueError) as e:
            raise DataError(path, f"cannot be opened ({e}); prepare the data again") from None

    def stored_rows(self, indices) -> np.ndarray:
        """Positions in the stored files of the images at ``indices`` (negative ones count from the end)."""
        idx = _as_index_array(indices)
        n = len(self)
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {n} images")
        idx = np.where(idx < 0, idx + n, idx)
        return idx if self._index is None else self._index[idx]

    def offsets(self) -> np.ndarray:
        """A JPEG split's byte offsets: image i is bytes offsets[i]:offsets[i+1] of ``path``."""
        self._open()
        return self._offsets

    def read(self, indices, out: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
        """Images at ``indices`` as uint8 (B,3,S,S), channels_last in memory (a view of HWC data).

        ``out``: an optional uint8 buffer (B,S,S,3) (numpy or CPU tensor, e.g. pinned) to fill.
        Reads go in ascending file order whatever the order asked for. A JPEG that cannot be
        decoded raises a one-line DataError naming the store file and the image.
        """
        idx = self.stored_rows(indices)
        S = self.size
        if out is None:
            buf = np.empty((len(idx), S, S, 3), dtype=np.uint8)
        else:
            buf = out.numpy() if isinstance(out, torch.Tensor) else out
            if buf.shape != (len(idx), S, S, 3) or buf.dtype != np.uint8:
                raise ValueError(f"out must be uint8 {(len(idx), S, S, 3)}, got {buf.dtype} {buf.shape}")
        mm = self._open()
        order = np.argsort(idx, kind="stable")
        if self.encoding == "raw":
            for j in order.tolist():
                buf[j] = mm[idx[j]]
        else:
            from alexnet.data.decode import store_jpeg_decoder

            decode_into = store_jpeg_decoder()[1]  # simplejpeg, or torchvision without it
            off = self._offsets
            for j in order.tolist():
                i = int(idx[j])
                decode_into(mm[off[i] : off[i + 1]], buf[j], self.path, i)
        t = out if isinstance(out, torch.Tensor) else torch.from_numpy(buf)
        return t.permute(0, 3, 1, 2)


class PreparedData:
    """A prepared data folder: classes, statistics and splits."""

    def __init__(self, path: Path, meta: dict, mean: torch.Tensor, eigvals: torch.Tensor, eigvecs: torch.Tensor):
        self.path = path
        self.meta = meta
        self.size: int = meta["size"]
        self.classes: list[str] = list(meta["classes"])
        self.class_names: list[str] = list(meta.get("class_names") or meta["classes"])
        self.splits: list[str] = list(meta["splits"])
        self.stats_split: str = meta.get("stats_split", "train")
        self.pixel_scale: str = meta.get("pixel_scale", "0-255")
        self.mean = mean
        self.pca_eigvals = eigvals
        self.pca_eigvecs = eigvecs
        self._split_cache: dict[str, PreparedSplit] = {}

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={self.meta['splits'][s]['count']}" for s in self.splits)
        return f"PreparedData({str(self.path)!r}, size={self.size}, {len(self.classes)} classes, {counts})"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def open(cls, path) -> "PreparedData":
        path = Path(path).expanduser()
        if not path.exists():
            raise DataError(path, "does not exist (make it with `alexnet prepare SRC OUT`)")
        if not path.is_dir():
            raise DataError(path, "is a file, expected a prepared data folder")
        meta, splits = F.read_meta(path)  # checked: a one-line DataError for anything wrong
        size = int(meta["size"])
        mean, vals, vecs = F.read_stats(path, size)
        for info in splits.values():
            F.check_split_files(path, size, info)
        return cls(path, meta, mean, vals, vecs)

    def split(self, name: str) -> PreparedSplit:
        if name not in self.meta["splits"]:
            raise DataError(self.path, f"has no split '{name}' (it has: {', '.join(self.splits)})")
        if name not in self._split_cache:
            info = F.SplitInfo(name, self.meta["splits"][name])
            self._split_cache[name] = PreparedSplit(self, name, info.count, info.encoding, quality=info.quality)
        return self._split_cache[name]

    def __contains__(self, name: str) -> bool:
        return name in self.meta["splits"]
