"""The paper's figures for any checkpoint: Figure 3 (the conv1 kernels, one block per column, with a
colour-specificity number per column) and Figure 4 (top-5 predictions of test images; the training
images nearest to test images in the space of the last hidden layer, fc7).

The paper's claim for Figure 3 is that the 48 kernels of column 1 come out largely colour-agnostic
and the 48 of column 2 colour-specific. `colour_specificity` makes that a number: the share of a
kernel's energy that lies outside the grey direction. At every pixel the kernel's (r, g, b) weights
are split into their projection onto (1, 1, 1)/sqrt(3), i.e. the mean of the three repeated, and
the chromatic residual; the number is sum(residual^2) / sum(weights^2), averaged over the column's
kernels. 0: a grey (luminance-only) kernel; 1: a purely chromatic one (its three channels sum to
zero at every pixel); about 2/3 for random weights, which spread their energy evenly over the
three colour directions.

matplotlib is an optional dependency (the `figures` extra): it is imported inside the functions
that draw.
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alexnet.errors import ConfigError, DataError

__all__ = ["colour_specificity", "conv1_columns", "kernel_report", "kernels_figure", "open_data",
           "predictions", "predictions_figure", "nearest_neighbours", "neighbours_figure", "curves_figure",
           "png_bytes"]

RANDOM_SHARE = 2.0 / 3.0   # expected colour share of kernels with i.i.d. weights


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("figures need matplotlib: pip install 'alexnet[figures]'") from None


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _save(fig, path: str | Path | None) -> bytes:
    data = png_bytes(fig)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data


# ---------------------------------------------------------------------------------------------
# Figure 3: conv1 kernels


def colour_specificity(weight: torch.Tensor) -> torch.Tensor:
    """(K, 3, h, w) RGB kernels -> (K,) share of each kernel's energy outside the grey direction."""
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ConfigError(f"expected RGB kernels (K, 3, h, w), got {tuple(weight.shape)}")
    w = weight.detach().double()
    grey = w.mean(dim=1, keepdim=True)                 # projection onto (1,1,1)/sqrt(3), per pixel
    chroma = (w - grey).pow(2).sum(dim=(1, 2, 3))
    total = w.pow(2).sum(dim=(1, 2, 3)).clamp_min(1e-30)
    return (chroma / total).float()


def first_conv(model: nn.Module) -> nn.Conv2d:
    conv = getattr(model, "conv1", None)
    if isinstance(conv, nn.Conv2d):
        return conv
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise ConfigError("the model has no convolution")


def conv1_columns(model: nn.Module) -> list[torch.Tensor]:
    """conv1's kernels per column: output channels [0, C/2) feed column 1 and [C/2, C) column 2
    in the two-column nets (alexnet2012, cifar-alexnet with columns=2); one block otherwise."""
    weight = first_conv(model).weight.detach().float().cpu()
    columns = int(getattr(getattr(model, "config", None), "columns", 1) or 1)
    if weight.shape[0] % columns:
        columns = 1
    return list(weight.chunk(columns, dim=0))


def kernel_report(model: nn.Module) -> dict:
    cols = conv1_columns(model)
    out = []
    for i, w in enumerate(cols):
        share = colour_specificity(w)
        out.append({"column": i + 1, "kernels": int(w.shape[0]), "colour_specificity": float(share.mean()),
                    "colour_specificity_sd": float(share.std()) if len(share) > 1 else 0.0,
                    "colour_specific_kernels": int((share > 0.5).sum())})
    return {"columns": out, "kernel_shape": list(cols[0].shape[1:]), "random_reference": RANDOM_SHARE}


