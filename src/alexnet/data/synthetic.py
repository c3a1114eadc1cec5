"""A small procedurally generated image dataset, so that the package never needs downloaded data.

``make_shapes(root)`` writes an image-folder tree::

    root/train/<class>/<i>.png     (i zero-padded, n_train_per_class per class)
    root/test/<class>/<i>.png      (n_test_per_class per class)
    root/synthetic.json            (the parameters; written last, marks the tree complete)

What the data is, honestly: 10 classes of synthetic 32x32 RGB pictures of one simple geometric
pattern each, drawn with ``torch`` on a coordinate grid (no photographs, nothing learned from real
images; it says nothing about ImageNet accuracy). The classes are

    disc, ring, square, triangle, cross, hstripes, vstripes, dstripes, checker, two_dots

Every image has its own random position, size, rotation (where the class allows it: stripes keep
their orientation within +-15 degrees, since orientation is what tells them apart), random
foreground and background colours (drawn independently of the class, one light and one dark, so
colour carries no information about the class but the shape always stands out in brightness), a faint random background gradient, soft edges and
Gaussian pixel noise. A classifier must therefore learn shape and orientation, not colour. Small
shapes, thin rings and fine stripes make some images genuinely ambiguous at 32x32, so a small CNN
gets well above chance (10%) in a couple of CPU minutes without reaching 100% at once.

Deterministic given ``seed``: each (split, class) pair has its own generator, so the test split does
not depend on ``n_train_per_class``. ``render`` returns images in memory, without any file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

__all__ = ["CLASSES", "VERSION", "render", "make_shapes"]

CLASSES = (
    "disc",
    "ring",
    "square",
    "triangle",
    "cross",
    "hstripes",
    "vstripes",
    "dstripes",
    "checker",
    "two_dots",
)
VERSION = 2  # bump when the rendering changes: stored in synthetic.json, so old trees are rebuilt
MARKER = "synthetic.json"
_SPLITS = {"train": 0, "test": 1}


def _u(g, n, lo, hi):
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _soft(d: torch.Tensor, edge: float) -> torch.Tensor:
    """Coverage from a signed distance in pixels (negative inside), about one pixel of soft edge."""
    return torch.sigmoid(-d / edge)


def _paint(g: torch.Generator, n: int, cover: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor,
           s: float) -> torch.Tensor:
    """Colour the coverage maps (n, S, S): foreground, background with a faint gradient, noise."""
    # colours, independent of the class, with a minimum contrast between foreground and background
    # One of the two is light and the other dark (at random), so the shape always stands out in
    # brightness; hues are free. Without this, a small net spends its first epochs on colour.
    light = 0.6 + 0.4 * torch.rand(n, 3, generator=g)
    dark = 0.35 * torch.rand(n, 3, generator=g)
    swap = (torch.rand(n, 1, generator=g) < 0.5)
    fg, bg = torch.where(swap, light, dark), torch.where(swap, dark, light)
    grad = (torch.rand(n, 3, generator=g) - 0.5) * 0.3  # faint background gradient
    ga = _u(g, n, 0.0, 2 * math.pi)
    ramp = ((torch.cos(ga).view(-1, 1, 1) * xx + torch.sin(ga).view(-1, 1, 1) * yy) / s - 0.5)  # (n, S, S)
    bgimg = bg.view(n, 3, 1, 1) + grad.view(n, 3, 1, 1) * ramp.unsqueeze(1)
    c = cover.unsqueeze(1)
    img = bgimg * (1 - c) + fg.view(n, 3, 1, 1) * c
    noise_sd = _u(g, n, 0.01, 0.05).view(n, 1, 1, 1)
    img = img + noise_sd * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def render(class_index: int, n: int, size: int = 32, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` images of class ``CLASSES[class_index]`` as uint8 (n, 3, size, size), vectorised over n."""
    if not 0 <= class_index < len(CLASSES):
        raise ValueError(f"class_index must be in 0..{len(CLASSES) - 1}, not {class_index}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    name = CLASSES[class_index]
    s = float(size)
    k = s / 32.0  # lengths below are in pixels of a 32x32 image

    # geometry: centre, radius (pixels), rotation
    r = _u(g, n, 5.0, 11.0) * k
    margin = r * 0.75
    cx = margin + torch.rand(n, generator=g) * (s - 2 * margin)
    cy = margin + torch.rand(n, generator=g) * (s - 2 * margin)
    theta = _u(g, n, 0.0, 2 * math.pi)
    jitter = _u(g, n, -15.0, 15.0) * math.pi / 180

    ar = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = ar.view(1, -1, 1), ar.view(1, 1, -1)  # (1, S, 1), (1, 1, S)
    dx, dy = xx - cx.view(-1, 1, 1), yy - cy.view(-1, 1, 1)  # (n, S, S) after broadcasting

    def rotated(t):
        c, sn = torch.cos(t).view(-1, 1, 1), torch.sin(t).view(-1, 1, 1)
        return c * dx + sn * dy, -sn * dx + c * dy

    rr = r.view(-1, 1, 1)
    edge = 0.5 * k
    u, v = rotated(theta)
    dist = torch.sqrt(dx * dx + dy * dy)

    if name == "disc":
        cover = _soft(dist - rr, edge)
    elif name == "ring":
        w = (_u(g, n, 0.18, 0.35) * r).clamp(min=1.2 * k).view(-1, 1, 1)
        cover = _soft((dist - (rr - w / 2)).abs() - w / 2, edge)
    elif name == "square":
        h = rr * 0.8
        cover = _soft(torch.maximum(u.abs(), v.abs()) - h, edge)
    elif name == "triangle":
        # equilateral, circumradius r: three half-planes at distance r / 2 from the centre
        d = None
        for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6):
            dk = u * math.cos(a) + v * math.sin(a) - rr / 2
            d = dk if d is None else torch.maximum(d, dk)
        cover = _soft(d, edge)
    elif name == "cross":
        w = (_u(g, n, 0.2, 0.32) * r).view(-1, 1, 1)
        bar1 = torch.maximum(u.abs() - rr, v.abs() - w)
        bar2 = torch.maximum(v.abs() - rr, u.abs() - w)
        cover = _soft(torch.minimum(bar1, bar2), edge)
    elif name in ("hstripes", "vstripes", "dstripes"):
        base = {"hstripes": 0.0, "vstripes": math.pi / 2, "dstripes": math.pi / 4}[name]
        if name == "dstripes":  # either diagonal
            base = base + (torch.rand(n, generator=g) < 0.5).float() * (math.pi / 2)
        su, sv = rotated(base + jitter)
        period = (_u(g, n, 3.5, 7.0) * k).view(-1, 1, 1)
        phase = _u(g, n, 0.0, 1.0).view(-1, 1, 1)
        # stripes run along su: their profile varies along sv; square window of half-side r
        wave = torch.cos(2 * math.pi * (sv / period + phase)) * period / (2 * math.pi)  # ~ signed px
        window = _soft(torch.maximum(su.abs(), sv.abs()) - rr, edge)
        cover = _soft(-wave, edge) * window
    elif name == "checker":
        cell = (_u(g, n, 2.5, 5.0) * k).view(-1, 1, 1)
        a = torch.cos(math.pi * u / cell)
        b = torch.cos(math.pi * v / cell)
        window = _soft(torch.maximum(u.abs(), v.abs()) - rr, edge)
        cover = _soft(-(a * b) * cell, edge) * window
    else:  # two_dots
        sep = rr * 0.65
        dr = (_u(g, n, 0.28, 0.4) * r).clamp(min=1.5 * k).view(-1, 1, 1)
        d1 = torch.sqrt((u - sep) ** 2 + v**2)
        d2 = torch.sqrt((u + sep) ** 2 + v**2)
        cover = _soft(torch.minimum(d1, d2) - dr, edge)

    return _paint(g, n, cover, xx, yy, s)


