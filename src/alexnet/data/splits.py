"""Opening a run's data: an `alexnet prepare` folder as it is, or image folders prepared once into
the run; and its train / validation / test splits."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from alexnet.data.prepare import prepare
from alexnet.data.prepared import PreparedData, is_prepared
from alexnet.errors import DataError

__all__ = ["open_prepared", "split_train_val"]


def open_prepared(source, cache: Path, size: int, crop: int, *, workers=None, skip_bad=False, progress=True,
                  writer: bool = True, log=print) -> PreparedData:
    """`source` if it is prepared; else image folders prepared into `cache` (by the `writer`
    process only: the others, under torchrun, wait for it on the file system, not in a collective
    whose timeout would end the run)."""
    src = Path(source)
    if not src.exists():
        raise DataError(src, "no such file or directory")
    if is_prepared(src):
        data = PreparedData.open(src)
    else:
        if writer:
            log(f"preparing {src} -> {cache} ({size}x{size}); resumes if interrupted")
            prepare(src, cache, size=size, workers=workers, skip_bad=skip_bad, progress=progress)
        while not is_prepared(cache):
            time.sleep(2.0)
        data = PreparedData.open(cache)
    if data.size < crop:
        raise DataError(src, f"prepared images are {data.size}x{data.size}, smaller than the {crop} crop")
    return data


def split_train_val(data: PreparedData, where, val_split: str | None = None, val_fraction: float = 0.1,
                    test_split: str | None = None):
    """(train, val, test, val_name, test_name): val is the named split, else "val", else a fixed
    held-out part of train (seed-independent, so runs with different seeds validate on the same images)."""
    names = list(data.splits)
    if "train" not in names:
        raise DataError(where, f"no 'train' split (found: {', '.join(names) or 'none'})")
    train = data.split("train")
    val_name = val_split or ("val" if "val" in names else None)
    if val_name is not None:
        if val_name not in names:
            raise DataError(where, f"no {val_name!r} split (found: {', '.join(names)})")
        val = data.split(val_name)
    else:
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(12345))
        n_val = max(1, int(round(len(train) * val_fraction)))
        val, train = train.subset(perm[:n_val].sort().values), train.subset(perm[n_val:].sort().values)
        val_name = f"train[held-out {val_fraction:g}]"
    test_name = test_split or ("test" if "test" in names else None)
    if test_name is not None and test_name not in names:
        raise DataError(where, f"no {test_name!r} split (found: {', '.join(names)})")
    return train, val, data.split(test_name) if test_name else None, val_name, test_name
