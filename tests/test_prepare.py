"""prepare(): decoding, geometry, statistics, bad input, resuming; and the prepared-folder reader."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import random_image, write_image

import alexnet.data.prepare as prep
from alexnet.data.prepare import decode_image_file, load_image, prepare
from alexnet.data.prepared import PreparedData, is_prepared
from alexnet.errors import DataError


def _stored(out: Path, split: str) -> np.ndarray:
    meta = json.loads((out / "meta.json").read_text())
    S, n = meta["size"], meta["splits"][split]["count"]
    return np.fromfile(out / f"{split}.images", dtype=np.uint8).reshape(n, S, S, 3)


def _jpeg_bytes(arr: np.ndarray, mode: str | None = None, quality: int = 95) -> bytes:
    from PIL import Image

    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    b = io.BytesIO()
    im.save(b, "JPEG", quality=quality)
    return b.getvalue()


# ---------------------------------------------------------------------------- format and geometry


def test_prepare_format(image_tree, tmp_path):
    out = prepare(image_tree, tmp_path / "out", size=16, workers=1, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == "alexnet-prepared" and meta["version"] == 1 and meta["size"] == 16
    assert meta["classes"] == ["cat", "dog", "n01440764"]
    assert meta["class_names"] == ["cat", "dog", "tench"]
    assert meta["pixel_scale"] == "0-255" and meta["stats_split"] == "train" and meta["skipped"] == 0
    assert meta["splits"]["train"] == {"count": 12, "encoding": "raw", "skipped": 0}
    assert meta["splits"]["val"]["count"] == 6
    assert (out / "train.images").stat().st_size == 12 * 16 * 16 * 3
    labels = np.load(out / "train.labels.npy")
    assert labels.dtype == np.int64 and labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    files = (out / "train.files.txt").read_text().splitlines()
    assert files[0] == "train/cat/img0.JPEG" and len(files) == 12
    # every stored image is the decoded, rescaled, centre-cropped source
    arr = _stored(out, "train")
    for i, f in enumerate(files):
        np.testing.assert_array_equal(arr[i], load_image(image_tree / f, 16))
    assert not (out / ".partial").exists() and not (out / "skipped.txt").exists()
    assert is_prepared(out)


def test_center_crop_and_resize(tmp_path):
    from PIL import Image
    from torchvision.transforms.v2.functional import center_crop, resize

    rng = np.random.default_rng(1)
    wide = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    p = write_image(tmp_path / "wide.png", wide)
    np.testing.assert_array_equal(load_image(p, 20), wide[:, 5:25])  # no rescale: pure centre crop
    tall = rng.integers(0, 256, (31, 20, 3), dtype=np.uint8)
    p = write_image(tmp_path / "tall.png", tall)
    np.testing.assert_array_equal(load_image(p, 20), tall[6:26])  # round((31-20)/2) = 6 (torchvision's)

    big = random_image(rng, 60, 90) + rng.integers(0, 20, (60, 90, 3), dtype=np.uint8)
    p = write_image(tmp_path / "big.png", big)
    got = load_image(p, 20)
    t = torch.from_numpy(big).permute(2, 0, 1)
    want = center_crop(resize(t, 20, antialias=True), 20).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, want)
    pil = np.asarray(Image.fromarray(big).resize((30, 20), Image.BILINEAR))[:, 5:25]
    assert np.abs(got.astype(int) - pil.astype(int)).max() <= 2  # antialiased like PIL

    small = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)  # smaller than size: upscaled
    p = write_image(tmp_path / "small.png", small)
    assert load_image(p, 16).shape == (16, 16, 3)


def test_mean_and_pca_match_numpy(image_tree, tmp_path):
    out = prepare(image_tree, tmp_path / "out", size=16, workers=1, progress=False)
    data = PreparedData.open(out)
    arr = _stored(out, "train").astype(np.float64)  # stats come from train only
    np.testing.assert_allclose(data.mean.numpy(), arr.mean(axis=0).transpose(2, 0, 1), rtol=0, atol=1e-4)
    pix = arr.reshape(-1, 3)
    cov = np.cov(pix, rowvar=False, bias=True)
    vals, vecs = np.linalg.eigh(cov)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    np.testing.assert_allclose(data.pca_eigvals.numpy(), vals, rtol=1e-5)
    got = data.pca_eigvecs.numpy().astype(np.float64)
    for j in range(3):
        s = np.sign(got[:, j] @ vecs[:, j])
        np.testing.assert_allclose(got[:, j], s * vecs[:, j], atol=1e-5)
    np.testing.assert_allclose(got.T @ got, np.eye(3), atol=1e-5)
    assert data.pca_eigvals[0] >= data.pca_eigvals[1] >= data.pca_eigvals[2] >= 0


def test_stats_from_first_split_without_train(image_tree, tmp_path):
    out = prepare(image_tree, tmp_path / "out", size=8, splits=["val"], workers=1, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["stats_split"] == "val" and list(meta["splits"]) == ["val"]
    data = PreparedData.open(out)
    np.testing.assert_allclose(data.mean.numpy(), _stored(out, "val").mean(0).transpose(2, 0, 1), atol=1e-4)


def test_workers_pool_equals_in_process(image_tree, tmp_path):
    a = prepare(image_tree, tmp_path / "a", size=12, workers=1, chunk_size=5, progress=False)
    b = prepare(image_tree, tmp_path / "b", size=12, workers=2, chunk_size=5, progress=False)
    for name in ("train.images", "val.images", "train.labels.npy", "stats.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_jpeg_encoding(image_tree, tmp_path):
    raw = PreparedData.open(prepare(image_tree, tmp_path / "raw", size=16, workers=1, progress=False))
    jpg = PreparedData.open(prepare(image_tree, tmp_path / "jpg", size=16, workers=1, progress=False,
                                    encoding="jpeg"))
    assert jpg.meta["splits"]["train"]["encoding"] == "jpeg"
    a, b = raw.split("train").read([3, 0, 7]), jpg.split("train").read([3, 0, 7])
    assert b.shape == a.shape == (3, 3, 16, 16) and b.dtype == torch.uint8
    assert (a.float() - b.float()).abs().mean() < 6  # quality 90 re-encoding
    assert torch.equal(raw.mean, jpg.mean)  # statistics come from the decoded pixels, before encoding


def test_store_jpeg_optimised_huffman_tables_are_lossless_and_smaller():
    """The store's JPEGs (optimised Huffman tables, through PIL) decode to exactly the pixels of
    torchvision's encoder at the same quality (standard tables), in fewer bytes."""
    from alexnet.data.decode import decode_store_jpeg, encode_store_jpeg

    rng = np.random.default_rng(0)  # smooth random images: photo-like content for JPEG
    images = [np.clip(np.cumsum(rng.integers(-9, 10, (64, 64, 3)), axis=1) + 128, 0, 255).astype(np.uint8)
              for _ in range(12)]
    opt_total = std_total = 0
    for i, img in enumerate(images):
        for q in (75, 90):
            opt, std = encode_store_jpeg(img, q), encode_store_jpeg(img, q, optimize=False)
            assert opt[:2] == b"\xff\xd8" and opt != std
            a, b = (decode_store_jpeg(torch.frombuffer(bytearray(x), dtype=torch.uint8), 64, "s", i) for x in (opt, std))
            assert torch.equal(a, b), (i, q)
            opt_total, std_total = opt_total + len(opt), std_total + len(std)
    assert opt_total < 0.99 * std_total


