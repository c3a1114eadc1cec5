"""The embedded synthetic dataset: layout, determinism, idempotence, learnability."""

import json

import torch
import numpy as np
from PIL import Image

from alexnet.data import synthetic as S


def read_image(path):
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)


def _files(root, split, cls):
    return sorted((root / split / cls).glob("*.png"))


def test_layout_counts_and_marker(tmp_path):
    root = S.make_shapes(tmp_path / "shapes", n_train_per_class=4, n_test_per_class=2, seed=1)
    assert root == tmp_path / "shapes"
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(S.CLASSES)
    assert len(S.CLASSES) == 10
    for cls in S.CLASSES:
        assert len(_files(root, "train", cls)) == 4
        assert len(_files(root, "test", cls)) == 2
    img = read_image(str(_files(root, "train", "disc")[0]))
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["n_train_per_class"] == 4 and meta["seed"] == 1 and meta["classes"] == list(S.CLASSES)


def test_deterministic_and_seed_dependent(tmp_path):
    a = S.make_shapes(tmp_path / "a", 3, 2, seed=7)
    b = S.make_shapes(tmp_path / "b", 3, 2, seed=7)
    c = S.make_shapes(tmp_path / "c", 3, 2, seed=8)
    for cls in S.CLASSES:
        for fa, fb in zip(_files(a, "train", cls), _files(b, "train", cls)):
            assert fa.read_bytes() == fb.read_bytes()
    fa, fc = _files(a, "test", "ring")[0], _files(c, "test", "ring")[0]
    assert fa.read_bytes() != fc.read_bytes()
    # the written pixels are render()'s, and the test split does not depend on the train size
    d = S.make_shapes(tmp_path / "d", 5, 2, seed=7)
    assert torch.equal(read_image(str(_files(a, "test", "ring")[1])), read_image(str(_files(d, "test", "ring")[1])))
    want = S.render(S.CLASSES.index("ring"), 2, 32, S._generator(7, "test", S.CLASSES.index("ring")))
    assert torch.equal(read_image(str(_files(a, "test", "ring")[1])), want[1])


def test_idempotent_and_rebuilt_on_new_params(tmp_path):
    root = S.make_shapes(tmp_path, 3, 1)
    f = _files(root, "train", "cross")[0]
    stamp = f.stat().st_mtime_ns
    (root / "train" / "cross" / "keep.txt").write_text("user file")
    S.make_shapes(tmp_path, 3, 1)
    assert f.stat().st_mtime_ns == stamp  # nothing rewritten
    S.make_shapes(tmp_path, 2, 1)
    assert len(_files(root, "train", "cross")) == 2  # stale images removed
    assert (root / "train" / "cross" / "keep.txt").exists()  # other files untouched
    assert json.loads((root / "synthetic.json").read_text())["n_train_per_class"] == 2


def test_images_differ_within_a_class():
    for ci in range(len(S.CLASSES)):
        x = S.render(ci, 6, generator=torch.Generator().manual_seed(ci))
        assert x.shape == (6, 3, 32, 32) and x.dtype == torch.uint8
        flat = x.view(6, -1).float()
        dist = torch.cdist(flat, flat)
        assert (dist + torch.eye(6) * 1e9).min() > 100, S.CLASSES[ci]
    assert S.render(0, 2, size=48).shape == (2, 3, 48, 48)


def _split(offset, n):
    xs, ys = [], []
    for ci in range(len(S.CLASSES)):
        xs.append(S.render(ci, n, generator=torch.Generator().manual_seed(offset + ci)))
        ys += [ci] * n
    x = torch.cat(xs).float()
    x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / x.std(dim=(1, 2, 3), keepdim=True)
    return x, torch.tensor(ys)


def test_small_conv_net_beats_chance():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convs: one thread is as fast and robust to a busy machine
    try:
        _train_and_check()
    finally:
        torch.set_num_threads(threads)


def _train_and_check():
    torch.manual_seed(0)
    xtr, ytr = _split(100, 60)
    xte, yte = _split(200, 30)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveMaxPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(32, 10),
    )
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(8):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 50):
            idx = perm[i : i + 50]
            loss = torch.nn.functional.cross_entropy(net(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = (net(xte).argmax(1) == yte).float().mean().item()
    # chance is 0.10; with 300 test images its standard deviation is about 0.017
    print(f"test accuracy {acc:.3f}")
    assert acc > 0.25, acc