def _mosaic(weight: torch.Tensor, per_row: int, pad: int = 1) -> np.ndarray:
    """Kernels (K, 3, h, w) as one RGB image, each scaled on its own so that 0 is mid-grey."""
    k, _, h, w = weight.shape
    rows = math.ceil(k / per_row)
    img = np.ones((rows * (h + pad) + pad, per_row * (w + pad) + pad, 3), dtype=np.float32)
    for i in range(k):
        kern = weight[i].permute(1, 2, 0).numpy()
        kern = 0.5 + kern / (2 * max(float(np.abs(kern).max()), 1e-12))
        r, c = divmod(i, per_row)
        img[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = kern
    return img


def kernels_figure(model: nn.Module, path: str | Path | None = None, title: str = "") -> tuple[bytes, dict]:
    """Figure 3: conv1's kernels, one block per column, each titled with its colour specificity."""
    _require_matplotlib()
    from matplotlib.figure import Figure

    cols = conv1_columns(model)
    report = kernel_report(model)
    per_row = min(16, cols[0].shape[0])
    blocks = [_mosaic(w, per_row) for w in cols]
    height = sum(b.shape[0] for b in blocks) / blocks[0].shape[1] * 8 + 0.5 * len(blocks) + 0.4
    fig = Figure(figsize=(8, height), dpi=90)
    axes = fig.subplots(len(blocks), 1, squeeze=False)[:, 0]
    for ax, block, col in zip(axes, blocks, report["columns"]):
        ax.imshow(block, interpolation="nearest")
        ax.set_axis_off()
        name = f"column {col['column']}" if len(blocks) > 1 else "conv1"
        ax.set_title(f"{name}: {col['kernels']} kernels, colour specificity {col['colour_specificity']:.2f} "
                     f"({col['colour_specific_kernels']} above 0.5; random weights ~0.67)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path), report


# ---------------------------------------------------------------------------------------------
# Data for Figure 4


@contextlib.contextmanager
def open_data(data: str | Path, image_size: int, query_only: bool = False, split: str | None = None):
    """An `alexnet prepare` folder as is; image folders prepared into a temporary folder (removed
    afterwards) at the checkpoint's image size: all their splits, or with ``query_only`` only the one
    :func:`query_split` picks (Figure 4's predictions need no training images)."""
    from alexnet.data.layouts import list_splits
    from alexnet.data.prepare import prepare
    from alexnet.data.prepared import PreparedData, is_prepared

    src = Path(data)
    if not src.exists():
        raise DataError(src, "no such file or directory")
    if is_prepared(src):
        prepared = PreparedData.open(src)
        if prepared.size != image_size:
            raise DataError(src, f"images prepared at {prepared.size} px; the checkpoint expects {image_size}")
        yield prepared
        return
    splits = [query_name(list_splits(src), split, src)] if query_only else None
    tmp = tempfile.mkdtemp(prefix="alexnet-figures-")
    print(f"preparing {src} ({', '.join(splits or list_splits(src))}) at {image_size} px into {tmp}, removed "
          "afterwards (an `alexnet prepare` output is read as it is)", file=sys.stderr, flush=True)
    try:
        prepare(src, Path(tmp), size=image_size, splits=splits, progress=True,
                bad_hint="fix or remove them, or give an `alexnet prepare --skip-bad` output as --data")
        yield PreparedData.open(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def query_split(data, split: str | None = None) -> str:
    """The split of prepared ``data`` whose images Figure 4 shows: ``split``, by default test, else val,
    else the last."""
    return query_name(list(data.splits), split, data.path)


def query_name(names: list[str], split: str | None, where) -> str:
    name = split or next((s for s in ("test", "val") if s in names), names[-1] if names else None)
    if name is None or name not in names:
        raise DataError(where, f"no split {split or 'test/val'!r} (found: {', '.join(names) or 'none'})")
    return name


def _pick(n_total: int, n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_total, generator=g)[:min(n, n_total)].tolist())


def _label_names(data, ckpt) -> tuple[torch.Tensor, list[str]]:
    from alexnet.evaluate import label_map_for

    return label_map_for(list(data.classes), ckpt["classes"], data.path), list(ckpt["class_names"])


@torch.no_grad()
def predictions(model: nn.Module, ckpt: dict, data, split: str | None = None, n: int = 8, crops: int = 10,
                seed: int = 0, device: str | torch.device = "cpu") -> list[dict]:
    """Top-5 predictions (names and probabilities) of `n` images of a split, chosen at random."""
    from alexnet.evaluate import crop_probabilities

    dev = torch.device(device)
    name = query_split(data, split)
    part = data.split(name)
    label_map, names = _label_names(data, ckpt)
    idx = _pick(len(part), n, seed)
    images = part.read(idx)
    labels = label_map[part.labels[idx]]
    model = model.to(dev).eval()
    probs = crop_probabilities([model], images.to(dev), ckpt["mean"].to(dev), ckpt["crop"], crops, None, False,
                               [ckpt.get("input_scale", 1.0)]).cpu()
    k = min(5, probs.shape[1])
    out = []
    for j, i in enumerate(idx):
        p, top = probs[j].topk(k)
        out.append({"split": name, "index": i, "label": int(labels[j]), "label_name": names[int(labels[j])],
                    "image": images[j].permute(1, 2, 0).contiguous().numpy(),
                    "top": [{"class": int(c), "name": names[int(c)], "probability": float(q)}
                            for q, c in zip(p.tolist(), top.tolist())],
                    "label_probability": float(probs[j, labels[j]])})
    return out


def predictions_figure(preds: list[dict], path: str | Path | None = None, title: str = "") -> bytes:
    """Figure 4, left: each image with its top-5 classes as bars; the true class's bar in red."""
    _require_matplotlib()
    from matplotlib.figure import Figure

    ncols = min(4, len(preds))
    nrows = math.ceil(len(preds) / ncols)
    height = 3.0 * nrows + (0.4 if title else 0.1)
    fig = Figure(figsize=(2.5 * ncols, height), dpi=90)
    grid = fig.add_gridspec(2 * nrows, ncols, height_ratios=[1.3, 1] * nrows, hspace=0.5, wspace=1.0,
                            left=0.11, right=0.98, bottom=0.35 / height, top=1 - (0.6 if title else 0.25) / height)
    for i, p in enumerate(preds):
        r, c = divmod(i, ncols)
        ax = fig.add_subplot(grid[2 * r, c])
        ax.imshow(p["image"], interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(p["label_name"], fontsize=8, fontweight="bold")
        bx = fig.add_subplot(grid[2 * r + 1, c])
        top = p["top"]
        ys = list(range(len(top)))[::-1]
        colours = ["tab:red" if t["class"] == p["label"] else "tab:blue" for t in top]
        bx.barh(ys, [t["probability"] for t in top], color=colours, height=0.7)
        bx.set_yticks(ys, [t["name"][:18] for t in top], fontsize=7)
        bx.set_xlim(0, 1)
        bx.tick_params(axis="x", labelsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


@torch.no_grad()
def _hidden_codes(model, part, indices: list[int], ckpt: dict, dev, batch: int = 256) -> torch.Tensor:
    from alexnet.data.augment import center_view

    mean = ckpt["mean"].to(dev)
    codes = []
    for lo in range(0, len(indices), batch):
        x = center_view(part.read(indices[lo:lo + batch]).to(dev), mean, ckpt["crop"],
                        input_scale=ckpt.get("input_scale", 1.0))
        codes.append(model.hidden(x).float())
    return torch.cat(codes) if codes else torch.zeros(0)


@torch.no_grad()
def nearest_neighbours(model: nn.Module, ckpt: dict, data, split: str | None = None, queries: int = 5, k: int = 6,
                       max_train: int | None = 10000, seed: int = 0, device: str | torch.device = "cpu",
                       batch: int = 256) -> dict:
    """For `queries` images of a split, the `k` training images nearest in Euclidean distance of the
    last hidden layer (fc7 after its ReLU: `model.hidden`, centre crop). `max_train` caps the
    training images searched (a random subset; None: all of them); the search is streamed, so
    memory holds one batch of codes at a time."""
    if not hasattr(model, "hidden"):
        raise ConfigError(f"{type(model).__name__} has no hidden() (the last hidden layer)")
    if "train" not in data.splits:
        raise DataError(data.path, "has no 'train' split to search for neighbours")
    dev = torch.device(device)
    model = model.to(dev).eval()
    name = query_split(data, split)
    part, train = data.split(name), data.split("train")
    label_map, names = _label_names(data, ckpt)
    q_idx = _pick(len(part), queries, seed)
    q = _hidden_codes(model, part, q_idx, ckpt, dev, batch)                       # (Q, D)
    pool = list(range(len(train))) if not max_train or max_train >= len(train) else _pick(len(train), max_train,
                                                                                          seed + 1)
    best_d = torch.full((len(q_idx), k), math.inf, device=dev)
    best_i = torch.full((len(q_idx), k), -1, dtype=torch.long, device=dev)
    for lo in range(0, len(pool), batch):
        chunk = pool[lo:lo + batch]
        codes = _hidden_codes(model, train, chunk, ckpt, dev, batch)               # (B, D)
        d = torch.cdist(q, codes, compute_mode="donot_use_mm_for_euclid_dist")     # (Q, B), exact
        ids = torch.tensor(chunk, device=dev).expand(len(q_idx), -1)
        all_d, all_i = torch.cat([best_d, d], 1), torch.cat([best_i, ids], 1)
        best_d, order = all_d.topk(min(k, all_d.shape[1]), dim=1, largest=False)
        best_i = all_i.gather(1, order)
    train_labels = label_map[train.labels]
    q_labels = label_map[part.labels[q_idx]]
    rows = []
    for j, i in enumerate(q_idx):
        nn_idx = [int(x) for x in best_i[j].tolist() if x >= 0]
        rows.append({"index": i, "label": int(q_labels[j]), "label_name": names[int(q_labels[j])],
                     "image": part.read([i])[0].permute(1, 2, 0).contiguous().numpy(),
                     "neighbours": [{"index": t, "label": int(train_labels[t]),
                                     "label_name": names[int(train_labels[t])], "distance": float(dd),
                                     "image": train.read([t])[0].permute(1, 2, 0).contiguous().numpy()}
                                    for t, dd in zip(nn_idx, best_d[j].tolist())]})
    same = [sum(n["label"] == r["label"] for n in r["neighbours"]) for r in rows]
    return {"split": name, "searched": len(pool), "train_images": len(train), "k": k,
            "dimensions": int(q.shape[1]) if q.numel() else 0, "rows": rows,
            "same_class_fraction": sum(same) / max(1, sum(len(r["neighbours"]) for r in rows))}


def neighbours_figure(result: dict, path: str | Path | None = None, title: str = "") -> bytes:
    """Figure 4, right: each test image (first column) and its nearest training images by fc7."""
    _require_matplotlib()
    from matplotlib.figure import Figure

    rows = result["rows"]
    k = max((len(r["neighbours"]) for r in rows), default=0)
    fig = Figure(figsize=(1.25 * (k + 1) + 0.2, 1.45 * len(rows) + 0.5), dpi=90)
    axes = fig.subplots(len(rows), k + 1, squeeze=False)
    for r, row in enumerate(rows):
        axes[r, 0].imshow(row["image"], interpolation="nearest")
        axes[r, 0].set_title(f"test: {row['label_name'][:14]}", fontsize=7, fontweight="bold")
        for c in range(k):
            ax = axes[r, c + 1]
            if c < len(row["neighbours"]):
                n = row["neighbours"][c]
                ax.imshow(n["image"], interpolation="nearest")
                ax.set_title(f"{n['label_name'][:12]} {n['distance']:.3g}", fontsize=6,
                             color="black" if n["label"] == row["label"] else "tab:red")
        for ax in axes[r]:
            ax.set_axis_off()
    fig.suptitle(title or (f"{k} nearest of {result['searched']:,} training images by fc7 "
                           f"({result['dimensions']}-d); same class: {result['same_class_fraction']:.0%}"),
                 fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Training curves (for the report)


def curves_figure(metrics: list[dict], path: str | Path | None = None, title: str = "") -> bytes:
    """Loss, and top-1/top-5 errors (train and validation), against epochs, from metrics.jsonl."""
    _require_matplotlib()
    from matplotlib.figure import Figure

    ep = [m["epoch"] for m in metrics]
    fig = Figure(figsize=(10, 3.4), dpi=90)
    a1, a2, a3 = fig.subplots(1, 3)
    a1.plot(ep, [m["train_loss"] for m in metrics], "o-", ms=3)
    a1.set_title("training loss", fontsize=9)
    a2.plot(ep, [m["train_top1_error"] for m in metrics], "o-", ms=3, label="train top-1")
    a2.plot(ep, [m["val_top1_error"] for m in metrics], "s-", ms=3, label="val top-1")
    a2.plot(ep, [m["val_top5_error"] for m in metrics], "^--", ms=3, label="val top-5")
    a2.set_ylim(0, 1)
    a2.set_title("error rates", fontsize=9)
    a2.legend(fontsize=7)
    a3.plot(ep, [m["lr"] for m in metrics], "o-", ms=3)
    a3.set_yscale("log")
    a3.set_title("learning rate", fontsize=9)
    for ax in (a1, a2, a3):
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
