"""prepare() and load_image() facing real-world input: EXIF orientation, many bad files at once,
and being stopped (Ctrl-C, SIGTERM) half-way."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import random_image, write_image

from alexnet.data.decode import decode_image_file, load_image
from alexnet.data.prepare import prepare
from alexnet.errors import DataError

STORE_FILES = ("train.images", "train.labels.npy", "train.files.txt", "stats.safetensors")


def _upright() -> np.ndarray:
    """A picture whose four quadrants have four colours, and a mark in the top-left corner."""
    u = np.zeros((48, 80, 3), np.uint8)
    u[:24, :40], u[:24, 40:], u[24:, :40], u[24:, 40:] = (200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)
    u[:8, :8] = 255
    return u


# PIL's operation that turns the upright picture into what a camera with this tag stores
_STORED_AS = {1: None, 2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
              6: "ROTATE_90", 7: "TRANSVERSE", 8: "ROTATE_270"}


def _oriented_bytes(upright: np.ndarray, tag: int, fmt: str, mode: str = "RGB") -> bytes:
    from PIL import Image

    im = Image.fromarray(upright)
    if _STORED_AS[tag]:
        im = im.transpose(getattr(Image.Transpose, _STORED_AS[tag]))
    exif = Image.Exif()
    exif[0x0112] = tag
    buf = io.BytesIO()
    im.convert(mode).save(buf, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("fmt,mode", [("JPEG", "RGB"), ("PNG", "RGB"), ("JPEG", "CMYK")])
def test_exif_orientation_applied(tmp_path, fmt, mode):
    u = _upright()
    tol = 0 if fmt == "PNG" else 6
    for tag in range(1, 9):
        path = tmp_path / f"o{tag}.{fmt.lower()}"
        path.write_bytes(_oriented_bytes(u, tag, fmt, mode))
        got = decode_image_file(path).permute(1, 2, 0).numpy()
        assert got.shape == u.shape, tag
        assert np.abs(got.astype(int) - u.astype(int)).mean() <= tol, tag
        # predict's loader: the same picture, upright, then cropped
        np.testing.assert_allclose(load_image(path, 48).astype(int), load_image(tmp_path / f"o1.{fmt.lower()}", 48),
                                   atol=40 if tol else 0)


def test_read_photo_names_a_bad_file(tmp_path):
    from alexnet.data.decode import read_photo

    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))
    with pytest.raises(DataError) as e:
        read_photo(tmp_path / "x.jpg", 16)
    assert e.value.path == str(tmp_path / "x.jpg") and "not an image" in str(e.value) and "\n" not in str(e.value)
    ok = write_image(tmp_path / "ok.png", random_image(np.random.default_rng(0), 20, 30))
    assert read_photo(ok, 16).shape == (16, 16, 3)


def test_prepare_stores_photos_upright(tmp_path):
    u = _upright()
    for tag in range(1, 9):
        p = tmp_path / "src" / "train" / "a" / f"o{tag}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_oriented_bytes(u, tag, "JPEG"))
    out = prepare(tmp_path / "src", tmp_path / "out", size=24, workers=1, progress=False)
    arr = np.fromfile(out / "train.images", np.uint8).reshape(8, 24, 24, 3).astype(int)
    for i in range(8):  # all eight stored upright: red top-left, yellow bottom-right (of the central square)
        assert np.abs(arr[i, 2, 2] - (200, 30, 30)).max() < 12 and np.abs(arr[i, -3, -3] - (220, 220, 40)).max() < 12, i


# ---------------------------------------------------------------------------- bad files


def _tree_with_bad_files(root: Path) -> list[str]:
    """24 images in 3 classes, 4 of them bad (of 4 kinds, in 3 different chunks of 4)."""
    rng = np.random.default_rng(11)
    for i in range(24):
        write_image(root / "train" / f"c{i % 3}" / f"{i:02d}.jpg", random_image(rng, 20, 26), fmt="JPEG")
    bad = {"train/c0/00.jpg": b"", "train/c1/04.jpg": b"not an image\n" * 3,
           "train/c2/14.jpg": b"\xff\xd8\xff\xe0" + os.urandom(200)}
    for name, data in bad.items():
        (root / name).write_bytes(data)
    whole = (root / "train/c0/21.jpg").read_bytes()
    (root / "train/c0/21.jpg").write_bytes(whole[: len(whole) // 2])
    return sorted(bad) + ["train/c0/21.jpg"]


def test_all_bad_files_named_in_one_pass(tmp_path):
    root = tmp_path / "src"
    bad = sorted(_tree_with_bad_files(root))
    recorded = []
    with pytest.raises(DataError) as e:
        prepare(root, tmp_path / "out", size=8, workers=2, chunk_size=4, progress=False,
                on_chunk=lambda s, k: recorded.append(k))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{root}: 4 images cannot be read")
    assert all(name in msg for name in bad) and "skip-bad" in msg
    listing = (tmp_path / "out" / "bad-images.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in listing] == bad
    problems = dict(line.split("\t") for line in listing)
    assert problems["train/c0/00.jpg"].startswith("empty file") and "not an image" in problems["train/c1/04.jpg"]
    assert "truncated" in problems["train/c0/21.jpg"] and "corrupt" in problems["train/c2/14.jpg"]
    # the chunks without bad files are kept: fixing the files redoes only the other ones
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))
    bad_chunks = {files.index(b) // 4 for b in bad}
    assert sorted(recorded) == sorted(set(range(6)) - bad_chunks)
    rng = np.random.default_rng(12)
    for name in bad:
        write_image(root / name, random_image(rng, 20, 26), fmt="JPEG")
    again = []
    prepare(root, tmp_path / "out", size=8, workers=2, chunk_size=4, progress=False,
            on_chunk=lambda s, k: again.append(k))
    assert sorted(again) == sorted(bad_chunks)
    assert not (tmp_path / "out" / "bad-images.txt").exists()
    clean = prepare(root, tmp_path / "clean", size=8, workers=1, chunk_size=4, progress=False)
    for name in STORE_FILES:
        assert (tmp_path / "out" / name).read_bytes() == (clean / name).read_bytes(), name


def test_skip_bad_prints_a_summary(tmp_path, capfd):
    root = tmp_path / "src"
    _tree_with_bad_files(root)
    out = prepare(root, tmp_path / "out", size=8, workers=1, chunk_size=4, skip_bad=True, progress=True)
    err = capfd.readouterr().err
    assert f"skipped 4 unreadable images, listed in {out / 'skipped.txt'}" in err
    assert "20 images in" not in err and "24 images in" in err and "images/s" in err  # the rate at the end
    assert len((out / "skipped.txt").read_text().splitlines()) == 4


# ---------------------------------------------------------------------------- stopping half-way


def _photos(root: Path, n: int, size=(60, 80)) -> Path:
    rng = np.random.default_rng(3)
    for i in range(n):
        img = random_image(rng, *size) + rng.integers(0, 40, size + (3,), dtype=np.uint8)
        write_image(root / "train" / f"c{i % 4}" / f"{i:04d}.png", img)
    return root


def test_sigterm_keeps_finished_chunks(tmp_path):
    src = _photos(tmp_path / "src", 40)
    before = signal.getsignal(signal.SIGTERM)
    done = []

    def terminate_after_three(split, k):
        done.append(k)
        if len(done) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` would

    with pytest.raises(KeyboardInterrupt):
        prepare(src, tmp_path / "out", size=16, workers=2, chunk_size=4, progress=False,
                on_chunk=terminate_after_three)
    assert signal.getsignal(signal.SIGTERM) is before
    assert not (tmp_path / "out" / "meta.json").exists()
    again = []
    prepare(src, tmp_path / "out", size=16, workers=2, chunk_size=4, progress=False,
            on_chunk=lambda s, k: again.append(k))
    assert len(again) == 10 - len(done) and not set(again) & set(done)
    clean = prepare(src, tmp_path / "clean", size=16, workers=1, chunk_size=4, progress=False)
    for name in STORE_FILES:
        assert (tmp_path / "out" / name).read_bytes() == (clean / name).read_bytes(), name


@pytest.mark.slow
def test_ctrl_c_stops_within_seconds_and_resumes(tmp_path):
    src = _photos(tmp_path / "src", 600, size=(300, 400))
    out = tmp_path / "out"
    # 0.1 s a chunk in the main process (75 chunks: at least 7.5 s), so that Ctrl-C always lands in the
    # middle of the run. Ctrl-C's handler set as a terminal gives it: a shell running the tests in the
    # background (`pytest &`) starts them with SIGINT ignored, and the child would inherit that.
    script = textwrap.dedent(f"""
        import signal, time
        from alexnet.data.prepare import prepare
        if __name__ == "__main__":
            signal.signal(signal.SIGINT, signal.default_int_handler)
            prepare({str(src)!r}, {str(out)!r}, size=64, workers=2, chunk_size=8, progress=False,
                    on_chunk=lambda split, chunk: time.sleep(0.1))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
    try:
        records = out / ".partial" / "train"
        deadline = time.monotonic() + 120
        while len(list(records.glob("chunk-*.npz"))) < 2:
            assert p.poll() is None and time.monotonic() < deadline, "prepare ended before it could be stopped"
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGINT)
        t0 = time.monotonic()
        p.wait(10)
        stopped = time.monotonic() - t0
    finally:
        p.kill()
    assert p.returncode != 0 and stopped < 3.0, (p.returncode, stopped)
    assert not (out / "meta.json").exists()
    with np.load(records / "base.npz") as z:  # the records, folded together when it stopped
        done = z["done"].astype(bool)
    for rec in records.glob("chunk-*.npz"):  # a chunk recorded after the fold is kept too
        with np.load(rec) as z:
            done[int(z["chunk"])] = True
    kept = int(done.sum())
    assert 2 <= kept < 75
    again = []
    prepare(src, out, size=64, workers=2, chunk_size=8, progress=False, on_chunk=lambda s, k: again.append(k))
    assert len(again) == 75 - kept
    clean = prepare(src, tmp_path / "clean", size=64, workers=2, chunk_size=8, progress=False)
    for name in STORE_FILES:
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name


