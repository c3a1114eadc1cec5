"""Training with the paper's recipe: the loop, checkpoints, exact resume, logging.

`train(TrainConfig(...))` is what `alexnet train` runs. Defaults are the paper's (section 5):
batch 128, the exact update with momentum 0.9 and weight decay 0.0005, learning rate 0.01 divided
by 10 when the validation error stops improving (three times), 90 epochs, random crops, flips and
PCA colour noise.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import alexnet
from alexnet import checkpoint as ckpt_io
from alexnet.data.augment import Augment, input_scale, train_views
from alexnet.errors import ConfigError, DataError, TrainingDiverged
from alexnet.evaluate import evaluate_split
from alexnet.models import build_model, get_arch, model_options
from alexnet.optim import PaperSGD, PlateauDrops, StepDrops, drop_learning_rate, param_groups
from alexnet.parallel.distributed import DistributedContext


@dataclass
class TrainConfig:
    data: str | None = None               # image folders or an `alexnet prepare` output; None: the embedded demo
    out: str = "runs/alexnet"
    arch: str = "alexnet2012"
    arch_options: dict = field(default_factory=dict)
    epochs: int = 90
    batch_size: int = 128                 # global batch, split across processes
    batch_per_process: int | None = None  # weak scaling instead: this many per process
    lr_scaling: str = "none"              # with batch_per_process: none | linear
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "plateau"             # plateau | step
    milestones: list[int] = field(default_factory=lambda: [25, 51, 79])
    patience: int = 5                     # plateau: epochs without improvement before a drop
    max_drops: int = 3
    crop: int | None = None               # default: the architecture's (224; 28 for CIFAR nets)
    image_size: int | None = None         # prepared side: 256; 32 for CIFAR nets
    flip: bool = True
    pca_std: float = 0.1
    pca_form: str | None = None           # paper | cuda-convnet; default: the recipe's
    val_split: str | None = None          # default: "val" if present, else held out of train
    val_fraction: float = 0.1             # held out of train when there is no val split
    test_split: str | None = None         # default: "test" if present; evaluated once at the end
    eval_crops: int = 1                   # crops for the per-epoch validation (1 or 10)
    test_crops: tuple[int, ...] = (1, 10)
    device: str = "auto"                  # auto | cpu | cuda
    precision: str = "auto"               # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    channels_last: bool | None = None     # default: on for CUDA
    compile: bool = False
    parallel: str = "data"                # data (one device, or DDP under torchrun) | columns (alexnet2012)
    memory_cap_gb: float | None = None    # CUDA: cap the allocator at this many GiB (the GTX 580's 3)
    seed: int = 0
    deterministic: bool = False
    max_steps: int | None = None
    checkpoint_minutes: float = 30.0
    checkpoint_steps: int | None = None
    keep_checkpoints: int = 3
    resume: bool = False
    init_from: str | None = None
    skip_bad: bool = False
    workers: int | None = None
    stall_window: int = 3000              # steps at ln(classes) before the run is called stuck
    progress: bool = True
    eval_batch_size: int = 256


# ---------------------------------------------------------------------------------------------
# Set-up


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda given, but torch sees no CUDA device")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"unknown device {name!r}: auto, cpu, cuda")
    return torch.device(name)


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Fill the defaults that depend on the architecture and recipe."""
    arch = get_arch(cfg.arch)
    cfg = dataclasses.replace(cfg)
    cfg.crop = cfg.crop or cfg.arch_options.get("input_size") or arch.crop
    cfg.image_size = cfg.image_size or arch.image_size
    recipe = cfg.arch_options.get("recipe", "paper")
    cfg.pca_form = cfg.pca_form or recipe
    if cfg.crop > cfg.image_size:
        raise ConfigError(f"crop {cfg.crop} is larger than the prepared image size {cfg.image_size}")
    if cfg.schedule not in ("plateau", "step"):
        raise ConfigError(f"unknown schedule {cfg.schedule!r}: plateau, step")
    if cfg.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"unknown precision {cfg.precision!r}: auto, bf16, fp32")
    if cfg.eval_crops not in (1, 10):
        raise ConfigError(f"eval crops must be 1 or 10, not {cfg.eval_crops}")
    if cfg.lr_scaling not in ("none", "linear"):
        raise ConfigError(f"unknown lr scaling {cfg.lr_scaling!r}: none, linear")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"val fraction must be in (0, 1), not {cfg.val_fraction}")
    if cfg.parallel not in ("data", "columns"):
        raise ConfigError(f"unknown parallel mode {cfg.parallel!r}: data, columns")
    if cfg.parallel == "columns":
        if cfg.arch != "alexnet2012" or cfg.arch_options.get("columns", 2) != 2:
            raise ConfigError("--parallel columns is the paper's two-GPU split of alexnet2012 (columns=2)")
        if cfg.batch_per_process:
            raise ConfigError("--batch-per-process is for data parallelism; with --parallel columns every "
                              "process reads the whole batch")
    if cfg.memory_cap_gb is not None and not cfg.memory_cap_gb > 0:
        raise ConfigError(f"memory cap must be positive, not {cfg.memory_cap_gb} GB")
    return cfg


