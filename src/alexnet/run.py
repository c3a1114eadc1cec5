"""A training run set up: its data, its network and where it lives, its optimizer and step, and its
position; `setup(cfg)` makes one (or restores one from RUN/last.pt), `snapshot(run)` is its checkpoint.

A resumed run keeps its saved configuration (alexnet.config.merge_for_resume), its data statistics
and its classes come from the data folder and must match the checkpoint's, and its position is the
checkpoint's: epoch, batch within the epoch, the sums of the epoch so far, every random generator.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import torch

import alexnet
from alexnet import checkpoint as ckpt_io
from alexnet.checkpoint import CheckpointKeeper
from alexnet.config import FIELDS, TrainConfig, merge_for_resume, resolve
from alexnet.data.augment import Augment, input_scale
from alexnet.data.feeder import Feeder
from alexnet.data.gpu_decode import GPU_WORKERS_LARGE_BATCH, GPU_WORKERS_WITH_MPS, LARGE_BATCH, START_MPS, mps_running
from alexnet.data.mps import start_for_run as start_mps_for_run
from alexnet.data.splits import open_prepared, split_train_val
from alexnet.errors import ConfigError, DataError, TrainingDiverged
from alexnet.models import build_model, get_arch, model_options
from alexnet.optim import PaperSGD, PlateauDrops, StepDrops, param_groups
from alexnet.parallel.accounting import format_run_accounting, run_accounting
from alexnet.parallel.distributed import DistributedContext
from alexnet.parallel.placement import auto_reduce, place
from alexnet.runtime import amp_dtype, apply_memory_cap, git_commit, hardware, resolve_device
from alexnet.step import EAGER_STEPS, MAX_GRAPHS, make_step

__all__ = ["Run", "setup", "snapshot"]

#: The first steps of a process on a GPU (compilation, autotuning, graph capture, the loader's first
#: batches) are timed apart and left out of the epoch's rate: GraphedStep's eager steps and its
#: captures, one per input buffer (MAX_GRAPHS), and one more.
WARM_STEPS = EAGER_STEPS + MAX_GRAPHS + 1


class Run:
    """Everything a training run holds between steps. Built by `setup`."""

    def __init__(self, **fields):
        self.__dict__.update(fields)
        self.last_save, self.last_step_save = time.monotonic(), self.global_step

    # -- position and sums ----------------------------------------------------------------------
    def reset_epoch_stats(self) -> None:
        self.epoch_stats = {"loss_sum": 0.0, "miss_sum": 0.0, "batches": 0, "images": 0, "seconds": 0.0,
                            "warmup_images": 0, "warmup_seconds": 0.0}

    def sums(self) -> dict:
        return {"loss_sum": self.step.loss_sum.item(), "miss_sum": self.step.miss_sum.item()}

    def sync(self) -> None:
        for d in dict.fromkeys(self.placement.devices):
            if d.type == "cuda":
                torch.cuda.synchronize(d)

    # -- decisions all processes take together (the loop's checks: alexnet.checks) ----------------
    def checkpoint_due(self) -> bool:
        every = self.cfg.checkpoint_steps
        return bool(every and self.global_step - self.last_step_save >= every)

    def stop_requested(self) -> bool:
        """Polled by evaluation every batch; collective under torchrun."""
        flag = bool(self.stop.signal)
        if not self.dist.enabled:
            return flag
        return self.dist.sum_(torch.tensor(float(flag), device=self.device)).item() > 0

    def reduce(self, value: float) -> float:
        """The run's value of a per-process scalar (DDP: the mean; columns: rank 0's)."""
        if not self.dist.enabled:
            return float(value)
        return self.dist.sum_(torch.tensor(float(value) * self.placement.weight, device=self.device)).item()

    # -- saving and evaluating -------------------------------------------------------------------
    def save(self, epoch: int) -> None:
        """The state within `epoch` as last.pt (collective). Nothing non-finite is ever saved."""
        state = snapshot(self, completed_epochs=epoch)
        if state is not None:
            self.keeper.save(state)
        self.last_save, self.last_step_save = time.monotonic(), self.global_step

    def kept(self) -> str:
        return f"the last good checkpoint is {self.keeper.last}" if self.keeper.last.exists() else \
            f"no checkpoint was saved yet in {self.run_dir}"

    def evaluate(self, split, crops: int, title: str) -> dict:
        """Top-1/top-5 error on `split`, each image once, the same dict on every process (loader kept)."""
        if id(split) not in self.feeders:
            part = self.placement.eval_part(split)
            workers = None if self.cfg.loader_workers is None else min(self.cfg.loader_workers, 4)
            self.feeders[id(split)] = (part, Feeder(part, self.cfg.eval_batch_size, device=self.device,
                                                    workers=workers, cpu_decoder=self.cfg.cpu_decoder))
        part, feeder = self.feeders[id(split)]
        return self.placement.evaluate(
            part, self.mean, self.cfg.crop, crops, device=self.device, amp_dtype=self.amp,
            channels_last=self.channels_last, input_scales=input_scale(self.augment.pca_form),
            batch_size=self.cfg.eval_batch_size, progress=title if self.cfg.progress and self.dist.is_main else None,
            should_stop=self.placement.eval_stop_poll(split, self.cfg.eval_batch_size, self.stop_requested),
            feeder=feeder)

    def progress_bar(self, total: int, title: str, initial: int):
        if not (self.cfg.progress and self.dist.is_main):
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=title, unit="batch", dynamic_ncols=True, leave=False,
                    mininterval=1.0)

    def close(self) -> None:
        try:
            self.step.release()                  # a graph with NCCL inside must go before the group
        finally:
            for feeder in [self.train_feeder] + [f for _, f in self.feeders.values()]:
                feeder.close()
            self.dist.cleanup()


def snapshot(run: Run, completed_epochs: int) -> dict | None:
    """The run's checkpoint on rank 0 (None elsewhere); every process calls it (it gathers). Raises
    TrainingDiverged instead of returning a state with a non-finite weight or loss."""
    model_state = run.placement.model_state()
    optimizer_state = run.placement.optimizer_state(run.optimizer)
    rngs = run.dist.gather_objects(ckpt_io.rng_state(run.generators))
    if not run.dist.is_main:
        return None
    bad = [k for k, v in model_state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad or not math.isfinite(run.epoch_stats["loss_sum"]):
        raise TrainingDiverged(f"the network became non-finite by step {run.global_step} (in "
                               f"{', '.join(bad[:3]) or 'the loss'}); nothing was saved; {run.kept()}. "
                               "Lower --lr, or check the data.")
    data = run.data
    return {
        "format_version": ckpt_io.FORMAT_VERSION, "alexnet_version": alexnet.__version__,
        "torch_version": str(torch.__version__), "config": dataclasses.asdict(run.cfg),
        "arch": run.cfg.arch, "model_options": run.options_used, "recipe": run.recipe, "model": model_state,
        "optimizer": optimizer_state, "schedule": run.schedule.state_dict(),
        "epoch": run.epoch,
        "batch_in_epoch": run.batch, "epoch_stats": dict(run.epoch_stats), "completed_epochs": completed_epochs,
        "global_step": run.global_step, "best_val_top1_error": run.best_error,
        "classes": run.classes, "class_names": run.class_names, "image_size": data.size, "crop": run.cfg.crop,
        "mean": data.mean.cpu(), "pca_eigvals": data.pca_eigvals.cpu(), "pca_eigvecs": data.pca_eigvecs.cpu(),
        "augment": dataclasses.asdict(run.augment), "input_scale": input_scale(run.augment.pca_form),
        "world_size": run.dist.world_size, "parallel": run.cfg.parallel, "global_batch": run.global_batch,
        "seed": run.cfg.seed, "rng": rngs,
    }

# ---------------------------------------------------------------------------------------------
# Set-up


def setup(cfg: TrainConfig, log=print, stop=None, given: set[str] | None = None) -> Run:
    """Everything before the first step, every option checked first. Under torchrun every process
    calls it; only rank 0 logs and writes."""
    dist = DistributedContext.from_env(cfg.device)
    try:
        return _setup(cfg, log if dist.is_main else (lambda *a, **k: None), stop, given, dist)
    except BaseException:
        dist.cleanup()
        raise


def _setup(cfg: TrainConfig, log, stop, given, dist: DistributedContext) -> Run:
    cfg, resume = _configuration(resolve(cfg), given, log)
    start_mps_for_run(cfg, log)                  # before CUDA is first touched: the driver connects to MPS then
    run_dir = Path(cfg.out)
    devices = _devices(cfg, dist)
    device = devices[0]                          # where batches are read and augmented
    if cfg.decode in ("cuda", "mixed") and device.type != "cuda":
        raise ConfigError(f"--decode {cfg.decode} decodes on a CUDA device; this run is on {device} (leave it out)")
    if cfg.cuda_graphs and device.type != "cuda":
        raise ConfigError(f"--cuda-graphs needs a CUDA device; this run is on {device} (leave it out, or "
                          "--no-cuda-graphs)")
    _backends(cfg, device, devices, log)
    data = open_prepared(cfg.data, run_dir / "data", cfg.image_size, cfg.crop, workers=cfg.workers,
                         skip_bad=cfg.skip_bad, progress=cfg.progress, writer=dist.is_main, log=log)
    train_split, val_split, test_split, val_name, test_name = split_train_val(
        data, cfg.data, cfg.val_split, cfg.val_fraction, cfg.test_split)
    classes, class_names = list(data.classes), list(data.class_names)
    if resume is not None and resume["classes"] != classes:
        raise DataError(cfg.data, f"its classes differ from those of the run being resumed ({run_dir / 'last.pt'})")
    model, options_used, recipe = _network(cfg, len(classes), resume, log)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    # CUDA graphs by default where they were measured fastest and checked on GPUs: one device, data
    # parallel (the all-reduces inside the graph: --ddp-reduce step) and one column per process (the
    # NCCL exchanges inside the graph); not the one-process columns (two devices in one graph).
    one_column_each = cfg.parallel == "columns" and dist.enabled
    graphs = cfg.cuda_graphs if cfg.cuda_graphs is not None else (
        device.type == "cuda" and (one_column_each or cfg.parallel == "data"))
    reduce = cfg.ddp_reduce if cfg.ddp_reduce != "auto" else auto_reduce(graphs, cfg.ddp_reduce_dtype)
    placement = place(model, cfg.parallel, dist, devices, recipe, memory_format, reduce, cfg.ddp_reduce_dtype)
    amp = amp_dtype(cfg.precision, device)
    shard_rank, shards = placement.loader_shard
    global_batch, local_batch, lr = _batches(cfg, shards)
    if len(train_split) < global_batch:
        raise DataError(cfg.data, f"the train split holds {len(train_split)} images, fewer than one batch of "
                                  f"{global_batch}: lower --batch-size")
    optimizer = PaperSGD(param_groups(placement.model, recipe, lr, cfg.weight_decay), lr=lr,
                         momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    schedule = StepDrops(cfg.milestones) if cfg.schedule == "step" else PlateauDrops(cfg.patience, cfg.max_drops)
    augment = Augment(crop=cfg.crop, flip=cfg.flip, pca_std=cfg.pca_std, pca_form=cfg.pca_form)
    aug_gen = torch.Generator(device=device)     # both columns see the same crops, flips and noise
    aug_gen.manual_seed(cfg.seed * 1000 + (0 if placement.columns else dist.rank))
    generators = {"augment": aug_gen}
    for d in placement.devices:                  # dropout of a column on a second GPU draws there
        if d.type == "cuda" and d.index not in (None, torch.cuda.current_device()):
            generators[f"cuda:{d.index}"] = torch.cuda.default_generators[d.index]
    compile_ = cfg.compile if cfg.compile is not None else device.type == "cuda"
    mean = data.mean.to(device)
    # One graph per input buffer, each reading its batch in place, on one GPU; under torchrun one graph
    # with the batch copied in (several graphs holding NCCL collectives not yet run on two GPUs).
    in_place = MAX_GRAPHS if graphs and not dist.enabled else 0
    step = make_step(placement, optimizer, augment, (mean, data.pca_eigvals.to(device), data.pca_eigvecs.to(device)),
                     aug_gen, amp, memory_format, compile_, graphs, log, max_graphs=in_place)
    run = Run(cfg=cfg, log=log, stop=stop, dist=dist, run_dir=run_dir, device=device, data=data,
              train_split=train_split, val_split=val_split, test_split=test_split, val_name=val_name,
              test_name=test_name, classes=classes, class_names=class_names, mean=mean, placement=placement,
              optimizer=optimizer, schedule=schedule, augment=augment, generators=generators, step=step, amp=amp,
              channels_last=channels_last, global_batch=global_batch, local_batch=local_batch,
              options_used=options_used, recipe=recipe, feeders={},
              train_feeder=Feeder(train_split, global_batch, shuffle=True, seed=cfg.seed, drop_last=True,
                                  device=device, rank=shard_rank, world_size=shards,
                                  workers=cfg.loader_workers, decode=cfg.decode, cpu_decoder=cfg.cpu_decoder,
                                  gpu_workers=cfg.gpu_workers, gpu_decoder=cfg.gpu_decoder,
                                  device_buffers=in_place),  # where the graphs read them
              keeper=CheckpointKeeper(run_dir, cfg.keep_checkpoints), epoch=0, batch=0, global_step=0,
              best_error=float("inf"), batches_per_epoch=len(train_split) // global_batch,
              compiled=compile_, graphs=graphs, warm_steps=WARM_STEPS if device.type == "cuda" else 1)
    run.reset_epoch_stats()
    if resume is not None:
        _restore(run, resume, log)
    _describe(run, lr, log)
    return run


def _configuration(cfg: TrainConfig, given: set[str] | None, log) -> tuple[TrainConfig, dict | None]:
    """The run's configuration and, on --resume, its checkpoint (whose configuration wins)."""
    run_dir = Path(cfg.out)
    if not cfg.resume:
        held = [n for n in ("last.pt", "metrics.jsonl", "config.json") if (run_dir / n).exists()]
        if held:
            raise ConfigError(f"{run_dir} already holds a run ({', '.join(held)}): continue it with --resume, "
                              "or choose another --out")
        return cfg, None
    ckpt = ckpt_io.load_checkpoint(run_dir / "last.pt", map_location="cpu", resume=True)
    if given is None:                            # the API: the config given is the whole truth
        given = set(FIELDS)
    merged, changed = merge_for_resume(ckpt["config"], cfg, given)
    log(f"resuming from {run_dir / 'last.pt'}: epoch {ckpt['epoch'] + 1}, batch {ckpt['batch_in_epoch']}, step "
        f"{ckpt['global_step']}" + (f"; changed: {', '.join(changed)}" if changed else ""))
    return resolve(merged), ckpt