# ---------------------------------------------------------------------------- decoding odd files


def test_decode_grayscale_cmyk_png_named_jpeg(tmp_path):
    from PIL import Image

    rgb = random_image(np.random.default_rng(3), 24, 32)
    gray = (rgb.astype(int).sum(-1) // 3).astype(np.uint8)
    (tmp_path / "gray.JPEG").write_bytes(_jpeg_bytes(gray))
    g = decode_image_file(tmp_path / "gray.JPEG")
    assert g.shape == (3, 24, 32) and g.dtype == torch.uint8
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    assert (g[0].int() - torch.from_numpy(gray).int()).abs().float().mean() < 2

    (tmp_path / "cmyk.JPEG").write_bytes(_jpeg_bytes(rgb, "CMYK"))
    assert Image.open(tmp_path / "cmyk.JPEG").mode == "CMYK"
    c = decode_image_file(tmp_path / "cmyk.JPEG").permute(1, 2, 0).numpy()
    assert c.shape == (24, 32, 3)
    np.testing.assert_array_equal(c, np.asarray(Image.open(tmp_path / "cmyk.JPEG").convert("RGB")))
    assert np.abs(c.astype(int) - rgb.astype(int)).mean() < 3  # not inverted

    write_image(tmp_path / "png.JPEG", rgb, fmt="PNG")  # a PNG with a .JPEG name (ImageNet has one)
    np.testing.assert_array_equal(decode_image_file(tmp_path / "png.JPEG").permute(1, 2, 0).numpy(), rgb)

    rgba = np.concatenate([rgb, np.full((24, 32, 1), 128, np.uint8)], -1)
    write_image(tmp_path / "rgba.png", rgba, fmt="PNG")
    np.testing.assert_array_equal(decode_image_file(tmp_path / "rgba.png").permute(1, 2, 0).numpy(), rgb)
    write_image(tmp_path / "x.bmp", rgb, fmt="BMP")
    np.testing.assert_array_equal(decode_image_file(tmp_path / "x.bmp").permute(1, 2, 0).numpy(), rgb)
    write_image(tmp_path / "x.webp", rgb, fmt="WEBP", lossless=True)
    np.testing.assert_array_equal(decode_image_file(tmp_path / "x.webp").permute(1, 2, 0).numpy(), rgb)


def test_prepare_odd_but_valid_files(tmp_path):
    rgb = random_image(np.random.default_rng(4), 20, 20)
    root = tmp_path / "src"
    write_image(root / "train" / "a" / "ok.jpg", rgb, fmt="JPEG")
    (root / "train" / "a" / "gray.JPEG").write_bytes(_jpeg_bytes(rgb[..., 0]))
    (root / "train" / "b" / "cmyk.JPEG").parent.mkdir(parents=True)
    (root / "train" / "b" / "cmyk.JPEG").write_bytes(_jpeg_bytes(rgb, "CMYK"))
    write_image(root / "train" / "b" / "png.JPEG", rgb, fmt="PNG")
    out = prepare(root, tmp_path / "out", size=20, workers=1, progress=False)
    arr = _stored(out, "train")
    assert arr.shape == (4, 20, 20, 3)
    files = (out / "train.files.txt").read_text().splitlines()
    assert files == ["train/a/gray.JPEG", "train/a/ok.jpg", "train/b/cmyk.JPEG", "train/b/png.JPEG"]
    np.testing.assert_array_equal(arr[3], rgb)
    assert np.abs(arr[2].astype(int) - rgb.astype(int)).mean() < 3


# ---------------------------------------------------------------------------- bad input


def _bad_tree(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    rng = np.random.default_rng(5)
    root = tmp_path / "src"
    for i in range(3):
        write_image(root / "train" / "a" / f"{i}.jpg", random_image(rng, 12, 14), fmt="JPEG")
        write_image(root / "train" / "b" / f"{i}.jpg", random_image(rng, 12, 14), fmt="JPEG")
    bad = root / "train" / "b" / "1.jpg"
    if kind == "zero":
        bad.write_bytes(b"")
    elif kind == "truncated":
        data = _jpeg_bytes(random_image(rng, 64, 64))
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        bad.write_text("this is not an image, just text with a .jpg name\n" * 5)
    elif kind == "garbage_jpeg":  # a JPEG header followed by junk
        bad.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    return root, bad


@pytest.mark.parametrize("kind,problem", [("zero", "empty file"), ("truncated", "truncated"),
                                          ("text", "not an image"), ("garbage_jpeg", "corrupt")])
def test_bad_file_stops_with_its_name(tmp_path, kind, problem):
    root, bad = _bad_tree(tmp_path, kind)
    with pytest.raises(DataError) as e:
        prepare(root, tmp_path / "out", size=8, workers=1, progress=False)
    msg = str(e.value)
    assert e.value.path == str(bad) and problem in msg and "skip" in msg and "\n" not in msg
    assert not (tmp_path / "out" / "meta.json").exists()


def test_bad_file_stops_with_workers(tmp_path):
    root, bad = _bad_tree(tmp_path, "truncated")
    with pytest.raises(DataError) as e:
        prepare(root, tmp_path / "out", size=8, workers=2, chunk_size=2, progress=False)
    assert e.value.path == str(bad)


def test_skip_bad(tmp_path):
    root, bad = _bad_tree(tmp_path, "zero")
    (root / "train" / "a" / "0.jpg").write_text("not an image")  # a hole that is filled from the tail
    out = prepare(root, tmp_path / "out", size=8, workers=1, chunk_size=2, skip_bad=True, progress=False)
    lines = (out / "skipped.txt").read_text().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["train/a/0.jpg", "train/b/1.jpg"]
    assert "empty file" in lines[1] and "not an image" in lines[0]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["skipped"] == 2 and meta["splits"]["train"]["count"] == 4
    files = (out / "train.files.txt").read_text().splitlines()
    assert sorted(files) == ["train/a/1.jpg", "train/a/2.jpg", "train/b/0.jpg", "train/b/2.jpg"]
    arr = _stored(out, "train")
    labels = np.load(out / "train.labels.npy")
    for i, f in enumerate(files):
        np.testing.assert_array_equal(arr[i], load_image(root / f, 8))
        assert labels[i] == (0 if "/a/" in f else 1)
    data = PreparedData.open(out)
    np.testing.assert_allclose(data.mean.numpy(), arr.mean(0).transpose(2, 0, 1), atol=1e-4)


def test_bad_file_then_skip_bad_resumes(tmp_path):
    root, bad = _bad_tree(tmp_path, "text")  # train/b/1.jpg: image 4, chunk 2 with chunk_size 2
    done = []
    with pytest.raises(DataError):
        prepare(root, tmp_path / "out", size=8, workers=1, chunk_size=2, progress=False,
                on_chunk=lambda s, k: done.append(k))
    assert done == [0, 1]
    again = []
    prepare(root, tmp_path / "out", size=8, workers=1, chunk_size=2, progress=False, skip_bad=True,
            on_chunk=lambda s, k: again.append(k))
    assert again == [2]
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["skipped"] == 1


# ---------------------------------------------------------------------------- resuming


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("merge_every", [64, 2])
def test_resume_does_not_redo_chunks(image_tree, tmp_path, monkeypatch, merge_every):
    monkeypatch.setattr(prep, "MERGE_EVERY", merge_every)
    clean = prepare(image_tree, tmp_path / "clean", size=12, workers=1, chunk_size=2, progress=False)

    first = []

    def stop_after_5(split, k):
        first.append((split, k))
        if len(first) == 5:
            raise Interrupt

    out = tmp_path / "out"
    with pytest.raises(Interrupt):
        prepare(image_tree, out, size=12, workers=1, chunk_size=2, progress=False, on_chunk=stop_after_5)
    assert not (out / "meta.json").exists() and (out / ".partial").is_dir()
    with pytest.raises(DataError, match="did not finish"):
        PreparedData.open(out)

    second = []
    prepare(image_tree, out, size=12, workers=1, chunk_size=2, progress=False,
            on_chunk=lambda s, k: second.append((s, k)))
    all_chunks = {("train", k) for k in range(6)} | {("val", k) for k in range(3)}
    assert set(first) | set(second) == all_chunks and not set(first) & set(second)
    for name in ("train.images", "val.images", "train.labels.npy", "val.labels.npy", "stats.safetensors",
                 "train.files.txt"):
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name
    m1, m2 = (json.loads((d / "meta.json").read_text()) for d in (out, clean))
    m1.pop("created"), m2.pop("created")
    assert m1 == m2
    assert not (out / ".partial").exists()

    # a third run finds the folder complete and does nothing
    third = []
    prepare(image_tree, out, size=12, workers=1, chunk_size=2, progress=False, on_chunk=lambda s, k: third.append(k))
    assert third == []


def test_resume_after_source_changed_redoes_that_split(image_tree, tmp_path):
    out = tmp_path / "out"
    calls = []

    def stop(split, k):
        calls.append((split, k))
        if split == "val":
            raise Interrupt

    with pytest.raises(Interrupt):
        prepare(image_tree, out, size=8, workers=1, chunk_size=4, progress=False, on_chunk=stop)
    write_image(image_tree / "val" / "cat" / "img9.png", random_image(np.random.default_rng(9), 9, 9))
    again = []
    prepare(image_tree, out, size=8, workers=1, chunk_size=4, progress=False, on_chunk=lambda s, k: again.append((s, k)))
    assert again == [("val", 0), ("val", 1)]  # train was finished and unchanged
    assert json.loads((out / "meta.json").read_text())["splits"]["val"]["count"] == 7


def test_existing_output_checks(image_tree, tmp_path):
    out = prepare(image_tree, tmp_path / "out", size=8, workers=1, progress=False)
    with pytest.raises(DataError, match="another source or other options"):
        prepare(image_tree, out, size=10, workers=1, progress=False)
    other = tmp_path / "busy"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        prepare(image_tree, other, size=8, workers=1, progress=False)
    with pytest.raises(DataError, match="encoding"):
        prepare(image_tree, tmp_path / "x", encoding="png")


# ---------------------------------------------------------------------------- the reader


def test_reader(image_tree, tmp_path):
    out = prepare(image_tree, tmp_path / "out", size=16, workers=1, progress=False)
    data = PreparedData.open(out)
    assert data.size == 16 and data.classes == ["cat", "dog", "n01440764"] and data.splits == ["train", "val"]
    assert data.class_names[2] == "tench"
    assert data.mean.dtype == torch.float32 and data.mean.shape == (3, 16, 16)
    assert data.pca_eigvals.shape == (3,) and data.pca_eigvecs.shape == (3, 3)
    tr = data.split("train")
    assert len(tr) == 12 and tr.labels.dtype == torch.int64
    arr = _stored(out, "train")
    x = tr.read(torch.tensor([7, 2, 11, 2]))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.uint8
    assert x.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(x.permute(0, 2, 3, 1).numpy(), arr[[7, 2, 11, 2]])

    sub = tr.subset([1, 5, 9])
    assert len(sub) == 3 and sub.labels.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(sub.read([2, 0]).permute(0, 2, 3, 1).numpy(), arr[[9, 1]])
    assert sub.subset([2]).labels.tolist() == [2]
    rest, held = tr.holdout(0.25, seed=3)
    assert len(rest) == 9 and len(held) == 3
    assert sorted(rest._index.tolist() + held._index.tolist()) == list(range(12))
    assert tr.holdout(0.25, seed=3)[1]._index.tolist() == held._index.tolist()
    with pytest.raises(DataError, match="no split 'test'"):
        data.split("test")


def test_reader_errors(image_tree, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        PreparedData.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a prepared data folder"):
        PreparedData.open(tmp_path / "empty")
    assert not is_prepared(tmp_path / "empty")

    out = prepare(image_tree, tmp_path / "out", size=8, workers=1, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "version": 2}))
    with pytest.raises(DataError, match="version 2"):
        PreparedData.open(out)
    (out / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="corrupt"):
        PreparedData.open(out)
    (out / "meta.json").write_text(json.dumps(meta))
    PreparedData.open(out)
    with open(out / "val.images", "r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match="truncated"):
        PreparedData.open(out)
    (out / "val.images").unlink()
    with pytest.raises(DataError, match="missing"):
        PreparedData.open(out)
    (out / "stats.safetensors").write_bytes(b"junk")
    with pytest.raises(DataError, match="stats.safetensors"):
        PreparedData.open(out)


# ---------------------------------------------------------------------------- real photos


def test_real_imagenet_sample(shared_data, tmp_path):
    """The 220 ImageNet photos (20 grayscale) arranged as val/<wnid>/: human class names, RGB."""
    from PIL import Image

    sample = shared_data / "imagenet-sample"
    files = sorted(sample.glob("*.JPEG"))
    assert len(files) == 220
    root = tmp_path / "imagenet"
    for f in files:
        wnid = f.name.split("_", 1)[0]
        (root / "val" / wnid).mkdir(parents=True, exist_ok=True)
        (root / "val" / wnid / f.name).symlink_to(f)
    out = prepare(root, tmp_path / "out", size=64, workers=2, progress=False)
    data = PreparedData.open(out)
    assert len(data.classes) == 220 and len(data.split("val")) == 220
    names = dict(zip(data.classes, data.class_names))
    assert names["n01440764"] == "tench"
    assert sum(n != w for w, n in names.items()) == 220  # every wnid got a human name
    agree = sum(names[f.stem.split("_", 1)[0]].replace(" ", "_") == f.stem.split("_", 1)[1] for f in files)
    assert agree == 220  # the file names spell the same names
    gray = [i for i, f in enumerate(files) if Image.open(f).mode == "L"]
    assert len(gray) >= 20  # README: 20; PIL reports 23 files as mode L
    x = data.split("val").read(gray).int()
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    assert data.pca_eigvals[0] > data.pca_eigvals[1] > data.pca_eigvals[2] > 0
