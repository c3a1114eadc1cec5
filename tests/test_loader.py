"""BatchLoader: deterministic order, sharding across ranks, resuming, evaluation without duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.data.loader import BatchLoader, epoch_order, num_batches
from alexnet.data.prepared import PreparedData

S = 4


def make_prepared(root: Path, n: int, size: int = S, splits=("train",)) -> PreparedData:
    """A prepared folder written by hand from the format spec: image i holds (i % 256, i // 256, 7)."""
    from safetensors.numpy import save_file

    root.mkdir(parents=True, exist_ok=True)
    meta = {"format": "alexnet-prepared", "version": 1, "size": size, "classes": [f"c{k}" for k in range(5)],
            "class_names": [f"class {k}" for k in range(5)], "pixel_scale": "0-255", "splits": {},
            "stats_split": splits[0], "skipped": 0}
    for s in splits:
        img = np.zeros((n, size, size, 3), np.uint8)
        img[..., 0] = (np.arange(n) % 256)[:, None, None]
        img[..., 1] = (np.arange(n) // 256)[:, None, None]
        img[..., 2] = 7
        img.tofile(root / f"{s}.images")
        np.save(root / f"{s}.labels.npy", np.arange(n, dtype=np.int64) % 5)
        meta["splits"][s] = {"count": n, "encoding": "raw"}
    save_file({"mean": np.zeros((3, size, size), np.float32), "pca_eigvals": np.ones(3, np.float32),
               "pca_eigvecs": np.eye(3, dtype=np.float32)}, str(root / "stats.safetensors"))
    (root / "meta.json").write_text(json.dumps(meta))
    return PreparedData.open(root)


def ids(x: torch.Tensor) -> list[int]:
    """Image index encoded in the pixels."""
    return (x[:, 0, 0, 0].long() + 256 * x[:, 1, 0, 0].long()).tolist()


def collect(loader) -> list[list[int]]:
    out = []
    for x, y in loader:
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, S, S) and y.dtype == torch.int64
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(y, torch.tensor(ids(x), dtype=torch.int64) % 5)  # labels travel with images
        out.append(ids(x))
    return out


@pytest.fixture
def split(tmp_path):
    return make_prepared(tmp_path / "p", 103).split("train")


def test_num_batches():
    assert num_batches(103, 10, drop_last=True) == 10
    assert num_batches(103, 10, drop_last=False) == 11
    assert num_batches(100, 10, drop_last=False) == 10
    assert num_batches(5, 10, drop_last=True) == 0


def test_order_is_the_documented_permutation(split):
    loader = BatchLoader(split, 10, shuffle=True, seed=3, epoch=2, drop_last=True, threads=2)
    assert len(loader) == 10
    perm = torch.randperm(103, generator=torch.Generator().manual_seed(3 * 1_000_003 + 2))
    assert torch.equal(epoch_order(103, shuffle=True, seed=3, epoch=2), perm)
    got = collect(loader)
    assert got == [perm[b * 10 : (b + 1) * 10].tolist() for b in range(10)]
    assert collect(BatchLoader(split, 10, shuffle=True, seed=3, epoch=2, drop_last=True)) == got  # deterministic
    assert collect(BatchLoader(split, 10, shuffle=True, seed=3, epoch=3, drop_last=True)) != got  # epochs differ
    assert collect(BatchLoader(split, 10, shuffle=True, seed=4, epoch=2, drop_last=True)) != got  # seeds differ


def test_unshuffled_keeps_order_and_last_partial_batch(split):
    got = collect(BatchLoader(split, 25, shuffle=False, drop_last=False))
    assert [len(b) for b in got] == [25, 25, 25, 25, 3]
    assert sum(got, []) == list(range(103))


@pytest.mark.parametrize("world", [2, 3, 4])
def test_sharding_covers_each_sample_once(split, world):
    kw = dict(shuffle=True, seed=1, epoch=0, drop_last=True)
    single = collect(BatchLoader(split, 12, **kw))
    per_rank = [collect(BatchLoader(split, 12, rank=r, world_size=world, **kw)) for r in range(world)]
    assert all(len(p) == len(single) for p in per_rank)
    for b, glob in enumerate(single):
        joined = sum((per_rank[r][b] for r in range(world)), [])
        assert joined == glob  # contiguous shards of the global batch, in rank order
        sizes = [len(per_rank[r][b]) for r in range(world)]
        assert max(sizes) - min(sizes) <= 1
    seen = sum((sum(p, []) for p in per_rank), [])
    assert len(seen) == len(set(seen)) == 12 * (103 // 12)


def test_start_batch_resumes_the_same_sequence(split):
    kw = dict(shuffle=True, seed=5, epoch=1, drop_last=True)
    full = collect(BatchLoader(split, 8, **kw))
    resumed = BatchLoader(split, 8, start_batch=4, **kw)
    assert len(resumed) == len(full) - 4
    assert collect(resumed) == full[4:]
    # resume on 2 ranks what 1 rank started: the global positions do not depend on the world size
    parts = [collect(BatchLoader(split, 8, start_batch=4, rank=r, world_size=2, **kw)) for r in range(2)]
    assert [a + b for a, b in zip(*parts)] == full[4:]
    with pytest.raises(ValueError):
        BatchLoader(split, 8, start_batch=99, **kw)


@pytest.mark.parametrize("world", [2, 3, 7])
def test_eval_sharding_without_duplicates(split, world):
    loaders = [BatchLoader(split, 10, shuffle=False, drop_last=False, rank=r, world_size=world) for r in range(world)]
    assert len({len(lo) for lo in loaders}) == 1  # every rank runs the same number of batches
    seen = sum((sum(collect(lo), []) for lo in loaders), [])
    assert sorted(seen) == list(range(103))  # each image counted exactly once, no padding


def test_subset_split(split):
    sub = split.subset(torch.arange(0, 103, 2))
    got = sum(collect(BatchLoader(sub, 16, shuffle=True, seed=0, drop_last=False)), [])
    assert sorted(got) == list(range(0, 103, 2))


def test_early_break_and_errors(split):
    loader = BatchLoader(split, 4, shuffle=True, seed=0, drop_last=True, prefetch=1)
    for i, _ in enumerate(loader):
        if i == 2:
            break  # the reader thread stops; nothing hangs

    class Broken:
        size, labels = S, torch.zeros(10, dtype=torch.int64)

        def __len__(self):
            return 10

        def read(self, idx, out=None):
            raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        for _ in BatchLoader(Broken(), 4):
            pass


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pinned(split):
    loader = BatchLoader(split, 10, shuffle=True, seed=0, drop_last=False, device="cuda")
    assert loader.pin_memory
    got = []
    for x, y in loader:
        assert x.is_cuda and y.is_cuda and x.is_contiguous(memory_format=torch.channels_last)
        got += ids(x.cpu())
    assert sorted(got) == list(range(103))