def _params(n_train: int, n_test: int, size: int, seed: int) -> dict:
    return {
        "kind": "alexnet-synthetic-shapes",
        "version": VERSION,
        "classes": list(CLASSES),
        "n_train_per_class": n_train,
        "n_test_per_class": n_test,
        "size": size,
        "seed": seed,
    }


def _generator(seed: int, split: str, class_index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + _SPLITS[split] * 10_007 + class_index * 101 + 17)


def make_shapes(
    root,
    n_train_per_class: int = 500,
    n_test_per_class: int = 100,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Write the synthetic dataset under ``root`` and return ``root`` as a Path.

    Idempotent: if ``root/synthetic.json`` records the same parameters, nothing is written. Otherwise
    the marker is removed first, the ``*.png`` files in this dataset's class folders are replaced (no
    other file is touched), and the marker is written last.
    """
    from PIL import Image  # a dependency of torchvision; its own PNG encoder is deprecated in 0.29

    root = Path(root)
    params = _params(int(n_train_per_class), int(n_test_per_class), int(size), int(seed))
    marker = root / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == params:
                return root
        except (OSError, ValueError):
            pass
        marker.unlink()
    for split, n in (("train", params["n_train_per_class"]), ("test", params["n_test_per_class"])):
        width = max(len(str(n - 1)), 1)
        for ci, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for old in d.glob("*.png"):
                old.unlink()
            if n == 0:
                continue
            images = render(ci, n, params["size"], _generator(params["seed"], split, ci))
            hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
            for i in range(n):
                Image.fromarray(hwc[i]).save(d / f"{i:0{width}d}.png", format="PNG")
    tmp = marker.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(params, indent=2) + "\n")
    tmp.replace(marker)
    return root
