"""The jobs of `alexnet experiment cifar-normalisation` (see `alexnet.experiments.cifar_normalisation`):
its configuration, one job per net (its seeds as replicas of one model on one device), and running
jobs in processes, one per device."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from alexnet.errors import ConfigError

NETS = ("cuda-convnet-11pct", "cuda-convnet-13pct", "cuda-convnet-11pct-no-norm")
PAPER_ERROR = {"cuda-convnet-11pct": 11.0, "cuda-convnet-13pct": 13.0}
HELD_IN = 10_000          # training images scored in eval mode


@dataclass
class CifarNormConfig:
    data: str
    out: str = "runs/cifar-normalisation"
    nets: list[str] = field(default_factory=lambda: list(NETS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    devices: list[str] = field(default_factory=lambda: ["auto"])
    precision: str = "auto"
    graph: bool = True                   # CUDA graphs on CUDA devices
    stack_seeds: bool = True
    mean_window: str = "centre"
    drop_eps_b: bool = False
    batch_size: int = 128
    eval_every: int = 10
    checkpoint_every: int = 10            # epochs between saves of a job's progress (it resumes from them)
    short: bool = False
    train_images: int | None = None
    test_images: int | None = None
    plan: bool = False
    smoke: bool = False
    budget_seconds: float | None = None   # stop before training when the plan projects more

    def __post_init__(self):
        unknown = [n for n in self.nets if n not in NETS]
        if unknown:
            raise ConfigError(f"unknown net(s) {', '.join(unknown)}; valid: {', '.join(NETS)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct and at least one, not {self.seeds}")
        if self.mean_window not in ("centre", "same"):
            raise ConfigError(f"mean window must be centre or same, not {self.mean_window!r}")
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        self.devices = [auto if d == "auto" else d for d in self.devices] or [auto]
        if self.batch_size < 1 or self.eval_every < 1 or self.checkpoint_every < 1:
            raise ConfigError("batch size, eval interval and checkpoint interval must be positive")
        if self.short:
            self.train_images = self.train_images or 1000
            self.test_images = self.test_images or 500
            self.eval_every = 1


@dataclass(frozen=True)
class Job:
    net: str
    seeds: tuple[int, ...]
    device: str


# ---------------------------------------------------------------------------------------------- one job


def cuda_flags(dev: torch.device) -> torch.device:
    if dev.type == "cuda":
        torch.cuda.set_device(dev.index if dev.index is not None else torch.cuda.current_device())
        torch.backends.cudnn.benchmark = True          # fixed shapes: pick the fastest algorithms once
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return dev


def _setup(job: Job, cfg: CifarNormConfig, data_dir: str, log):
    from alexnet.experiments.cifar_normalisation_trainer import DeviceData, Trainer
    from alexnet.models import build_model
    from alexnet.runtime import amp_dtype, resolve_device

    dev = cuda_flags(resolve_device(job.device))
    data = DeviceData.from_prepared(data_dir, dev)
    model = build_model(job.net, replicas=len(job.seeds), init_seeds=job.seeds, num_classes=data.num_classes)
    trainer = Trainer(model, data, list(job.seeds), cfg.batch_size, cfg.mean_window,
                      graph=cfg.graph and dev.type == "cuda", amp_dtype=amp_dtype(cfg.precision, dev), log=log)
    return trainer, data


def _resume_point(trainer, checkpoint: Path | None, spec: dict | None, log) -> dict | None:
    """The progress saved in `checkpoint` (the trainer's state loaded from it), if it was saved by a
    job of the same settings; None otherwise."""
    from alexnet.errors import CheckpointError
    from alexnet.experiments.cifar_normalisation_trainer import load_trainer_state

    if checkpoint is None or not checkpoint.exists():
        return None
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file: one line naming it
        raise CheckpointError(f"{checkpoint}: cannot be read ({type(e).__name__}); delete it to start the job "
                              "again") from None
    if saved.get("spec") != spec:
        log(f"{checkpoint} was saved with other settings: starting again")
        return None
    load_trainer_state(trainer, saved["trainer"])
    return saved["progress"]


def run_job(job: Job, cfg: CifarNormConfig, data_dir: str, log=print, checkpoint: Path | None = None,
            spec: dict | None = None) -> dict:
    """Train one net for its seeds (replicas) through the whole schedule, then test it. With
    `checkpoint`, the schedule's progress is saved there every `cfg.checkpoint_every` epochs, and a
    job stopped at any moment continues from the last save (if `spec`, its settings, match)."""
    from alexnet.checkpoint import save_checkpoint
    from alexnet.experiments.cifar_normalisation_trainer import data_batches, run_schedule, schedule, trainer_state
    from alexnet.runtime import hardware

    t0 = time.perf_counter()
    trainer, data = _setup(job, cfg, data_dir, log)
    phases = schedule(trainer.model.layers, cfg.short, cfg.drop_eps_b)
    log(f"{job.net}, seeds {list(job.seeds)} on {job.device}: {sum(p.epochs for p in phases)} epochs in "
        f"{len(phases)} phases, {data.train.shape[0]:,} train / {data.test.shape[0]:,} test images, "
        f"{'CUDA graphs' if trainer.want_graph else 'eager'}")
    resume = _resume_point(trainer, checkpoint, spec, log)

    def save(progress: dict) -> None:
        save_checkpoint({"spec": spec, "progress": progress, "trainer": trainer_state(trainer)}, checkpoint)

    run = run_schedule(trainer, phases, cfg.eval_every, log, resume=resume,
                       save=save if checkpoint is not None else None, save_every=cfg.checkpoint_every)
    t_test = time.perf_counter()
    held = torch.from_numpy(np.sort(np.concatenate(data_batches(data.train.shape[0]))[:HELD_IN])).to(data.train.device)
    one = trainer.score(data.test, data.test_labels, 1)
    ten = trainer.score(data.test, data.test_labels, 10)
    train_eval = trainer.score(data.train[held], data.train_labels[held], 1)
    per_seed = {}
    for i, s in enumerate(job.seeds):
        per_seed[str(s)] = {
            "test_error_1view": one["error"][i], "test_error_10views": ten["error"][i],
            "test_nats_1view": one["nats"][i], "test_nats_10views": ten["nats"][i],
            "train_error_eval": train_eval["error"][i],
            "train_error_running": run["train_error"][i][-1], "train_loss_running": run["train_loss"][i][-1],
            "held_out_error": [h["error"][i] for h in run["held_out"]],
            "train_error_curve": run["train_error"][i], "train_loss_curve": run["train_loss"][i]}
    return {"net": job.net, "seeds": list(job.seeds), "device": job.device, "hardware": hardware(),
            "graph_replays": run["graph_replays"], "steps": run["steps"], "phases": run["phases"],
            "held_out_epochs": [h["epoch"] for h in run["held_out"]],
            "train_seconds": run["seconds"], "test_seconds": time.perf_counter() - t_test, "held_in_images": len(held),
            "wall_seconds": time.perf_counter() - t0, "ms_per_step": 1e3 * run["seconds"] / max(run["steps"], 1),
            "per_seed": per_seed}


def _spec(job: Job, cfg: CifarNormConfig, data_dir: str) -> dict:
    keep = ("precision", "graph", "mean_window", "drop_eps_b", "batch_size", "short", "eval_every")
    return {"net": job.net, "seeds": list(job.seeds), "data": data_dir, **{k: getattr(cfg, k) for k in keep}}


def _job_file(out: Path, job: Job) -> Path:
    return out / "runs" / f"{job.net}-seeds{'-'.join(map(str, job.seeds))}.json"


def _worker(job: Job, cfg: CifarNormConfig, data_dir: str, out: str, threads: int) -> dict:
    """Run a job (in this process or a spawned one) unless its result is already there."""
    from alexnet.runtime import atomic_write_text

    torch.set_num_threads(threads)
    path, spec = _job_file(Path(out), job), _spec(job, cfg, data_dir)
    if path.exists():
        done = json.loads(path.read_text())
        if done.get("spec") == spec:
            print(f"[{job.net}] reusing {path}", flush=True)
            return done
    checkpoint = path.with_suffix(".ckpt.pt")
    result = run_job(job, cfg, data_dir, log=lambda m: print(f"[{job.net} {job.device}] {m}", flush=True),
                     checkpoint=checkpoint, spec=spec)
    result["spec"] = spec
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=1))
    checkpoint.unlink(missing_ok=True)          # the result holds everything now
    return result


def run_jobs(jobs: list[Job], cfg: CifarNormConfig, data_dir: str, out: Path) -> list[dict]:
    """GPU jobs all at once, one process each (jobs on one GPU share it); CPU jobs one after the
    other in this process (they would only share its cores)."""
    if len(jobs) == 1 or all(j.device == "cpu" for j in jobs):
        return [_worker(j, cfg, data_dir, str(out), torch.get_num_threads()) for j in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // len(jobs))
    with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_worker, j, cfg, data_dir, str(out), threads) for j in jobs]
        return [f.result() for f in futures]


# ---------------------------------------------------------------------------------------------- plan