def _devices(cfg: TrainConfig, dist: DistributedContext) -> list[torch.device]:
    if dist.enabled:
        return [dist.device]
    if cfg.parallel != "columns":
        return [resolve_device(cfg.device)]
    # The two columns in one process: two GPUs when there are two, one GPU's two streams, or the CPU.
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return [torch.device("cpu")] * 2
    dev = resolve_device(cfg.device)
    if dev.index is not None or torch.cuda.device_count() < 2:
        return [torch.device("cuda", dev.index or 0)] * 2
    return [torch.device("cuda:0"), torch.device("cuda:1")]


def _backends(cfg: TrainConfig, device: torch.device, devices: list[torch.device], log) -> None:
    torch.use_deterministic_algorithms(cfg.deterministic)  # either way: a run in the same process set it before
    if cfg.deterministic:
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if cfg.memory_cap_gb is not None:
        caps = apply_memory_cap(cfg.memory_cap_gb, devices)
        log("memory cap: " + (", ".join(f"{c['device']} {cfg.memory_cap_gb:g} GiB (fraction {c['fraction']:.4f})"
                                        for c in caps) or "ignored (not on CUDA)"))


def _network(cfg: TrainConfig, num_classes: int, resume: dict | None, log):
    """The grouped network with its first weights: the seed's, --init-from's or the checkpoint's."""
    options = dict(cfg.arch_options, num_classes=num_classes)
    if "input_size" in {f.name for f in dataclasses.fields(get_arch(cfg.arch).config)}:
        options.setdefault("input_size", cfg.crop)
    torch.manual_seed(cfg.seed)                  # the same initial weights on every process, in every form
    model = build_model(cfg.arch, **options)
    if cfg.init_from and resume is None:
        ckpt_io.init_from(model, cfg.init_from, log)
    if resume is not None:
        ckpt_io.load_weights(model, resume["model"], Path(cfg.out) / "last.pt")
    return model, model_options(model), getattr(model.config, "recipe", "paper")


