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
from alexnet.parallel.ddp import DistributedContext


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
    parallel: str = "data"                # data | columns
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
    return cfg


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


def train(cfg: TrainConfig, log=print) -> dict:
    """Train; returns the final metrics. Writes RUN/config.json, RUN/metrics.jsonl, checkpoints.

    SIGTERM or SIGINT at any time saves a checkpoint at the next step and returns cleanly.
    """
    with _Stop() as stop:
        return _train(resolve_config(cfg), stop, log)


def _train(cfg: TrainConfig, stop: _Stop, log) -> dict:
    dist = DistributedContext.from_env(cfg.device)
    if not dist.is_main:
        log = lambda *a, **k: None  # noqa: E731 - only rank 0 talks
    device = resolve_device(cfg.device) if not dist.enabled else dist.device
    run_dir = Path(cfg.out)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    resume = None
    if cfg.resume:
        resume = ckpt_io.load_checkpoint(run_dir / "last.pt", map_location="cpu")
        log(f"resuming from {run_dir / 'last.pt'}: epoch {resume['epoch']}, step {resume['global_step']}")

    # Data: on a resume, the checkpoint's statistics are reused so the run sees the same inputs.
    if dist.is_main:
        data = open_data(cfg, run_dir, log)
    dist.barrier()  # rank 0 prepares image folders once; the others open what it wrote
    if not dist.is_main:
        data = open_data(cfg, run_dir, log)
    train_split, val_split, test_split, val_name, test_name = split_train_val(data, cfg)
    classes, class_names = list(data.classes), list(data.class_names)
    mean = data.mean.to(device)
    eigvals, eigvecs = data.pca_eigvals.to(device), data.pca_eigvecs.to(device)

    options = dict(cfg.arch_options)
    options["num_classes"] = len(classes)
    if "input_size" in {f.name for f in dataclasses.fields(get_arch(cfg.arch).config)}:
        options.setdefault("input_size", cfg.crop)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, **options)
    if cfg.init_from and resume is None:
        init_from(model, cfg.init_from, log)
    if resume is not None:
        model.load_state_dict(resume["model"])
    model.to(device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    # cuDNN is fastest channels_last; on the CPU, NCHW (channels_last grouped convs are slow there).
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    amp_dtype = torch.bfloat16 if (cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")) else None

    # Batch sizes: the paper's 128 is global, split across processes, unless weak scaling is asked for.
    if cfg.batch_per_process:
        local_batch = cfg.batch_per_process
        global_batch = local_batch * dist.world_size
        lr = cfg.lr * (global_batch / 128 if cfg.lr_scaling == "linear" else 1.0)
    else:
        if cfg.batch_size % dist.world_size:
            raise ConfigError(f"batch {cfg.batch_size} does not split evenly over {dist.world_size} processes")
        global_batch, local_batch, lr = cfg.batch_size, cfg.batch_size // dist.world_size, cfg.lr

    recipe = getattr(model.config, "recipe", "paper")
    optimizer = PaperSGD(param_groups(model, recipe, lr, cfg.weight_decay), lr=lr, momentum=cfg.momentum,
                         weight_decay=cfg.weight_decay)
    schedule = StepDrops(cfg.milestones) if cfg.schedule == "step" else PlateauDrops(cfg.patience, cfg.max_drops)
    net = dist.wrap(model)
    step_net = torch.compile(net) if cfg.compile else net

    augment = Augment(crop=cfg.crop, flip=cfg.flip, pca_std=cfg.pca_std, pca_form=cfg.pca_form)
    aug_gen = torch.Generator(device=device)
    aug_gen.manual_seed(cfg.seed * 1000 + dist.rank)
    generators = {"augment": aug_gen}

    start_epoch, start_batch, global_step, best_error = 0, 0, 0, float("inf")
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        start_epoch, start_batch = resume["epoch"], resume["batch_in_epoch"]
        global_step, best_error = resume["global_step"], resume["best_val_top1_error"]
        rng = resume["rng"]
        if resume.get("world_size", 1) == dist.world_size:
            ckpt_io.set_rng_state(rng[dist.rank], generators)
        else:
            log(f"resumed on {dist.world_size} processes from a run on {resume.get('world_size')}: "
                "same sample position, fresh augmentation randomness")
        if start_batch and resume.get("global_batch") != global_batch:
            raise ConfigError("cannot resume mid-epoch with a different global batch size")
        _truncate_metrics(run_dir / "metrics.jsonl", resume["completed_epochs"])

    resolved = dataclasses.asdict(cfg) | {"arch_options": model_options(model), "lr": lr,
                                          "global_batch": global_batch, "local_batch": local_batch,
                                          "world_size": dist.world_size, "device": str(device),
                                          "precision": "bf16" if amp_dtype else "fp32",
                                          "channels_last": channels_last}
    if dist.is_main:
        (run_dir / "config.json").write_text(json.dumps({
            "config": resolved, "alexnet": alexnet.__version__, "hardware": hardware(),
            "data": {"source": cfg.data, "classes": len(classes), "train_images": len(train_split),
                     "val": val_name, "val_images": len(val_split), "test": test_name,
                     "test_images": len(test_split) if test_split is not None else 0},
        }, indent=2, default=str))
    n_params = sum(p.numel() for p in model.parameters())
    log(f"network: {cfg.arch} {model_options(model)} ({n_params:,} parameters)")
    log(f"data: {cfg.data}: {len(classes)} classes, {len(train_split):,} train, {len(val_split):,} val "
        f"({val_name}), test: {test_name or 'none'}; crop {cfg.crop} of {data.size}")
    log(f"device: {device}{' x' + str(dist.world_size) if dist.enabled else ''}, "
        f"{'bf16 autocast' if amp_dtype else 'fp32'}, batch {global_batch} (per process {local_batch}), "
        f"lr {lr:g}, {cfg.epochs} epochs -> {run_dir}")

    keeper = ckpt_io.CheckpointKeeper(run_dir, cfg.keep_checkpoints)
    stall = StallDetector(len(classes), cfg.stall_window)
    kill_at = int(os.environ.get("ALEXNET_TEST_KILL_AT_STEP", "0"))  # tests: SIGKILL at a known step

    def snapshot(epoch, batch_in_epoch, completed_epochs):
        state = {
            "format_version": ckpt_io.FORMAT_VERSION, "alexnet_version": alexnet.__version__,
            "torch_version": str(torch.__version__), "arch": cfg.arch, "model_options": model_options(model),
            "recipe": recipe, "model": {k: v.detach().cpu() for k, v in ckpt_io.unwrap(model).state_dict().items()},
            "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "completed_epochs": completed_epochs,
            "global_step": global_step, "best_val_top1_error": best_error,
            "classes": classes, "class_names": class_names, "image_size": data.size, "crop": cfg.crop,
            "mean": data.mean.cpu(), "pca_eigvals": data.pca_eigvals.cpu(), "pca_eigvecs": data.pca_eigvecs.cpu(),
            "augment": dataclasses.asdict(augment), "input_scale": input_scale(augment.pca_form),
            "world_size": dist.world_size, "global_batch": global_batch, "seed": cfg.seed,
            "rng": dist.gather_objects(ckpt_io.rng_state(generators)),
        }
        return state

    from alexnet.data.loader import BatchLoader

    metrics = {}
    last_save = time.monotonic()
    stopped_by = None
    for epoch in range(start_epoch, cfg.epochs):
        loader = BatchLoader(train_split, global_batch, shuffle=True, seed=cfg.seed, epoch=epoch,
                             start_batch=start_batch if epoch == start_epoch else 0, drop_last=True,
                             device=device, rank=dist.rank, world_size=dist.world_size)
        net.train()
        t0 = time.perf_counter()
        seen, loss_sum, err_sum, nb = 0, torch.zeros((), device=device), torch.zeros((), device=device), 0
        bar = _progress(cfg.progress and dist.is_main, len(loader), f"epoch {epoch + 1}/{cfg.epochs}",
                        initial=loader.start_batch)
        batch_index = loader.start_batch
        for images, labels in loader:
            x = train_views(images, mean, eigvals, eigvecs, augment, aug_gen)
            x = x.contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = step_net(x)
                loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            global_step += 1
            batch_index += 1
            nb += 1
            seen += labels.numel() * dist.world_size
            loss_d = loss.detach()
            loss_sum += loss_d
            err_sum += (logits.detach().argmax(1) != labels).float().mean()

            loss_value = loss_d.item() if (global_step % 10 == 0 or stall.window < 100) else None
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
            due = (cfg.checkpoint_steps and global_step % cfg.checkpoint_steps == 0) or \
                  (time.monotonic() - last_save > cfg.checkpoint_minutes * 60)
            if stop.signal or due:
                done_epoch = batch_index >= len(loader)
                state = snapshot(epoch + 1 if done_epoch else epoch, 0 if done_epoch else batch_index, epoch)
                if dist.is_main:
                    keeper.save(state)
                last_save = time.monotonic()
                if stop.signal:
                    stopped_by = stop.signal
                    break
            if cfg.max_steps and global_step >= cfg.max_steps:
                break
        if bar is not None:
            bar.close()
        if stopped_by:
            log(f"{stopped_by}: saved {keeper.last}; continue with --resume")
            break

        seconds = time.perf_counter() - t0
        finished_epoch = batch_index >= len(loader)
        val = evaluate_split(net, val_split, mean, cfg.crop, cfg.eval_crops, device, amp_dtype,
                             channels_last, input_scale(augment.pca_form), cfg.eval_batch_size, dist)
        train_loss = dist.mean((loss_sum / max(nb, 1)).float())
        train_err = dist.mean((err_sum / max(nb, 1)).float())
        lr_now = optimizer.param_groups[0]["lr"]
        metrics = {"epoch": epoch + 1, "step": global_step, "lr": lr_now, "train_loss": train_loss,
                   "train_top1_error": train_err, "val_top1_error": val["top1_error"],
                   "val_top5_error": val["top5_error"], "seconds": seconds,
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
            t = evaluate_split(net, test_split, mean, cfg.crop, crops, device, amp_dtype, channels_last,
                               input_scale(augment.pca_form), cfg.eval_batch_size, dist)
            result[f"test_{crops}crop"] = t
            log(f"test ({test_name}, {crops} crop{'s' if crops > 1 else ''}): top-1 error {t['top1_error']:.4f}, "
                f"top-5 error {t['top5_error']:.4f} on {t['images']:,} images")
        if dist.is_main:
            (run_dir / "test.json").write_text(json.dumps(result, indent=2))
    dist.cleanup()
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