def column_devices(name: str) -> tuple[torch.device, torch.device]:
    """`--parallel columns` in one process: two GPUs when there are two, one GPU twice (the two
    columns on two CUDA streams), else the CPU twice."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu"), torch.device("cpu")
    dev = resolve_device(name)
    if dev.index is not None:
        return dev, dev
    if torch.cuda.device_count() >= 2:
        return torch.device("cuda:0"), torch.device("cuda:1")
    return torch.device("cuda:0"), torch.device("cuda:0")


def open_data(cfg: TrainConfig, run_dir: Path, log) -> "PreparedData":
    """An `alexnet prepare` directory, preparing image folders into RUN/data first if needed."""
    from alexnet.data.prepare import prepare
    from alexnet.data.prepared import PreparedData, is_prepared

    src = Path(cfg.data)
    if not src.exists():
        raise DataError(src, "no such file or directory")
    if is_prepared(src):
        data = PreparedData.open(src)
    else:
        out = run_dir / "data"
        log(f"preparing {src} -> {out} ({cfg.image_size}x{cfg.image_size}); resumes if interrupted")
        prepare(src, out, size=cfg.image_size, workers=cfg.workers, skip_bad=cfg.skip_bad, progress=cfg.progress)
        data = PreparedData.open(out)
    if data.size < cfg.crop:
        raise DataError(src, f"prepared images are {data.size}x{data.size}, smaller than the {cfg.crop} crop")
    return data


def open_data_on_rank(cfg: TrainConfig, run_dir: Path, log, dist: DistributedContext):
    """`open_data` on rank 0. Image folders are prepared once, by rank 0, into RUN/data (hours for
    ImageNet); the other ranks wait for it by polling the file system rather than in a collective,
    whose timeout would end the run. (torchrun stops them if rank 0 fails.)"""
    from alexnet.data.prepared import PreparedData, is_prepared

    src = Path(cfg.data)
    if dist.is_main or is_prepared(src) or not src.exists():
        return open_data(cfg, run_dir, log)
    out = run_dir / "data"
    while not is_prepared(out):
        time.sleep(2.0)
    return PreparedData.open(out)


def split_train_val(data, cfg: TrainConfig):
    """(train, val, test, val_name): a held-out part of train when there is no val split."""
    names = list(data.splits)
    if "train" not in names:
        raise DataError(cfg.data, f"no 'train' split (found: {', '.join(names) or 'none'})")
    train = data.split("train")
    val_name = cfg.val_split or ("val" if "val" in names else None)
    if val_name is not None:
        if val_name not in names:
            raise DataError(cfg.data, f"no {val_name!r} split (found: {', '.join(names)})")
        val = data.split(val_name)
    else:
        # A fixed, seed-independent hold-out, so runs with different seeds validate on the same images.
        n = len(train)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(12345))
        n_val = max(1, int(round(n * cfg.val_fraction)))
        val = train.subset(perm[:n_val].sort().values)
        train = train.subset(perm[n_val:].sort().values)
        val_name = f"train[held-out {cfg.val_fraction:g}]"
    test_name = cfg.test_split or ("test" if "test" in names else None)
    test = data.split(test_name) if test_name else None
    return train, val, test, val_name, test_name


def hardware() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["gpu_count"] = torch.cuda.device_count()
    return info


def init_from(model: nn.Module, path: str, log) -> None:
    """Fine-tuning: load a checkpoint's or a torchvision .pth's weights; a classifier whose shape
    does not fit the data's classes is left freshly initialised."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(path, "no such checkpoint") from None
    except Exception as e:
        raise DataError(path, f"not a readable checkpoint ({type(e).__name__})") from None
    state = obj["model"] if isinstance(obj, dict) and "model" in obj else obj
    if not isinstance(state, dict):
        raise DataError(path, "holds no state_dict")
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    mismatched = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    missing = sorted(set(own) - set(state))
    if not fitting:
        raise DataError(path, "no parameter matches this architecture (wrong --arch?)")
    model.load_state_dict(fitting, strict=False)
    log(f"initialised from {path}: {len(fitting)} tensors loaded")
    if mismatched or missing:
        log(f"  re-initialised (shape differs or absent, e.g. a classifier for other classes): "
            f"{', '.join(mismatched + missing)}")


# ---------------------------------------------------------------------------------------------
# The loop


class _Stop:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next step and exits."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, _frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class StallDetector:
    """Stops a run whose loss stays at ln(classes), the uniform guess, for `window` steps.

    Reported with the paper's initialisation (bias 1) in other frameworks. A healthy run leaves
    ln(C) within the first few hundred steps; the default window is 3000.
    """

    def __init__(self, num_classes: int, window: int, tolerance: float = 0.02):
        self.chance = math.log(num_classes)
        self.window, self.tolerance = window, tolerance
        self.run = 0

    def update(self, loss: float) -> bool:
        self.run = self.run + 1 if abs(loss - self.chance) < self.tolerance * self.chance else 0
        return self.window > 0 and self.run >= self.window