def _batches(cfg: TrainConfig, shards: int) -> tuple[int, int, float]:
    """(global batch, per-process batch, learning rate). The paper's 128 is global, split across DDP
    processes, unless weak scaling is asked for; the columns all read the whole batch."""
    if cfg.batch_per_process:
        global_batch = cfg.batch_per_process * shards
        lr = cfg.lr * (global_batch / 128 if cfg.lr_scaling == "linear" else 1.0)
        return global_batch, cfg.batch_per_process, lr
    if cfg.batch_size % shards:
        raise ConfigError(f"batch {cfg.batch_size} does not split evenly over {shards} processes")
    return cfg.batch_size, cfg.batch_size // shards, cfg.lr


def _restore(run: Run, ckpt: dict, log) -> None:
    """Optimizer, schedule, position and random generators from the checkpoint."""
    run.placement.load_optimizer_state(run.optimizer, ckpt["optimizer"])
    run.schedule.load_state_dict(ckpt["schedule"])
    run.epoch, run.batch, run.global_step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["global_step"]
    run.best_error, run.last_step_save = ckpt["best_val_top1_error"], ckpt["global_step"]
    run.epoch_stats.update(ckpt.get("epoch_stats") or {})
    if run.batch and ckpt.get("global_batch") != run.global_batch:
        raise ConfigError("cannot resume mid-epoch with a different global batch size")
    rng, world = ckpt["rng"], run.dist.world_size
    same = len(rng) == world and (world == 1 or ckpt.get("parallel", "data") == run.cfg.parallel)
    try:
        if not same:
            raise ValueError(f"{len(rng)} process(es) saved, {world} running")
        ckpt_io.set_rng_state(rng[run.dist.rank], run.generators)
    except (RuntimeError, ValueError, TypeError) as e:
        log(f"same sample position, fresh augmentation and dropout randomness ({e})")
        fresh = (run.cfg.seed * 1_000_003 + run.global_step) * 1000
        run.generators["augment"].manual_seed(fresh + (0 if run.placement.columns else run.dist.rank))
        torch.manual_seed(fresh + 500 + run.dist.rank)
    if run.dist.is_main:
        _truncate_metrics(run.run_dir / "metrics.jsonl", ckpt["completed_epochs"])