def test_concatenation_resumes_and_frees_the_chunks(tmp_path, monkeypatch):
    """The JPEG chunks are joined into one file group by group, deleted as they go in; a run stopped
    in the middle goes on from the last group on disk."""
    import shutil

    import alexnet.data.prepare_state as S

    rng = np.random.default_rng(0)
    blobs = []
    for k in range(7):
        blobs.append(tmp_path / f"blob-{k}.jpg")
        blobs[-1].write_bytes(rng.integers(0, 256, 100 + 37 * k, dtype=np.uint8).tobytes())
    whole = b"".join(b.read_bytes() for b in blobs)
    sizes = [b.stat().st_size for b in blobs]
    copy, calls = shutil.copyfileobj, []

    def copy_then_stop(src, dst, length):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        copy(src, dst, length)

    monkeypatch.setattr(S.shutil, "copyfileobj", copy_then_stop)
    target, marker = tmp_path / "all.partial", tmp_path / "marker.json"
    with pytest.raises(KeyboardInterrupt):
        S.concatenate_blobs(blobs, sizes, target, marker, every=2)
    assert [b.exists() for b in blobs] == [False] * 4 + [True] * 3  # two groups in, and gone
    monkeypatch.setattr(S.shutil, "copyfileobj", copy)
    S.concatenate_blobs(blobs, sizes, target, marker, every=2)
    assert target.read_bytes() == whole and not any(b.exists() for b in blobs)