class TrainStep:
    """One step of the paper's SGD on a uint8 batch already on the device: random crops, flips, PCA
    noise and mean subtraction there, then forward, cross-entropy, backward and the update.

    `loss_fn(output, labels)` defaults to the cross-entropy of the logits; one column per process
    (`DistributedColumnAlexNet`) passes its `loss`, which returns on rank 1 the placeholder that
    carries the backward pass (its "logits" are that placeholder too).
    """

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, augment: Augment, stats, generator,
                 amp_dtype: torch.dtype | None, memory_format=torch.contiguous_format, loss_fn=None):
        self.net, self.optimizer, self.augment, self.generator = net, optimizer, augment, generator
        self.mean, self.eigvals, self.eigvecs = stats
        self.amp_dtype, self.memory_format = amp_dtype, memory_format
        self.loss_fn = loss_fn or (lambda logits, labels: F.cross_entropy(logits.float(), labels))

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = train_views(images, self.mean, self.eigvals, self.eigvecs, self.augment, self.generator)
        x = x.contiguous(memory_format=self.memory_format)
        with torch.autocast(x.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.net(x)
            loss = self.loss_fn(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits.detach()


# ---------------------------------------------------------------------------------------------
# Where the network lives: one device, DDP, or the paper's two columns


class _SumOverRanks:
    """What `evaluate_split` needs of a distributed context when this rank evaluates its own part
    of the split: a loader of one, and the sum of the counts over ranks."""

    def __init__(self, dist: DistributedContext):
        self.rank, self.world_size, self._dist = 0, 1, dist

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._dist.sum_(tensor)


class _RootLogits(nn.Module):
    """One column per process, evaluated: rank 0's logits; rank 1 (whose forward still takes part
    in the exchanges) returns zeros of the same shape, which are never scored."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.model.is_root:
            return out
        return torch.zeros(x.shape[0], self.model.config.num_classes, device=x.device)


class Layout:
    """The network of a run and how its state maps to the grouped (one-device) checkpoint form.

    kind: `single` (one device), `ddp` (a replica per process, batch sharded), `columns`
    (`TwoDeviceAlexNet`: both columns in this process) or `columns-distributed`
    (`DistributedColumnAlexNet`: one column per process, both reading the whole batch).

    Checkpoints are always in the grouped form: `model` is an `AlexNet2012`-style state dict and
    `optimizer` the state dict a `PaperSGD` over the grouped model would have (velocities in its
    parameter order), so a run in any form resumes from, and `alexnet eval` reads, any other's.
    """

    def __init__(self, kind: str, model: nn.Module, dist: DistributedContext, recipe: str):
        self.kind, self.model, self.dist, self.recipe = kind, model, dist, recipe
        self._names = None

    @property
    def columns(self) -> bool:
        return self.kind.startswith("columns")

    @property
    def has_logits(self) -> bool:
        """False on rank 1 of one column per process: it has no fc8."""
        return self.kind != "columns-distributed" or self.model.is_root

    @property
    def loader_shard(self) -> tuple[int, int]:
        """(rank, world_size) for the BatchLoader: only DDP shards the batch."""
        return (self.dist.rank, self.dist.world_size) if self.kind == "ddp" else (0, 1)

    @property
    def weight(self) -> float:
        """This rank's share in a sum over ranks that gives a per-run scalar (loss, error)."""
        if self.kind == "ddp":
            return 1.0 / self.dist.world_size
        if self.kind == "columns-distributed":
            return 1.0 if self.model.is_root else 0.0
        return 1.0

    @property
    def devices(self) -> list[torch.device]:
        if self.kind == "columns":
            return list(self.model.devices)
        return [next(self.model.parameters()).device]

    def describe(self) -> str:
        if self.kind == "columns":
            d0, d1 = self.model.devices
            how = "two CUDA streams on one GPU" if d0 == d1 and d0.type == "cuda" else (
                "one after the other on the CPU" if d0.type == "cpu" else "two devices")
            return f"two columns in one process: column 0 on {d0}, column 1 on {d1} ({how})"
        if self.kind == "columns-distributed":
            return f"one column per process: column {self.dist.rank} on {self.devices[0]} of 2 processes"
        if self.kind == "ddp":
            return f"data parallel: {self.dist.world_size} processes (DDP)"
        return "one device"

    # -- checkpoints in the grouped form --------------------------------------------------------
    def _grouped_names(self) -> list[list[str]]:
        """The grouped model's parameter names, per optimizer group, in PaperSGD's order."""
        if self._names is None:
            from alexnet.models.alexnet2012 import AlexNet2012

            with torch.device("meta"):
                grouped = AlexNet2012(self.model.config)
            names = {id(p): n for n, p in grouped.named_parameters()}
            self._names = [[names[id(p)] for p in g["params"]] for g in param_groups(grouped, self.recipe, 1.0)]
        return self._names

    def _gather_grouped(self, mine: dict) -> dict | None:
        """Collective (one column per process): this rank's by-name halves -> the grouped dict on
        rank 0, None on rank 1."""
        import torch.distributed as td

        from alexnet.parallel.columns import SPLIT_LAYERS, merge_state_dicts

        group, root = self.model.group, self.model.is_root
        dst = td.get_global_rank(group, 0) if group is not None else 0
        other = {}
        for key, value in mine.items():          # both ranks hold the split layers, in this order
            if key.split(".", 1)[0] not in SPLIT_LAYERS:
                continue
            value = value.detach().contiguous()
            parts = [torch.empty_like(value) for _ in range(2)] if root else None
            td.gather(value, parts, dst=dst, group=group)
            if root:
                other[key] = parts[1]
        return merge_state_dicts(mine, other) if root else None

    def model_state(self) -> dict | None:
        """The grouped state dict on the CPU, on rank 0 (None elsewhere). Collective when the
        columns are in two processes."""
        if self.kind == "columns-distributed":
            sd = self.model.grouped_state_dict()
        elif not self.dist.is_main:
            return None
        elif self.kind == "columns":
            sd = self.model.grouped_state_dict()
        else:
            sd = ckpt_io.unwrap(self.model).state_dict()
        return None if sd is None else {k: v.detach().cpu() for k, v in sd.items()}

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict | None:
        """The grouped model's optimizer state dict, on rank 0 (None elsewhere); collective when
        the columns are in two processes."""
        from alexnet.parallel.columns import merge_state_dicts, named_optimizer_state

        if not self.columns:
            return optimizer.state_dict() if self.dist.is_main else None
        if self.kind == "columns":
            named = merge_state_dicts(*(named_optimizer_state(c, optimizer) for c in self.model.columns))
        else:
            named = self._gather_grouped(named_optimizer_state(self.model, optimizer))
            if named is None:
                return None
        state, groups, index = {}, [], 0
        for names, group in zip(self._grouped_names(), optimizer.param_groups):
            ids = []
            for name in names:
                if name in named:
                    state[index] = {"velocity": named[name].detach().cpu()}
                ids.append(index)
                index += 1
            groups.append({k: v for k, v in group.items() if k != "params"} | {"params": ids})
        return {"state": state, "param_groups": groups}

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Load a grouped-form optimizer state dict (from a run in any form)."""
        from alexnet.parallel.columns import load_named_optimizer_state, split_state_dict

        if not self.columns:
            optimizer.load_state_dict(state)
            return
        names = self._grouped_names()
        flat = [n for group in names for n in group]
        saved_groups = state["param_groups"]
        if [len(g["params"]) for g in saved_groups] != [len(g) for g in names]:
            raise ConfigError("the checkpoint's optimizer state does not match this network's parameters")
        named = {flat[int(i)]: s["velocity"] for i, s in state["state"].items() if "velocity" in s}
        for group, saved in zip(optimizer.param_groups, saved_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        halves = split_state_dict(named)
        if self.kind == "columns":
            for column, half in zip(self.model.columns, halves):
                load_named_optimizer_state(column, optimizer, half)
        else:
            load_named_optimizer_state(self.model, optimizer, halves[self.model.rank])

    # -- evaluation, each image counted once ------------------------------------------------------
    def evaluate(self, split, mean, crop, crops, device, amp_dtype, channels_last, scale, batch_size) -> dict:
        """Top-1/top-5 error on `split`, the same dict on every rank.

        DDP: each rank evaluates a contiguous part of the split (no padding, no image twice; a part
        may be empty) and the counts are summed. One column per process: both ranks run every
        batch (the forward pass is collective) and rank 0's result is shared.
        """
        if self.kind == "ddp":
            from alexnet.data.loader import shard_bounds

            lo, hi = shard_bounds(len(split), self.dist.rank, self.dist.world_size)
            return evaluate_split(ckpt_io.unwrap(self.model), split.subset(torch.arange(lo, hi)), mean, crop, crops,
                                  device, amp_dtype, channels_last, scale, batch_size, _SumOverRanks(self.dist))
        if self.kind == "columns-distributed":
            result = evaluate_split(_RootLogits(self.model), split, mean, crop, crops, device, amp_dtype,
                                    channels_last, scale, batch_size, None)
            return self.dist.broadcast_object(result)
        return evaluate_split(self.model, split, mean, crop, crops, device, amp_dtype, channels_last, scale,
                              batch_size, None)


def _column_accounting(config, batch: int, crop: int, amp_dtype, layout: Layout) -> dict:
    """What `--parallel columns` moves and holds per step (`alexnet.parallel.accounting`)."""
    from alexnet.parallel.accounting import column_accounting

    act = 2 if amp_dtype is not None else 4
    comm = column_accounting(config, batch, crop, act)["columns"]
    held = column_accounting(config, batch, crop, 4)["columns"]
    return {
        "mode": "columns", "form": layout.kind, "layout": layout.describe(), "batch": batch,
        "exchange_value_bytes": act,
        "exchanged_per_step": {"forward_bytes": comm["comm"]["forward_bytes"],
                               "backward_bytes": comm["comm"]["backward_bytes"],
                               "points": [{k: e[k] for k in ("point", "shape_per_column", "direction", "forward_bytes",
                                                             "backward_bytes")} for e in comm["exchanges"]]},
        "per_device_memory_estimate": held["per_device"],
        "memory_note": "fp32 estimate (accounting module): parameters, gradients, PaperSGD velocities, the input "
                       "batch and the activations saved for backward",
    }


def train(cfg: TrainConfig, log=print) -> dict:
    """Train; returns the final metrics. Writes RUN/config.json, RUN/metrics.jsonl, checkpoints.

    SIGTERM or SIGINT at any time saves a checkpoint at the next step and returns cleanly (under
    torchrun: at the next step at which the processes compare notes, within 10 steps).
    """
    with _Stop() as stop:
        return _train(resolve_config(cfg), stop, log)


def _train(cfg: TrainConfig, stop: _Stop, log) -> dict:
    dist = DistributedContext.from_env(cfg.device)
    try:
        return _run(cfg, stop, log, dist)
    finally:
        dist.cleanup()


def _run(cfg: TrainConfig, stop: _Stop, log, dist: DistributedContext) -> dict:
    if not dist.is_main:
        log = lambda *a, **k: None  # noqa: E731 - only rank 0 talks
    columns = cfg.parallel == "columns"
    if columns and dist.enabled and dist.world_size != 2:
        raise ConfigError(f"--parallel columns runs in one process or in two (torchrun --nproc-per-node 2), "
                          f"not {dist.world_size}")
    if dist.enabled:
        devices = [dist.device]
    elif columns:
        devices = list(column_devices(cfg.device))
    else:
        devices = [resolve_device(cfg.device)]
    device = devices[0]                         # where batches are read and augmented
    run_dir = Path(cfg.out)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if cfg.memory_cap_gb is not None:
        from alexnet.memory import apply_memory_cap

        caps = apply_memory_cap(cfg.memory_cap_gb, devices)
        log("memory cap: " + (", ".join(f"{c['device']} {cfg.memory_cap_gb:g} GiB (fraction {c['fraction']:.4f})"
                                        for c in caps) or "ignored (not on CUDA)"))

    resume = None
    if cfg.resume:
        resume = ckpt_io.load_checkpoint(run_dir / "last.pt", map_location="cpu")
        log(f"resuming from {run_dir / 'last.pt'}: epoch {resume['epoch']}, step {resume['global_step']}")

    # Data: on a resume, the checkpoint's statistics are reused so the run sees the same inputs.
    data = open_data_on_rank(cfg, run_dir, log, dist)
    train_split, val_split, test_split, val_name, test_name = split_train_val(data, cfg)
    classes, class_names = list(data.classes), list(data.class_names)
    mean = data.mean.to(device)
    eigvals, eigvecs = data.pca_eigvals.to(device), data.pca_eigvecs.to(device)

    options = dict(cfg.arch_options)
    options["num_classes"] = len(classes)
    if "input_size" in {f.name for f in dataclasses.fields(get_arch(cfg.arch).config)}:
        options.setdefault("input_size", cfg.crop)
    torch.manual_seed(cfg.seed)                  # the same initial weights on every rank, in every form
    model = build_model(cfg.arch, **options)
    if cfg.init_from and resume is None:
        init_from(model, cfg.init_from, log)
    if resume is not None:
        model.load_state_dict(resume["model"])   # always the grouped form
    options_used, recipe = model_options(model), getattr(model.config, "recipe", "paper")
    n_params = sum(p.numel() for p in model.parameters())
    if columns and dist.enabled:
        from alexnet.parallel.columns import DistributedColumnAlexNet

        with torch.device("meta"):
            column = DistributedColumnAlexNet(model.config)
        column.to_empty(device=device)
        column.load_grouped_state_dict(model.state_dict())
        model, kind = column.train(), "columns-distributed"
    elif columns:
        from alexnet.parallel.columns import TwoDeviceAlexNet

        model, kind = TwoDeviceAlexNet.from_grouped(model, devices).train(), "columns"
    else:
        model, kind = model.to(device), ("ddp" if dist.enabled else "single")
    layout = Layout(kind, model, dist, recipe)
    if dist.enabled:
        # Dropout: each process its own masks (DDP: other images; columns: the other column's units).
        torch.manual_seed(cfg.seed * 1000 + 1 + dist.rank)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    # cuDNN is fastest channels_last; on the CPU, NCHW (channels_last grouped convs are slow there).
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    amp_dtype = torch.bfloat16 if (cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")) else None

    # Batch sizes: the paper's 128 is global, split across DDP processes, unless weak scaling is
    # asked for. The columns (one or two processes) all read the whole batch.
    shard_rank, shard_world = layout.loader_shard
    if cfg.batch_per_process:
        local_batch = cfg.batch_per_process
        global_batch = local_batch * shard_world
        lr = cfg.lr * (global_batch / 128 if cfg.lr_scaling == "linear" else 1.0)
    else:
        if cfg.batch_size % shard_world:
            raise ConfigError(f"batch {cfg.batch_size} does not split evenly over {shard_world} processes")
        global_batch, local_batch, lr = cfg.batch_size, cfg.batch_size // shard_world, cfg.lr

    optimizer = PaperSGD(param_groups(model, recipe, lr, cfg.weight_decay), lr=lr, momentum=cfg.momentum,
                         weight_decay=cfg.weight_decay)
    schedule = StepDrops(cfg.milestones) if cfg.schedule == "step" else PlateauDrops(cfg.patience, cfg.max_drops)
    net = dist.wrap(model) if kind == "ddp" else model

    augment = Augment(crop=cfg.crop, flip=cfg.flip, pca_std=cfg.pca_std, pca_form=cfg.pca_form)
    aug_rank = 0 if columns else dist.rank       # both columns must see the same crops, flips and noise
    aug_gen = torch.Generator(device=device)
    aug_gen.manual_seed(cfg.seed * 1000 + aug_rank)
    generators = {"augment": aug_gen}
    for d in layout.devices:                     # dropout of a column on a second GPU draws there
        if d.type == "cuda" and d.index not in (None, torch.cuda.current_device()):
            generators[f"cuda:{d.index}"] = torch.cuda.default_generators[d.index]
    loss_fn = None
    if kind == "columns-distributed":
        loss_fn = lambda out, y: model.loss(out, y, lambda o, t: F.cross_entropy(o.float(), t))  # noqa: E731
    step = TrainStep(torch.compile(net) if cfg.compile else net, optimizer, augment, (mean, eigvals, eigvecs),
                     aug_gen, amp_dtype, memory_format, loss_fn)

    start_epoch, start_batch, global_step, best_error = 0, 0, 0, float("inf")
    if resume is not None:
        layout.load_optimizer_state(optimizer, resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        start_epoch, start_batch = resume["epoch"], resume["batch_in_epoch"]
        global_step, best_error = resume["global_step"], resume["best_val_top1_error"]
        rng = resume["rng"]
        same = len(rng) == dist.world_size and (dist.world_size == 1 or resume.get("parallel", "data") == cfg.parallel)
        restored = False
        if same:
            try:
                ckpt_io.set_rng_state(rng[dist.rank], generators)
                restored = True
            except (RuntimeError, ValueError, TypeError) as e:   # e.g. a CPU run resumed on CUDA
                log(f"random number generator states not restored ({type(e).__name__}: {e})")
        if not restored:
            log(f"resumed with {dist.world_size} process(es) ({cfg.parallel}) from a run with {len(rng)} "
                f"({resume.get('parallel', 'data')}): same sample position, fresh augmentation and dropout randomness")
            fresh = (cfg.seed * 1_000_003 + global_step) * 1000
            aug_gen.manual_seed(fresh + aug_rank)
            torch.manual_seed(fresh + 500 + dist.rank)
            if columns and resume.get("parallel") == "columns":   # every column drew the same augmentation
                try:
                    aug_gen.set_state(rng[0]["augment"])
                except (RuntimeError, ValueError, TypeError, KeyError):
                    pass
        if start_batch and resume.get("global_batch") != global_batch:
            raise ConfigError("cannot resume mid-epoch with a different global batch size")
        if dist.is_main:
            _truncate_metrics(run_dir / "metrics.jsonl", resume["completed_epochs"])

    parallel_info = None
    if columns:
        parallel_info = _column_accounting(model.config, global_batch, cfg.crop, amp_dtype, layout)
    elif kind == "ddp":
        n = sum(p.numel() for p in model.parameters())
        parallel_info = {"mode": "data", "form": kind, "layout": layout.describe(), "world_size": dist.world_size,
                         "gradient_allreduce_bytes_per_step": n * 4,
                         "ring_bytes_sent_per_process": int(2 * (dist.world_size - 1) / dist.world_size * n * 4)}
    resolved = dataclasses.asdict(cfg) | {"arch_options": options_used, "lr": lr,
                                          "global_batch": global_batch, "local_batch": local_batch,
                                          "world_size": dist.world_size, "device": str(device),
                                          "devices": [str(d) for d in layout.devices],
                                          "precision": "bf16" if amp_dtype else "fp32",
                                          "channels_last": channels_last}
    if dist.is_main:
        (run_dir / "config.json").write_text(json.dumps({
            "config": resolved, "alexnet": alexnet.__version__, "hardware": hardware(),
            "data": {"source": cfg.data, "classes": len(classes), "train_images": len(train_split),
                     "val": val_name, "val_images": len(val_split), "test": test_name,
                     "test_images": len(test_split) if test_split is not None else 0},
            "parallel": parallel_info,
        }, indent=2, default=str))
    held = (f"; this process holds {sum(p.numel() for p in model.parameters()):,}"
            if kind == "columns-distributed" else "")
    log(f"network: {cfg.arch} {options_used} ({n_params:,} parameters{held})")
    log(f"data: {cfg.data}: {len(classes)} classes, {len(train_split):,} train, {len(val_split):,} val "
        f"({val_name}), test: {test_name or 'none'}; crop {cfg.crop} of {data.size}")
    where = " + ".join(str(d) for d in layout.devices) if kind == "columns" else str(device)
    log(f"device: {where}{' x' + str(dist.world_size) if dist.enabled else ''}, "
        f"{'bf16 autocast' if amp_dtype else 'fp32'}, batch {global_batch} (per process {local_batch}), "
        f"lr {lr:g}, {cfg.epochs} epochs -> {run_dir}")
    if kind != "single":
        log(f"parallel: {layout.describe()}")
    if columns:
        mib = lambda b: f"{b / 2**20:,.1f} MiB"  # noqa: E731
        ex = parallel_info["exchanged_per_step"]
        log(f"columns exchange per step ({parallel_info['exchange_value_bytes']}-byte values): forward "
            f"{mib(ex['forward_bytes'])}, backward {mib(ex['backward_bytes'])} ("
            + ", ".join(f"{p['point']} {mib(p['forward_bytes'])}" for p in ex["points"]) + " each way)")
        log("memory per device (fp32 estimate): " + ", ".join(
            f"column {d['device']} {mib(d['total_bytes'])} (parameters {mib(d['param_bytes'])}, activations "
            f"{mib(d['activation_bytes'])})" for d in parallel_info["per_device_memory_estimate"]))

    keeper = ckpt_io.CheckpointKeeper(run_dir, cfg.keep_checkpoints)
    stall = StallDetector(len(classes), cfg.stall_window)
    kill_at = int(os.environ.get("ALEXNET_TEST_KILL_AT_STEP", "0"))  # tests: SIGKILL at a known step

    def snapshot(epoch, batch_in_epoch, completed_epochs):
        """The checkpoint, on rank 0 (None elsewhere). Every rank calls it: it gathers."""
        model_state = layout.model_state()
        optimizer_state = layout.optimizer_state(optimizer)
        rngs = dist.gather_objects(ckpt_io.rng_state(generators))
        if not dist.is_main:
            return None
        return {
            "format_version": ckpt_io.FORMAT_VERSION, "alexnet_version": alexnet.__version__,
            "torch_version": str(torch.__version__), "arch": cfg.arch, "model_options": options_used,
            "recipe": recipe, "model": model_state, "optimizer": optimizer_state, "schedule": schedule.state_dict(),
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "completed_epochs": completed_epochs,
            "global_step": global_step, "best_val_top1_error": best_error,
            "classes": classes, "class_names": class_names, "image_size": data.size, "crop": cfg.crop,
            "mean": data.mean.cpu(), "pca_eigvals": data.pca_eigvals.cpu(), "pca_eigvecs": data.pca_eigvecs.cpu(),
            "augment": dataclasses.asdict(augment), "input_scale": input_scale(augment.pca_form),
            "world_size": dist.world_size, "parallel": cfg.parallel, "global_batch": global_batch, "seed": cfg.seed,
            "rng": rngs,
        }

    def reduce(value: torch.Tensor) -> float:
        """The run's value of a per-rank scalar (DDP: the mean; columns: rank 0's)."""
        if not dist.enabled:
            return value.item()
        return dist.sum_(value.detach().float().reshape(()).clone() * layout.weight).item()

    def evaluate(split, crops):
        return layout.evaluate(split, mean, cfg.crop, crops, device, amp_dtype, channels_last,
                               input_scale(augment.pca_form), cfg.eval_batch_size)

    from alexnet.data.loader import BatchLoader

    # Under torchrun the ranks agree every `sync_every` steps, in one small all-reduce, on the loss
    # (divergence, stall), on a stop signal and on a time-based checkpoint: a decision any rank
    # took alone would leave the others waiting in a collective.
    sync_every = 1 if stall.window < 100 else 10
    metrics = {}
    last_save = time.monotonic()
    stopped_by = None
    for epoch in range(start_epoch, cfg.epochs):
        loader = BatchLoader(train_split, global_batch, shuffle=True, seed=cfg.seed, epoch=epoch,
                             start_batch=start_batch if epoch == start_epoch else 0, drop_last=True,
                             device=device, rank=shard_rank, world_size=shard_world)
        net.train()
        t0 = time.perf_counter()
        seen, loss_sum, err_sum, nb = 0, torch.zeros((), device=device), torch.zeros((), device=device), 0
        per_epoch = loader.batches_per_epoch
        bar = _progress(cfg.progress and dist.is_main, per_epoch, f"epoch {epoch + 1}/{cfg.epochs}",
                        initial=loader.start_batch)
        batch_index = loader.start_batch
        for images, labels in loader:
            loss_d, logits = step(images, labels)
            global_step += 1
            batch_index += 1
            nb += 1
            seen += global_batch
            loss_sum += loss_d.float()
            if layout.has_logits:
                err_sum += (logits.argmax(1) != labels).float().mean()

            loss_value, stop_now, time_due = None, False, False
            if dist.enabled:
                if global_step % sync_every == 0:
                    flags = torch.stack([loss_d.float().reshape(()) * layout.weight,
                                         torch.tensor(1.0 if stop.signal else 0.0, device=device),
                                         torch.tensor(1.0 if time.monotonic() - last_save > cfg.checkpoint_minutes * 60
                                                      else 0.0, device=device)])
                    loss_value, stop_any, due_any = dist.sum_(flags).tolist()
                    stop_now, time_due = stop_any > 0, due_any > 0
            else:
                if global_step % sync_every == 0:
                    loss_value = loss_d.item()
                stop_now = bool(stop.signal)
                time_due = time.monotonic() - last_save > cfg.checkpoint_minutes * 60
            if loss_value is not None:
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(
                        f"loss is {loss_value} at step {global_step} (epoch {epoch + 1}); "
                        f"the last good checkpoint is kept in {keeper.last if keeper.last.exists() else run_dir}. "
                        "Lower --lr, or check the data.")
                if stall.update(loss_value):
                    raise TrainingDiverged(
                        f"loss has stayed at ln({len(classes)}) = {stall.chance:.3f} (chance) for {stall.run} "
                        f"checked steps up to step {global_step}: the network is not learning. With the paper's "
                        "unit biases this is a known failure mode: try --unit-bias 0.1 or a lower --lr. "
                        f"Checkpoint kept in {run_dir}.")
            if bar is not None:
                bar.update(1)
                if global_step % 10 == 0:
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix_str(f"loss {loss_d.item():.3f} {rate:,.0f} img/s lr {optimizer.param_groups[0]['lr']:g}")

            if kill_at and global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            due = bool(cfg.checkpoint_steps and global_step % cfg.checkpoint_steps == 0) or time_due
            if stop_now or due:
                done_epoch = batch_index >= per_epoch
                state = snapshot(epoch + 1 if done_epoch else epoch, 0 if done_epoch else batch_index, epoch)
                if state is not None:
                    keeper.save(state)
                last_save = time.monotonic()
                if stop_now:
                    stopped_by = stop.signal or "a signal to another process"
                    break
            if cfg.max_steps and global_step >= cfg.max_steps:
                break
        if bar is not None:
            bar.close()
        if stopped_by:
            log(f"{stopped_by}: saved {keeper.last}; continue with --resume")
            break

        seconds = time.perf_counter() - t0
        finished_epoch = batch_index >= per_epoch
        val = evaluate(val_split, cfg.eval_crops)
        train_loss = reduce(loss_sum / max(nb, 1))
        train_err = reduce(err_sum / max(nb, 1))
        lr_now = optimizer.param_groups[0]["lr"]
        metrics = {"epoch": epoch + 1, "step": global_step, "lr": lr_now, "train_loss": train_loss,
                   "train_top1_error": train_err, "val_top1_error": val["top1_error"],
                   "val_top5_error": val["top5_error"], "val_images": val["images"], "seconds": seconds,
                   "images_per_second": seen / seconds if seconds > 0 else 0.0,
                   "complete": finished_epoch}
        is_best = val["top1_error"] < best_error
        best_error = min(best_error, val["top1_error"])
        if finished_epoch and schedule.should_drop(epoch + 1, val["top1_error"]):
            schedule.drops += 1
            new_lr = drop_learning_rate(optimizer, 10.0)
            log(f"learning rate divided by 10 -> {new_lr:g} (drop {schedule.drops})")
        state = snapshot(epoch + 1 if finished_epoch else epoch, 0 if finished_epoch else batch_index,
                         epoch + 1 if finished_epoch else epoch)
        if dist.is_main:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            keeper.save(state, epoch_end=finished_epoch, best=is_best)
        last_save = time.monotonic()
        log(f"epoch {epoch + 1}: train loss {train_loss:.4f} top-1 err {train_err:.4f} | val top-1 err "
            f"{val['top1_error']:.4f} top-5 err {val['top5_error']:.4f} | {metrics['images_per_second']:,.0f} img/s, "
            f"{seconds:.1f} s")
        if cfg.max_steps and global_step >= cfg.max_steps:
            break

    result = {"run": str(run_dir), "steps": global_step, "last": metrics, "stopped_by": stopped_by}
    if test_split is not None and not stopped_by:
        for crops in cfg.test_crops:
            t = evaluate(test_split, crops)
            result[f"test_{crops}crop"] = t
            log(f"test ({test_name}, {crops} crop{'s' if crops > 1 else ''}): top-1 error {t['top1_error']:.4f}, "
                f"top-5 error {t['top5_error']:.4f} on {t['images']:,} images")
        if dist.is_main:
            (run_dir / "test.json").write_text(json.dumps(result, indent=2))
    return result


def _truncate_metrics(path: Path, completed_epochs: int) -> None:
    """Drop log lines of epochs after the checkpoint (they will be run again)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["epoch"] <= completed_epochs and json.loads(line).get("complete", True)]
    path.write_text("".join(line + "\n" for line in keep))


def _progress(enabled: bool, total: int, desc: str, initial: int = 0):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="batch", dynamic_ncols=True, file=sys.stderr,
                leave=False, mininterval=1.0)
