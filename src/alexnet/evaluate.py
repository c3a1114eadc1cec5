"""The paper's test protocol: top-1 and top-5 error, centre crop or ten crops, ensembles; and
`predict` for single images.

Ten crops (section 4.1): the four corner patches, the centre patch and their horizontal flips; the
softmax is averaged over the ten. An ensemble (the paper's "5 CNNs" row) averages the softmax of
several networks.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet.data.augment import views
from alexnet.data.layouts import list_splits
from alexnet.data.loader import BatchLoader
from alexnet.data.prepared import PreparedData, is_prepared
from alexnet.errors import ConfigError, DataError, Interrupted
from alexnet.runtime import amp_dtype as precision_dtype, resolve_device

__all__ = ["crop_probabilities", "topk_errors", "evaluate_split", "load_models", "evaluate_checkpoints",
           "predict_images", "label_map_for"]


@torch.no_grad()
def crop_probabilities(nets: list[nn.Module], images_u8: torch.Tensor, mean: torch.Tensor, crop: int,
                       crops: int, amp_dtype, channels_last: bool, input_scales: list[float]) -> torch.Tensor:
    """Softmax averaged over `crops` views of each image and over the networks: (B, classes)."""
    total = None
    for net, scale in zip(nets, input_scales):
        x = views(images_u8, mean, crop, crops, input_scale=scale)          # (B * crops, 3, crop, crop)
        x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = net(x)
        p = logits.float().softmax(1).view(images_u8.shape[0], crops, -1).mean(1)
        total = p if total is None else total + p
    return total / len(nets)


def topk_errors(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts of top-1 and top-5 misses in a batch."""
    k = min(5, probs.shape[1])
    top = probs.topk(k, dim=1).indices
    hit5 = (top == labels[:, None]).any(1)
    return (top[:, 0] != labels).sum(), (~hit5).sum()


@torch.no_grad()
def evaluate_split(nets, split, mean: torch.Tensor, crop: int, crops: int, *, device: torch.device,
                   amp_dtype=None, channels_last: bool = False, input_scales=1.0, batch_size: int = 256,
                   sum_: Callable | None = None, label_map: torch.Tensor | None = None, progress: str | None = None,
                   should_stop: Callable[[], bool] | None = None, feeder=None) -> dict:
    """Top-1/top-5 error of one network (or an ensemble list) on a prepared split. `sum_` adds the
    counts over processes (each evaluating its own part); `progress` is a bar's title (None: no bar);
    `should_stop` is polled every batch and raises Interrupted; `feeder`: a `Feeder` of this split
    whose worker processes read it (default: a loader in this process)."""
    nets = nets if isinstance(nets, list) else [nets]
    scales = input_scales if isinstance(input_scales, list) else [input_scales] * len(nets)
    modes = [n.training for n in nets]
    for n in nets:
        n.eval()
    loader = feeder.epoch(0) if feeder is not None else BatchLoader(split, batch_size, shuffle=False,
                                                                    drop_last=False, device=device)
    counts = torch.zeros(3, dtype=torch.float64, device=device)   # images, top-1 misses, top-5 misses
    bar = _bar(progress, len(loader))
    try:
        for images, labels in loader:
            if should_stop is not None and should_stop():
                raise Interrupted("evaluation stopped by a signal")
            if label_map is not None:
                labels = label_map.to(labels.device)[labels]
            probs = crop_probabilities(nets, images, mean, crop, crops, amp_dtype, channels_last, scales)
            e1, e5 = topk_errors(probs, labels)
            counts += torch.stack([torch.tensor(labels.numel(), device=device), e1, e5]).double()
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        for n, mode in zip(nets, modes):
            n.train(mode)
    if sum_ is not None:
        sum_(counts)
    images = int(counts[0].item())
    return {"top1_error": counts[1].item() / max(images, 1), "top5_error": counts[2].item() / max(images, 1),
            "images": images, "crops": crops}


def _bar(title: str | None, total: int):
    if not title:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=title, unit="batch", leave=False, dynamic_ncols=True, mininterval=1.0)


@dataclass
class Loaded:
    path: str
    ckpt: dict
    model: nn.Module


def load_models(paths: list[str], device: torch.device) -> list[Loaded]:
    loaded = []
    for p in paths:
        ckpt = load_checkpoint(p)
        model = model_from_checkpoint(ckpt, where=p).to(device).eval()
        loaded.append(Loaded(str(p), ckpt, model))
    first = loaded[0].ckpt
    for item in loaded[1:]:
        if item.ckpt["classes"] != first["classes"]:
            raise DataError(item.path, f"classes differ from {loaded[0].path}: an ensemble needs the same class list")
        if item.ckpt["image_size"] != first["image_size"]:
            raise DataError(item.path, f"trained on {item.ckpt['image_size']} px images, {loaded[0].path} on "
                                       f"{first['image_size']}")
    return loaded


