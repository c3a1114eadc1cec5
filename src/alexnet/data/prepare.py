"""Prepare a dataset once: decode, rescale, centre-crop, store, and compute the colour statistics.

``prepare(src, out)`` reads every image of ``src`` (see :mod:`alexnet.data.layouts`) once, in
worker processes on all cores, applies its EXIF orientation, rescales its short side to ``size``
(antialiased bilinear), keeps the central ``size x size`` square (paper, section 2) and writes the
store described in :mod:`alexnet.data.format`: raw uint8 pixels, or JPEGs of a given quality,
plus the mean image and the RGB covariance's eigen-decomposition over the train split (exact:
:mod:`alexnet.data.stats`, from the pixels before any JPEG encoding).

Encoding ``"auto"`` (the default) stores raw pixels while the raw store stays within
``format.RAW_LIMIT_BYTES`` (32 GB) and JPEG beyond: raw is read with no CPU work but has to stay
in the page cache; ImageNet at 256 is 252 GB raw, 25 GB as JPEG of quality 90 (see
docs/notes-data.md for the measurements behind both).

Resuming: the work is cut into chunks of ``chunk_size`` images (:mod:`alexnet.data.prepare_state`).
A run that is interrupted (Ctrl-C, SIGTERM, a crash, bad files) and started again with the same
source and options does only the chunks not yet recorded, and gives the same output as a clean
run. Ctrl-C or SIGTERM stop the workers at once and keep every finished chunk.

Bad input (empty, truncated, corrupt or non-image files): every image is tried, then the run
stops with one :class:`~alexnet.errors.DataError` naming all bad files (also listed in
``out/bad-images.txt``); with ``skip_bad=True`` they are left out and listed in ``out/skipped.txt``.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np

from alexnet.data import format as F
from alexnet.data.decode import BadImage, decode_image_file, load_image, resize_center_crop  # noqa: F401 (API)
from alexnet.data.format import FORMAT, PARTIAL, VERSION  # noqa: F401 (API)
from alexnet.data.layouts import ImageList, find_splits
from alexnet.data.prepare_chunk import process_chunk
from alexnet.data.prepare_state import SplitState, finish_jpeg, finish_raw, relative
from alexnet.data.stats import color_stats  # noqa: F401 (API)
from alexnet.errors import DataError
from alexnet.runtime import atomic_write_text, remove_stale_temporaries

__all__ = ["prepare", "decode_image_file", "resize_center_crop", "load_image", "BadImage", "FORMAT", "VERSION"]

MERGE_EVERY = 64  # chunk records folded into base.npz every this many chunks
DECODER = 2  # bump when decoding changes the pixels (2: EXIF orientation applied): unfinished runs restart
SHOWN_BAD = 10  # bad files named in the error message; all of them are in bad-images.txt


def _check_args(out, size, chunk_size, quality) -> None:
    if not isinstance(size, int) or size < 1:
        raise DataError(out, f"size must be a positive integer, got {size!r}")
    if not 1 <= chunk_size <= 1_000_000:
        raise DataError(out, f"chunk_size must be in 1..1000000, got {chunk_size}")
    F.check_quality(quality, out)


def _meta_matches(meta: dict, src: Path, size: int, encoding: str, quality: int, lists: dict[str, ImageList]) -> bool:
    if meta.get("format") != FORMAT or meta.get("version") != VERSION or meta.get("size") != size:
        return False
    if meta.get("source") != str(src) or meta.get("classes") != next(iter(lists.values())).classes:
        return False
    for name, lst in lists.items():
        s = meta.get("splits", {}).get(name)
        if not s or s.get("encoding") != encoding or s.get("count", -1) + s.get("skipped", 0) != len(lst):
            return False
        if encoding == "jpeg" and s.get("quality", F.DEFAULT_QUALITY) != quality:
            return False
    return True


def _open_output(out: Path, src: Path, lists: dict, job: dict) -> bool:
    """Check the output folder and start or continue the job there; True if it is already complete."""
    meta_path = out / F.META
    if meta_path.exists():
        meta = F.read_json(meta_path)
        if meta is not None and _meta_matches(meta, src, job["size"], job["encoding"], job.get("quality"), lists):
            shutil.rmtree(out / PARTIAL, ignore_errors=True)
            return True
        raise DataError(out, "already holds prepared data of another source or other options; delete it or "
                             "choose another folder")
    if out.exists():
        if not out.is_dir():
            raise DataError(out, "is a file, expected a folder for the prepared data")
        if any(out.iterdir()) and not (out / PARTIAL).is_dir():
            raise DataError(out, "is not empty and holds no prepared data; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    job_path = out / PARTIAL / "job.json"
    if F.read_json(job_path) != job:
        if (out / PARTIAL).exists():  # an unfinished run with other options: start afresh
            shutil.rmtree(out / PARTIAL)
            for p in list(out.iterdir()):
                if p.is_file() and (any(p.name.endswith(x) for x in (".images", ".images.partial", ".jpeg",
                                    ".jpeg.partial", ".npy", ".files.txt", ".safetensors"))
                                    or p.name in (F.SKIPPED, F.BAD_LIST)):
                    p.unlink()
        (out / PARTIAL).mkdir(parents=True, exist_ok=True)
        atomic_write_text(job_path, json.dumps(job))
    for folder in [out, out / PARTIAL] + [p for p in (out / PARTIAL).iterdir() if p.is_dir()]:
        remove_stale_temporaries(folder)  # left by a writer that was killed
    return False


def _allocate_raw(out: Path, states: dict[str, SplitState], size: int) -> None:
    """Sparse ``<split>.images.partial`` files, after checking that the rest fits on the disk."""
    isz = F.image_bytes(size)
    todo = [st for st in states.values() if not (out / F.images_file(st.name, "raw")).exists()]
    need = sum(int((~st.done).sum()) * st.chunk_size * isz for st in todo)
    free = shutil.disk_usage(out).free
    if need > free:
        raise DataError(out, f"needs about {need / 1e9:.1f} GB more disk space, {free / 1e9:.1f} GB free "
                             "(encoding='jpeg' needs about 10x less)")
    for st in todo:
        partial = out / f"{st.name}.images.partial"
        if not partial.exists():
            with open(partial, "wb") as f:
                f.truncate(st.n * isz)


def _tasks(out: Path, states: dict[str, SplitState], job: dict, skip_bad: bool) -> list[dict]:
    tasks = []
    for st in states.values():
        if (out / F.images_file(st.name, job["encoding"])).exists():
            continue
        for k in np.flatnonzero(~st.done).tolist():
            lo, hi = st.chunk_range(k)
            tasks.append({"split": st.name, "chunk": k, "start": lo, "size": job["size"],
                          "encoding": job["encoding"], "quality": job.get("quality"), "skip_bad": skip_bad,
                          "paths": [str(p) for p in st.list.paths[lo:hi]], "stats": st.stats,
                          "images": str(out / f"{st.name}.images.partial"),
                          "blob": str(st.dir / f"blob-{k:07d}.jpg")})
    return tasks


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM stops prepare the way Ctrl-C does (finished chunks kept), in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(tasks: list[dict], workers: int, handle: Callable[[dict], None]) -> None:
    """Every task, in this process (workers == 1) or in a pool; an interrupt stops the pool at once."""
    from alexnet.data.procs import context, one_thread, worker_setup

    if workers == 1:
        with one_thread():
            for t in tasks:
                handle(process_chunk(t))
        return

    pool = context().Pool(workers, initializer=worker_setup)
    try:
        for res in pool.imap_unordered(process_chunk, tasks, chunksize=1):
            handle(res)
        pool.close()
    except BaseException:
        pool.terminate()  # SIGTERM to the workers: chunks in flight are redone by the next run
        raise
    finally:
        pool.join()


def _bad_error(src: Path, out: Path, failed: list[tuple[Path, str]], bad_hint: str | None = None) -> DataError:
    """One error naming every bad file (the first SHOWN_BAD in the message, all in the list file)."""
    failed = sorted(failed)
    listing = out / F.BAD_LIST
    atomic_write_text(listing, "".join(f"{relative(p, src)}\t{problem}\n" for p, problem in failed))
    hint = bad_hint or (f"listed in {listing}; fix or remove them, or prepare with skip_bad=True / --skip-bad to "
                        "leave them out")
    if len(failed) == 1:
        path, problem = failed[0]
        return DataError(path, f"{problem} ({hint})")
    shown = "; ".join(f"{relative(p, src)} ({problem})" for p, problem in failed[:SHOWN_BAD])
    more = f"; and {len(failed) - SHOWN_BAD} more" if len(failed) > SHOWN_BAD else ""
    return DataError(src, f"{len(failed)} images cannot be read: {shown}{more} ({hint})")


def _publish(out: Path, src: Path, states: dict[str, SplitState], job: dict, lists: dict) -> tuple[int, Path]:
    """Each split's files, then the statistics, then meta.json (last). Returns (skipped, skipped.txt)."""
    skipped_lines, split_meta = [], {}
    for name, st in states.items():
        (finish_raw if job["encoding"] == "raw" else finish_jpeg)(st, src)
        bad = st.bad()
        skipped_lines += [f"{relative(st.list.paths[i], src)}\t{p}" for i, p in bad]
        split_meta[name] = F.split_entry(st.n - len(bad), job["encoding"], len(bad), job.get("quality"))
    stats_split = job["stats_split"]
    sst, count = states[stats_split], split_meta[stats_split]["count"]
    if count == 0:
        raise DataError(src / stats_split, "no image could be read, so there are no statistics")
    sums = sst.sums.arrays()
    F.write_stats(out, *color_stats(sums["sum"], sums["rgb"], sums["outer"], count, int(sums["pixels"])))
    skipped_path = out / F.SKIPPED
    if skipped_lines:
        atomic_write_text(skipped_path, "".join(line + "\n" for line in skipped_lines))
    else:
        skipped_path.unlink(missing_ok=True)
    (out / F.BAD_LIST).unlink(missing_ok=True)
    first = next(iter(lists.values()))
    meta = F.make_meta(job["size"], first.classes, first.class_names, split_meta, stats_split, str(src))
    atomic_write_text(out / F.META, json.dumps(meta, indent=1))
    shutil.rmtree(out / PARTIAL, ignore_errors=True)
    return len(skipped_lines), skipped_path


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"prepare: {text}", file=sys.stderr, flush=True)


