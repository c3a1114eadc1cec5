"""The training step of each form, timed on batches resident on the GPU: what `alexnet train` runs
per step (`alexnet.step`: augmentation from uint8, forward, loss, backward, the paper's update),
without the data path.

Forms (`FORMS`): the paper's network grouped on one device; torchvision's alexnet (the peer); the
paper's one-column comparison net (`columns=1`) on one device; the two columns in one process on
two GPUs or on one GPU's two streams; and, under torchrun (`alexnet.tools.bench_parallel`), one
column per process and DDP. Variants: eager, compiled, and compiled + CUDA graph (one device only).
"""

from __future__ import annotations

import torch

from alexnet.data.augment import Augment
from alexnet.models import build_model
from alexnet.optim import PaperSGD, param_groups
from alexnet.parallel.columns import TwoDeviceAlexNet
from alexnet.parallel.distributed import DistributedContext
from alexnet.parallel.placement import Placement
from alexnet.step import make_step

__all__ = ["FORMS", "VARIANTS", "build_form", "random_u8", "step_fn", "stats_for"]

FORMS = {
    "alexnet2012": "the paper's net, grouped, one GPU",
    "torchvision": "torchvision's alexnet, one GPU",
    "one-column": "the paper's one-column comparison net (columns=1), one GPU",
    "columns-2gpu": "the two columns on two GPUs, one process",
    "columns-2streams": "the two columns on one GPU's two streams",
}
VARIANTS = ("eager", "compiled", "graphed")


def random_u8(batch: int, device, size: int = 256, seed: int = 0) -> torch.Tensor:
    """Random uint8 images (B, 3, S, S), channels_last as the loader delivers them (never zeros)."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randint(0, 256, (batch, size, size, 3), device=device, dtype=torch.uint8, generator=g)
    return x.permute(0, 3, 1, 2)


def stats_for(device, size: int = 256) -> tuple:
    """A mean image and PCA statistics of plausible magnitude (ImageNet's, 0-255 scale)."""
    mean = torch.full((3, size, size), 115.0, device=device)
    eigvals = torch.tensor([14_100.0, 1_220.0, 290.0], device=device)
    return mean, eigvals, torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1)))[0].to(device)


def build_form(form: str, device: torch.device, impl: str = "auto", fast: str = "") -> Placement:
    """A fresh network of `form`, placed, in training mode."""
    torch.manual_seed(0)
    if form == "torchvision":
        model = build_model("torchvision")
    else:
        options = {"impl": impl, "fast": fast} | ({"columns": 1} if form == "one-column" else {})
        model = build_model("alexnet2012", **options)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    if form.startswith("columns"):
        if form == "columns-2gpu" and torch.cuda.device_count() < 2:
            raise RuntimeError("needs two GPUs")
        devices = ("cuda:0", "cuda:1") if form == "columns-2gpu" else (device, device)
        two = TwoDeviceAlexNet.from_grouped(model, devices).to(memory_format=fmt)
        placement = Placement("columns", two, DistributedContext(), "paper")
    else:
        placement = Placement("single", model.to(device).to(memory_format=fmt), DistributedContext(), "paper")
    placement.model.train()
    return placement


def step_fn(placement: Placement, variant: str, batch: int, device: torch.device, seed: int = 0, log=print):
    """A zero-argument callable running one training step of `placement` in `variant` on two
    alternating GPU-resident uint8 batches."""
    cuda = device.type == "cuda"
    amp = torch.bfloat16 if cuda else None
    fmt = torch.channels_last if cuda else torch.contiguous_format
    optimizer = PaperSGD(param_groups(placement.model, "paper", 0.01), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator(device=device).manual_seed(seed)
    step = make_step(placement, optimizer, Augment(crop=224), stats_for(device), gen, amp, fmt,
                     compile=variant in ("compiled", "graphed"), graphs=variant == "graphed", log=log)
    images = [random_u8(batch, device, seed=seed + k) for k in range(2)]
    if not cuda:
        images = [x.contiguous() for x in images]
    labels = torch.randint(0, 1000, (batch,), device=device, generator=gen)
    count = [0]

    def one():
        count[0] += 1
        return step(images[count[0] % 2], labels)

    one.step = step
    return one