def _truncate_metrics(path: Path, completed_epochs: int) -> None:
    """Drop log lines of epochs after the checkpoint (they will be run again)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    keep = [line for line in lines if json.loads(line)["epoch"] <= completed_epochs
            and json.loads(line).get("complete", True)]
    path.write_text("".join(line + "\n" for line in keep))


def _describe(run: Run, lr: float, log) -> None:
    """Write RUN/config.json (the truth about this run: options, code version, machine) and say it."""
    cfg, dist, placement = run.cfg, run.dist, run.placement
    n_params = sum(p.numel() for p in placement.model.parameters())
    resolved = {"arch_options_used": run.options_used, "lr": lr, "global_batch": run.global_batch,
                "local_batch": run.local_batch, "world_size": dist.world_size,
                "devices": [str(d) for d in placement.devices], "precision": "bf16" if run.amp else "fp32",
                "channels_last": run.channels_last, "compile": run.compiled, "cuda_graphs": run.graphs}
    parallel = None
    if placement.kind != "single":
        parallel = run_accounting(placement.model.config, run.global_batch, cfg.crop, 2 if run.amp else 4,
                                  placement.kind, placement.describe(), dist.world_size, n_params)
    if dist.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / "config.json").write_text(json.dumps({
            "config": dataclasses.asdict(cfg) | resolved, "parallel": parallel,
            "alexnet": alexnet.__version__, "git_commit": git_commit(), "hardware": hardware(),
            "data": {"source": cfg.data, "classes": len(run.classes), "train_images": len(run.train_split),
                     "val": run.val_name, "val_images": len(run.val_split), "test": run.test_name,
                     "test_images": len(run.test_split) if run.test_split is not None else 0},
        }, indent=2, default=str))
    held = f"; this process holds {n_params:,}" if placement.kind == "columns-distributed" else ""
    log(f"network: {cfg.arch} {run.options_used} ({n_params:,} parameters{held})")
    log(f"data: {cfg.data}: {len(run.classes)} classes, {len(run.train_split):,} train, {len(run.val_split):,} val "
        f"({run.val_name}), test: {run.test_name or 'none'}; crop {cfg.crop} of {run.data.size}")
    speed = ", ".join(n for n, on in (("compiled", run.compiled), ("CUDA graphs", run.graphs)) if on) or "eager"
    log(f"device: {' + '.join(str(d) for d in placement.devices)}{' x' + str(dist.world_size) if dist.enabled else ''}"
        f", {'bf16 autocast' if run.amp else 'fp32'}, {speed}, batch {run.global_batch} (per process "
        f"{run.local_batch}), lr {lr:g}, {cfg.epochs} epochs -> {run.run_dir}")
    log(f"loader: {run.train_feeder.describe()}")
    if run.train_feeder.device_buffers:
        log(f"loader: batches copied into {run.train_feeder.device_buffers} GPU buffers in turn; the step has "
            "a CUDA graph for each, reading its batch in place")
    if run.train_feeder.gpu_workers and not mps_running():  # GPU workers run on CUDA only
        log("loader: the GPU time-slices the GPU workers' kernels with training's (separate processes); "
            f"with NVIDIA MPS running ({START_MPS}) they run side by side, and {GPU_WORKERS_WITH_MPS} GPU "
            f"workers are the default ({GPU_WORKERS_LARGE_BATCH} at {LARGE_BATCH} images or more for one process)")
    if parallel is not None:
        log(f"parallel: {placement.describe()}")
        for line in format_run_accounting(parallel):
            log(line)
