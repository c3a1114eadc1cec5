"""The store's format, shared by writer and reader; the JPEG encoding's cost in pixels; the replica
store; the loader benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alexnet.data import format as F
from alexnet.data.prepare import prepare
from alexnet.data.prepared import PreparedData
from alexnet.errors import DataError


def test_writer_and_reader_share_the_format(image_tree, tmp_path):
    raw = prepare(image_tree, tmp_path / "raw", size=16, workers=1, progress=False)
    jpg = prepare(image_tree, tmp_path / "jpg", size=16, workers=1, progress=False, encoding="jpeg", quality=75)
    for out, enc in ((raw, "raw"), (jpg, "jpeg")):
        meta, splits = F.read_meta(out)
        assert meta["format"] == F.FORMAT and meta["version"] == F.VERSION
        for name, info in splits.items():
            assert info.encoding == enc and (out / F.images_file(name, enc)).exists()
            assert (out / F.labels_file(name)).exists() and (out / F.files_file(name)).exists()
            assert (out / F.offsets_file(name)).exists() == (enc == "jpeg")
            F.check_split_files(out, meta["size"], info)
    assert "quality" not in json.loads((raw / "meta.json").read_text())["splits"]["train"]
    assert json.loads((jpg / "meta.json").read_text())["splits"]["train"]["quality"] == 75
    assert PreparedData.open(jpg).split("val").quality == 75 and PreparedData.open(raw).split("val").quality is None
    with pytest.raises(DataError, match="other options"):  # another quality is another store
        prepare(image_tree, jpg, size=16, workers=1, progress=False, encoding="jpeg", quality=90)
    prepare(image_tree, jpg, size=16, workers=1, progress=False, encoding="jpeg", quality=75)  # complete: kept


def test_old_and_foreign_stores(image_tree, tmp_path):
    out = prepare(image_tree, tmp_path / "jpg", size=16, workers=1, progress=False, encoding="jpeg")
    meta = json.loads((out / "meta.json").read_text())
    for s in meta["splits"].values():
        del s["quality"]  # written before the quality was recorded: those were all 90
    (out / "meta.json").write_text(json.dumps(meta))
    assert PreparedData.open(out).split("train").quality == 90
    (out / "meta.json").write_text(json.dumps({**meta, "version": 7}))
    with pytest.raises(DataError, match=r"meta.json: is format version 7; this alexnet reads version 1: prepare"):
        PreparedData.open(out)
    (out / "meta.json").write_text(json.dumps({**meta, "splits": {"train": {"count": 3, "encoding": "png"}}}))
    with pytest.raises(DataError, match="malformed"):
        PreparedData.open(out)


def test_encoding_choice(image_tree, tmp_path, monkeypatch):
    assert F.choose_encoding("auto", 1_281_167, 256, "x") == "jpeg"  # ImageNet: 252 GB raw
    assert F.choose_encoding("auto", 60_000, 256, "x") == "raw"  # 11.8 GB
    assert F.choose_encoding("auto", 60_000, 32, "x") == "raw"  # CIFAR-10
    assert F.choose_encoding("raw", 1_281_167, 256, "x") == "raw"
    with pytest.raises(DataError, match="unknown encoding 'png'"):
        F.choose_encoding("png", 1, 1, "x")
    for q in (0, 101, 9.5, True):
        with pytest.raises(DataError, match="quality"):
            prepare(image_tree, tmp_path / "q", size=8, encoding="jpeg", quality=q)
    monkeypatch.setattr(F, "RAW_LIMIT_BYTES", 18 * 8 * 8 * 3 - 1)  # one byte short of the 18 images
    out = prepare(image_tree, tmp_path / "auto", size=8, workers=1, progress=False)
    assert json.loads((out / "meta.json").read_text())["splits"]["train"]["encoding"] == "jpeg"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """30 of the real ImageNet sample photos (links)."""
    from conftest import SHARED_DATA

    files = sorted((SHARED_DATA / "imagenet-sample").glob("*.JPEG"))[::7][:30]
    if len(files) < 30:
        pytest.skip("shared ImageNet sample not present")
    root = tmp_path_factory.mktemp("photos")
    for f in files:
        (root / f.name).symlink_to(f)
    return root


def test_jpeg_error_against_raw(photos):
    """Real photos at 128: JPEG's pixel error shrinks and its size grows with the quality."""
    from alexnet.data.loader_bench import jpeg_table

    rows = {r["quality"]: r for r in jpeg_table(photos, size=128, qualities=(85, 90, 95), repeat=1)}
    assert 1.0 < rows[90]["mae"] < 4.0 and rows[90]["psnr"] > 32
    assert rows[85]["mae"] > rows[90]["mae"] > rows[95]["mae"]
    assert rows[85]["bytes"] < rows[90]["bytes"] < rows[95]["bytes"] < 128 * 128 * 3 / 3


def test_replica_store(photos, tmp_path):
    from alexnet.data.replica import make_replica_store

    out = make_replica_store(photos, tmp_path / "rep", count=300, classes=7, val_count=40, size=32, workers=2,
                             chunk_size=64, stats_every=4, progress=False)
    data = PreparedData.open(out)
    train, val = data.split("train"), data.split("val")
    assert (len(train), len(val), train.encoding, train.quality, data.num_classes) == (300, 40, "jpeg", 90, 7)
    assert train.labels.tolist() == [i % 7 for i in range(300)]
    x = train.read(range(300)).reshape(300, -1)
    assert len({bytes(row.numpy()) for row in x}) == 300  # no two copies alike
    assert data.meta["stats_sample"].startswith("every 4th train image (75 images")
    assert torch.all(data.pca_eigvals > 0) and 40 < data.mean.mean() < 200
    mtime = (out / "meta.json").stat().st_mtime
    make_replica_store(photos, out, count=300, classes=7, val_count=40, size=32, workers=2, chunk_size=64,
                       stats_every=4, progress=False)
    assert (out / "meta.json").stat().st_mtime == mtime  # the same parameters: kept


def test_loader_bench_runs(image_tree, tmp_path, capsys):
    from alexnet.data.loader_bench import measure

    out = prepare(image_tree, tmp_path / "p", size=16, workers=1, progress=False, encoding="jpeg")
    rows = measure(out, batch=4, workers_list=(0, 1), seconds=0.2)
    assert [r["workers"] for r in rows] == [0, 1] and all(r["images_per_s"] > 0 for r in rows)
    # the cores each kind of process kept busy (from /proc): none for workers that do not exist
    assert rows[0]["cores_main"] > 0 and rows[0]["cores_cpu_workers"] == 0
    assert rows[1]["cores_cpu_workers"] > 0 and rows[1]["cores_gpu_workers"] == 0
    assert "jpeg q90" in capsys.readouterr().out