def prepare(
    src,
    out,
    size: int = 256,
    splits: list[str] | None = None,
    workers: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    encoding: str = "auto",
    chunk_size: int = 256,
    on_chunk: Callable[[str, int], None] | None = None,
    quality: int = F.DEFAULT_QUALITY,
    bad_hint: str | None = None,
) -> Path:
    """Prepare ``src`` (an image-folder tree or ImageNet layout) into ``out``; returns ``out``.

    ``splits``: which splits (default: all of train/val/test present). ``workers``: processes
    (default: all cores; 1 = in this process). ``skip_bad``: leave out unreadable images and list
    them in ``out/skipped.txt`` instead of stopping. ``encoding``: ``"raw"`` (uint8 arrays, no
    work to read), ``"jpeg"`` (``quality`` 1-100, about 10x smaller at 90) or ``"auto"`` (raw up
    to 32 GB, else JPEG). ``on_chunk(split, k)`` is called after chunk ``k`` is recorded (a hook
    for progress reports and tests). With ``progress``: a progress bar, the rate at the end, and
    a summary of skipped images. ``bad_hint``: what the error for unreadable images advises instead of
    the list file in ``out`` and ``--skip-bad`` (for callers that prepare into a folder they remove).

    An interrupted run resumes where it stopped; a folder already complete for the same source and
    options is returned at once.
    """
    _check_args(out, size, chunk_size, quality)
    src = Path(src).expanduser().resolve()
    out = Path(out).expanduser()
    lists = find_splits(src, splits)
    for name, lst in lists.items():
        if len(lst) == 0:
            raise DataError(src / name, "holds no images")
    encoding = F.choose_encoding(encoding, sum(len(lst) for lst in lists.values()), size, out)
    job = {"format": FORMAT, "version": VERSION, "decoder": DECODER, "size": size, "encoding": encoding,
           "chunk_size": chunk_size, "classes": next(iter(lists.values())).classes,
           "stats_split": "train" if "train" in lists else next(iter(lists))}
    if encoding == "jpeg":
        job["quality"] = quality
    if _open_output(out, src, lists, job):
        return out
    states = {name: SplitState(out, name, lst, size, chunk_size, name == job["stats_split"], MERGE_EVERY)
              for name, lst in lists.items()}
    for name, st in states.items():
        st.load()
    if encoding == "raw":
        _allocate_raw(out, states, size)
    tasks = _tasks(out, states, job, skip_bad)
    if workers is None:
        from alexnet.data.procs import usable_cores

        workers = usable_cores()
    workers = max(1, min(int(workers), len(tasks) or 1))
    _execute(tasks, workers, states, src, out, progress, on_chunk, bad_hint)
    skipped, skipped_path = _publish(out, src, states, job, lists)
    if skipped:
        _say(progress, f"skipped {skipped} unreadable images, listed in {skipped_path}")
    return out


