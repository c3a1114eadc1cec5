"""Read a prepared data folder (see :mod:`alexnet.data.prepare` for the format).

>>> data = PreparedData.open("prepared/imagenet")
>>> train = data.split("train")
>>> x = train.read([5, 1, 3])          # uint8 (3, 3, S, S), channels_last in memory
>>> y = train.labels[[5, 1, 3]]        # int64
>>> fit, held = train.holdout(0.1)     # hold out 10% of train for validation
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from alexnet.errors import DataError
from alexnet.data.prepare import FORMAT, PARTIAL, VERSION

__all__ = ["PreparedData", "PreparedSplit", "is_prepared"]

# torchvision 0.29 announces the removal of its image codecs (present up to 0.29, which is what
# pyproject allows). Only this one message is silenced.
_TV_CODEC_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"


def is_prepared(path) -> bool:
    """True if ``path`` is a finished prepared folder (it has an alexnet-prepared meta.json)."""
    try:
        meta = json.loads((Path(path) / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def _as_index_array(indices) -> np.ndarray:
    if isinstance(indices, torch.Tensor):
        return indices.detach().cpu().numpy().astype(np.int64, copy=False).reshape(-1)
    return np.asarray(indices, dtype=np.int64).reshape(-1)


class PreparedSplit:
    """One split: ``len``, ``labels`` (int64), ``read(indices)`` -> uint8 (B,3,S,S)."""

    def __init__(self, data: "PreparedData", name: str, count: int, encoding: str, index: np.ndarray | None = None):
        self.data, self.name, self.encoding = data, name, encoding
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
        return self.data.path / (self.name + (".images" if self.encoding == "raw" else ".jpeg"))

    @property
    def labels(self) -> torch.Tensor:
        """int64 labels, one per image of this (sub)split."""
        if self._labels_all is None:
            path = self.data.path / f"{self.name}.labels.npy"
            try:
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
        path = self.data.path / f"{self.name}.files.txt"
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
        sub = PreparedSplit(self.data, self.name, self._count, self.encoding, base.copy())
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
        if self._mm is None:
            S = self.size
            path = self.path
            try:
                if self.encoding == "raw":
                    if self._count == 0:
                        self._mm = np.zeros((0, S, S, 3), dtype=np.uint8)
                    else:
                        self._mm = np.memmap(path, np.uint8, "r", shape=(self._count, S, S, 3))
                else:
                    off = np.load(self.data.path / f"{self.name}.offsets.npy", allow_pickle=False)
                    total = int(off[-1]) if off.ndim == 1 and len(off) else -1
                    if off.shape != (self._count + 1,) or total != path.stat().st_size or np.any(np.diff(off) <= 0):
                        raise DataError(path, "does not match its offsets.npy; prepare the data again")
                    self._offsets = off
                    self._mm = np.memmap(path, np.uint8, "r") if total else np.zeros(0, np.uint8)
            except (OSError, ValueError) as e:
                raise DataError(path, f"cannot be opened ({e}); prepare the data again") from None
        return self._mm

    def read(self, indices, out: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
        """Images at ``indices`` as uint8 (B,3,S,S), channels_last in memory (a view of HWC data).

        ``out``: an optional uint8 buffer (B,S,S,3) (numpy or CPU tensor, e.g. pinned) to fill.
        Reads go in ascending file order whatever the order asked for.
        """
        idx = _as_index_array(indices)
        n = len(self)
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {n} images")
        idx = np.where(idx < 0, idx + n, idx)
        if self._index is not None:
            idx = self._index[idx]
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
            from torchvision.io import decode_jpeg

            off = self._offsets
            # catch_warnings is not thread-safe: racing threads can at worst leave this narrow
            # filter installed, which is harmless.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_TV_CODEC_DEPRECATION, category=DeprecationWarning)
                for j in order.tolist():
                    i = idx[j]
                    data = torch.from_numpy(np.array(mm[off[i] : off[i + 1]]))
                    img = decode_jpeg(data)
                    if img.shape[0] == 1:
                        img = img.expand(3, -1, -1)
                    buf[j] = img.permute(1, 2, 0).numpy()
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
        meta_path = path / "meta.json"
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
            splits = meta["splits"]
            assert size > 0 and isinstance(classes, list) and classes and isinstance(splits, dict) and splits
            for s in splits.values():
                assert int(s["count"]) >= 0 and s.get("encoding", "raw") in ("raw", "jpeg")
        except (KeyError, TypeError, ValueError, AssertionError):
            raise DataError(meta_path, "is incomplete or malformed; prepare the data again") from None
        # statistics
        stats_path = path / "stats.safetensors"
        try:
            from safetensors.torch import load_file

            stats = load_file(str(stats_path))
            mean, vals, vecs = stats["mean"], stats["pca_eigvals"], stats["pca_eigvecs"]
        except FileNotFoundError:
            raise DataError(stats_path, "is missing; prepare the data again") from None
        except Exception as e:
            raise DataError(stats_path, f"is corrupt ({type(e).__name__}); prepare the data again") from None
        if tuple(mean.shape) != (3, size, size) or tuple(vals.shape) != (3,) or tuple(vecs.shape) != (3, 3):
            raise DataError(stats_path, f"holds shapes that do not fit size {size}; prepare the data again")
        # split files: sizes must match the counts
        isz = size * size * 3
        for name, s in splits.items():
            n, enc = int(s["count"]), s.get("encoding", "raw")
            f = path / (name + (".images" if enc == "raw" else ".jpeg"))
            for must in (f, path / f"{name}.labels.npy") + ((path / f"{name}.offsets.npy",) if enc == "jpeg" else ()):
                if not must.exists():
                    raise DataError(must, f"is missing (split '{name}'); prepare the data again")
            if enc == "raw" and f.stat().st_size != n * isz:
                raise DataError(f, f"has {f.stat().st_size} bytes, expected {n} images x {isz} = {n * isz}; "
                                   "the file is truncated or from another preparation: prepare the data again")
        return cls(path, meta, mean.float(), vals.float(), vecs.float())

    def split(self, name: str) -> PreparedSplit:
        if name not in self.meta["splits"]:
            raise DataError(self.path, f"has no split '{name}' (it has: {', '.join(self.splits)})")
        if name not in self._split_cache:
            s = self.meta["splits"][name]
            self._split_cache[name] = PreparedSplit(self, name, int(s["count"]), s.get("encoding", "raw"))
        return self._split_cache[name]

    def __contains__(self, name: str) -> bool:
        return name in self.meta["splits"]