def label_map_for(data_classes: list[str], model_classes: list[str], where) -> torch.Tensor:
    """Indices into the model's class list for each of the data's classes (a subset is fine)."""
    index = {c: i for i, c in enumerate(model_classes)}
    unknown = [c for c in data_classes if c not in index]
    if unknown:
        raise DataError(where, f"classes the checkpoint was not trained on: {', '.join(unknown[:5])}"
                               f"{' ...' if len(unknown) > 5 else ''}")
    return torch.tensor([index[c] for c in data_classes], dtype=torch.long)


def evaluate_checkpoints(paths: list[str], data_dir: str, split: str | None = None, crops: int = 10,
                         device: str = "auto", batch_size: int = 128, workers: int | None = None,
                         progress: bool = True, cache_dir: str | None = None, skip_bad: bool = False,
                         should_stop: Callable[[], bool] | None = None) -> dict:
    """`alexnet eval`: the error of one checkpoint, or of the ensemble of several, on a split of an
    image-folder tree or of an `alexnet prepare` directory."""
    from alexnet.data.prepare import prepare

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be positive, not {batch_size}")
    if crops not in (1, 10):
        raise ConfigError(f"--crops must be 1 or 10, not {crops}")
    dev = resolve_device(device)
    loaded = load_models(paths, dev)
    first = loaded[0].ckpt
    src = Path(data_dir)
    if not src.exists():
        raise DataError(src, "no such file or directory")
    tmp = None
    try:
        if is_prepared(src):
            data = PreparedData.open(src)
            name = _split_to_evaluate(split, list(data.splits), src)
        else:
            # Only the split evaluated is prepared: not ImageNet's 1.28 M training images for its val.
            name = _split_to_evaluate(split, list_splits(src), src)
            # A cache keeps each split in a folder of its own, so that evaluating another split adds one.
            out = Path(cache_dir) / name if cache_dir else Path(tmp := tempfile.mkdtemp(prefix="alexnet-eval-"))
            prepare(src, out, size=first["image_size"], splits=[name], workers=workers, progress=progress,
                    skip_bad=skip_bad, bad_hint=None if cache_dir else _BAD_HINT)
            data = PreparedData.open(out)
        if data.size != first["image_size"]:
            raise DataError(src, f"images prepared at {data.size} px; the checkpoint expects {first['image_size']}")
        label_map = label_map_for(list(data.classes), first["classes"], src)
        result = evaluate_split([m.model for m in loaded], data.split(name), first["mean"].to(dev), first["crop"],
                                crops, device=dev, amp_dtype=precision_dtype("auto", dev),
                                channels_last=dev.type == "cuda", input_scales=[m.ckpt["input_scale"] for m in loaded],
                                batch_size=batch_size, label_map=label_map,
                                progress=f"eval {name}, {crops} crop(s)" if progress else None,
                                should_stop=should_stop)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return result | {"checkpoints": [m.path for m in loaded], "split": name}


# For image folders prepared into a temporary folder, whose list of unreadable images goes with it.
_BAD_HINT = "fix or remove them, or evaluate with --skip-bad to leave them out; --cache DIR keeps their list"


def _split_to_evaluate(split: str | None, names: list[str], src: Path) -> str:
    """``split`` if ``src`` has it; by default val, else test, else its only split."""
    name = split or next((s for s in ("val", "test") if s in names), names[0] if len(names) == 1 else None)
    if name is None or name not in names:
        raise DataError(src, f"no split {split or 'val/test'!r} (found: {', '.join(names) or 'none'})")
    return name


@torch.no_grad()
def predict_images(checkpoint: str, images: list[str], crops: int = 10, top: int = 5,
                   device: str = "auto") -> list[dict]:
    """`alexnet predict`: the top classes of each image with names and probabilities; an image that
    cannot be read gets {"image": path, "error": what is wrong} and the others are still predicted."""
    from alexnet.data.decode import read_photo

    dev = resolve_device(device)
    (item,) = load_models([checkpoint], dev)
    ck = item.ckpt
    mean = ck["mean"].to(dev)
    out = []
    for path in images:
        try:
            pixels = read_photo(path, ck["image_size"])
        except DataError as e:
            out.append({"image": str(path), "error": e.problem})
            continue
        image = torch.from_numpy(pixels).permute(2, 0, 1)[None].to(dev)                   # (1, 3, S, S)
        probs = crop_probabilities([item.model], image, mean, ck["crop"], crops, None, False, [ck["input_scale"]])[0]
        p, idx = probs.topk(min(top, probs.numel()))
        out.append({"image": str(path), "top": [
            {"class": ck["classes"][i], "name": ck["class_names"][i], "probability": float(q)}
            for q, i in zip(p.tolist(), idx.tolist())]})
    return out