def _execute(tasks, workers, states, src, out, progress, on_chunk, bad_hint=None) -> None:
    """Run the tasks with a progress bar; record each finished chunk; name every bad file."""
    from tqdm.auto import tqdm

    failed: list[tuple[Path, str]] = []
    total = sum(len(t["paths"]) for t in tasks)
    bar = tqdm(total=total, unit="img", desc=f"prepare {out.name}", disable=not progress, smoothing=0.05)

    def handle(res: dict) -> None:
        st = states[res["split"]]
        bar.update(res["count"])
        if res["failed"]:
            failed.extend((st.list.paths[i], problem) for i, problem in res["bad"])
            return
        if "write_error" in res:
            raise DataError(*res["write_error"])
        st.record(res)
        if on_chunk is not None:
            on_chunk(res["split"], res["chunk"])

    t0 = time.perf_counter()
    try:
        with _sigterm_as_interrupt():
            _run(tasks, workers, handle)
    except KeyboardInterrupt:
        kept = sum(int(st.done.sum()) for st in states.values())
        _say(progress, f"interrupted; {kept} finished chunks are kept: run the same command again to resume")
        raise
    finally:
        bar.close()
        for st in states.values():
            st.merge()
    seconds = time.perf_counter() - t0
    if total:
        _say(progress, f"{total:,} images in {seconds:.1f} s: {total / seconds:,.0f} images/s with {workers} "
                       f"worker{'s' if workers > 1 else ''}")
    if failed:
        raise _bad_error(src, out, failed, bad_hint)
