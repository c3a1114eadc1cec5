"""Shared pytest fixtures. Each section belongs to the tests that introduced it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

# ============================================================================ data fixtures
# (tests/test_layouts.py, tests/test_prepare.py, tests/test_loader.py)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_image(path: Path, array: np.ndarray, fmt: str | None = None, **save_kw) -> Path:
    """Write a uint8 HxWx3 (or HxW) array as an image file with PIL; ``fmt`` defaults to the suffix."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, format=fmt, **save_kw)
    return path


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random colour image (JPEG-friendly), uint8 HxWx3."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    c = rng.uniform(0, 1, (3, 3))
    img = np.stack([(c[k, 0] * 255 * (yy / max(h - 1, 1)) + c[k, 1] * 255 * (xx / max(w - 1, 1))) / 2
                    + c[k, 2] * 60 for k in range(3)], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def image_tree(tmp_path) -> Path:
    """``root/{train,val}/{cat,dog,n01440764}/*.jpg|png`` with small images of various sizes."""
    rng = np.random.default_rng(0)
    root = tmp_path / "src"
    for split, n in (("train", 4), ("val", 2)):
        for c, cls in enumerate(("cat", "dog", "n01440764")):
            for i in range(n):
                h, w = 20 + 3 * i + c, 28 + 5 * i
                ext = ".png" if i % 2 else ".JPEG"
                write_image(root / split / cls / f"img{i}{ext}", random_image(rng, h, w),
                            fmt="PNG" if ext == ".png" else "JPEG", **({} if ext == ".png" else {"quality": 95}))
    return root


@pytest.fixture
def shared_data() -> Path:
    """/work/shared/data (read-only); the test is skipped without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("shared data folder not present")
    return SHARED_DATA


# ============================================================================ run fixtures
# (tests/test_evaluate.py, tests/test_real_data.py)


@pytest.fixture(scope="session")
def shapes_prepared(tmp_path_factory) -> Path:
    """A small prepared copy of the embedded synthetic dataset (train/test, 32x32)."""
    from alexnet.data.prepare import prepare
    from alexnet.data.synthetic import make_shapes

    root = tmp_path_factory.mktemp("shapes-prepared")
    src = make_shapes(root / "src", n_train_per_class=30, n_test_per_class=8)
    return prepare(src, root / "prepared", size=32, workers=1, progress=False)


@pytest.fixture(scope="session")
def shapes(shapes_prepared) -> Path:
    """The same prepared synthetic dataset, under the name the training tests use (read-only)."""
    return shapes_prepared


@pytest.fixture(scope="session")
def trained_run(shapes_prepared, tmp_path_factory) -> Path:
    """A run directory of cifar-fig1 trained for one epoch on the synthetic shapes."""
    from alexnet.train import TrainConfig, train

    run = tmp_path_factory.mktemp("trained") / "run"
    train(TrainConfig(data=str(shapes_prepared), out=str(run), arch="cifar-fig1", epochs=1, batch_size=32,
                      progress=False, test_crops=(1,), seed=1), log=lambda *a: None)
    return run


@pytest.fixture(scope="session")
def cifar10(tmp_path_factory) -> Path:
    """The real CIFAR-10 (JPEG class folders) extracted once per test session; skipped without ../shared."""
    import tarfile

    archive = SHARED_DATA / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip("shared CIFAR-10 archive not present")
    root = tmp_path_factory.mktemp("cifar10")
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root / "cifar10-jpeg"


# ============================================================================ process helpers
# (tests/test_columns.py, tests/test_distributed.py)


def spawn_processes(fn, args, nprocs: int = 2, timeout_s: float = 120.0) -> None:
    """Run fn(rank, *args) in `nprocs` spawned processes; fail (never hang) after `timeout_s`."""
    import time

    import torch.multiprocessing as mp

    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"distributed test did not finish in {timeout_s:.0f} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join()


def tiny(shapes, out, **kw):
    """cifar-fig1 on the shapes: 270 train images, batch 32 -> 8 steps an epoch; lr / 10 after epoch 1."""
    from alexnet.config import TrainConfig

    base = dict(data=str(shapes), out=str(out), arch="cifar-fig1", epochs=2, batch_size=32, lr=0.01,
                schedule="step", milestones=[1], progress=False, deterministic=True, test_crops=(1,),
                eval_batch_size=64, device="cpu")
    return TrainConfig(**(base | kw))


class StopAfter:
    """A run's step, raising its stop flag after `steps` calls (during the last), as SIGTERM would."""

    def __init__(self, run, steps: int):
        self._step, self._run, self._left = run.step, run, steps

    def __call__(self, images, labels):
        self._left -= 1
        if self._left == 0:
            self._run.stop.signal = "SIGTERM"
        return self._step(images, labels)

    def __getattr__(self, name):
        return getattr(self._step, name)


# ============================================================================ GPU numerics fixtures
# (tests/test_fast_layers.py, tests/test_columns_gpu.py)


@pytest.fixture
def plain_fp32_cuda():
    """CUDA's float32 as written, for the duration of a test: no TF32, and cuDNN's algorithms chosen by
    its heuristics, not by `cudnn.benchmark`, which an earlier test in the process may have turned on (an
    `alexnet train` on CUDA does). Restored afterwards. Without it, in the full GPU suite (2026-12-01),
    six float32 cases of test_fast_layers failed: conv1's weight gradient 1.24e-3 from the reference's,
    the size of float32's own distance from float64 there, while in a fresh process, benchmark on or
    off, the two agree to 8e-7; which algorithm the earlier tests had left chosen was not found out.
    Deterministic mode off too: an earlier `alexnet train --deterministic` in the process leaves it on,
    and some CUDA backward kernels then raise (adaptive average pooling's, 2026-12-02)."""
    b = torch.backends
    saved = b.cudnn.benchmark, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, torch.are_deterministic_algorithms_enabled()
    b.cudnn.benchmark = b.cudnn.allow_tf32 = b.cuda.matmul.allow_tf32 = False
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        b.cudnn.benchmark, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, deterministic = saved
        torch.use_deterministic_algorithms(deterministic)
