"""The paper's CIFAR-10 claim (section 3.3): a four-layer net reaches 13% test error without response
normalisation and 11% with it. `alexnet experiment cifar-normalisation` trains cuda-convnet's two
configurations (`cuda-convnet-13pct`, `cuda-convnet-11pct`) and the clean ablation (the 11pct net
with its two normalisation layers removed, `cuda-convnet-11pct-no-norm`) with cuda-convnet's recipe,
over several seeds, and reports the test error beside the paper's.

The recipe, as cuda-convnet ran it (sources: `convdata.py`, `src/layer.cu`, `include/weights.cuh`,
`src/worker.cu`, the layer-params files and `docs/Methodology.md` of mbrukman/cuda-convnet):

- Data: the 50,000 training images as five data batches of 10,000 (a fixed random split; batch 5
  held out while the schedule says so), images in a fixed order: cuda-convnet never shuffled, every
  epoch replays the same minibatches of 128 (78 per data batch, then one of 16) with fresh crops.
- Views: a random 24x24 window (offsets 0-8) of the 32x32 image, mirrored with probability 1/2,
  minus the mean image's *centre* 24x24 window whatever the offset or flip (the data provider
  crops its mean once, at the centre). Pixels stay in the 0-255 scale.
- Update, per layer (`Weights::update`, `*Layer::bpropWeights`): inc = mom*inc + (eps/n) * sum of
  the n per-image gradients of log p(label) - wc*eps*w; w += inc; biases the same with epsB and no
  decay. That is `PaperSGD` on the mean log loss, with per-layer groups.
- Schedule: 11pct: ~350 epochs on batches 1-4, ~150 on 1-5, 10 at epsW/10, 10 at epsW/100 (epsB
  is not lowered: the files lower "epsW"). 13pct: 100, 40, 10, 10.
- Test: 10 views (4 corners, centre, each mirrored), softmax averaged (`--multiview-test`); also the
  centre view alone. Training error is reported twice: as cuda-convnet printed it (running, on the
  augmented views of the last epoch) and on 10,000 training images in eval mode, centre view.

Deviations, each an option: `--precision` (auto: bf16 autocast on CUDA; cuda-convnet was fp32),
`--mean-window same` (subtract the mean at the view's own window, as `alexnet.data.augment` does
for ImageNet), `--drop-eps-b` (lower epsB with epsW), `--short` (a few epochs of every phase on a
small class-balanced subset: CI). Seeds train as replicas of one model (`replicas`, one process
per net) unless `--no-stack-seeds`; a replica computes exactly the single net. The seeds share the
data batches and the minibatch order (cuda-convnet's, fixed) and differ in initial weights and in
their crops and flips.

Stopping: each job saves its progress every `--checkpoint-every` epochs (default 10) beside its
result (`runs/NET-seedsS.ckpt.pt`, written atomically); the same command with the same `--out`
reuses finished jobs and continues the others from their last save, exactly as if never stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from alexnet.errors import ConfigError
from alexnet.experiments import budget_table, experiment_data

from alexnet.experiments.cifar_normalisation_jobs import (HELD_IN, NETS, PAPER_ERROR, CifarNormConfig, Job,  # noqa: F401
                                                         cuda_flags,
                                                         run_job, run_jobs)

def steps_of(net: str, cfg: CifarNormConfig, n_train: int) -> tuple[int, int]:
    """(epochs, steps) of a net's schedule on `n_train` training images."""
    from alexnet.experiments.cifar_normalisation_trainer import BATCHES, schedule
    from alexnet.models import get_arch

    layers = get_arch(net).config.LAYERS
    per_batch = -(-(n_train // BATCHES) // cfg.batch_size)
    phases = schedule(layers, cfg.short, cfg.drop_eps_b)
    return sum(p.epochs for p in phases), sum(p.epochs * p.batches * per_batch for p in phases)


def time_steps(net: str, replicas: int, device: str, cfg: CifarNormConfig, steps: int | None = None) -> dict:
    """Measured seconds per training step of `net` with `replicas` seeds on `device`, as the run
    will take them (CUDA graph replays on CUDA), on random images."""
    from alexnet.experiments.cifar_normalisation_trainer import DeviceData, Trainer, data_batches, minibatch_table
    from alexnet.models import build_model
    from alexnet.runtime import amp_dtype, resolve_device

    dev = cuda_flags(resolve_device(device))
    cuda = dev.type == "cuda"
    steps = steps or (50 if cuda else 2)
    g = torch.Generator().manual_seed(0)
    n = 5 * cfg.batch_size
    data = DeviceData(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (n,), generator=g), torch.zeros(1, 3, 32, 32, dtype=torch.uint8),
                      torch.zeros(1, dtype=torch.long), torch.full((3, 32, 32), 120.0), 10, dev)
    model = build_model(net, replicas=replicas, init_seeds=tuple(range(replicas)))
    trainer = Trainer(model, data, list(range(replicas)), cfg.batch_size, cfg.mean_window,
                      graph=cfg.graph and cuda, amp_dtype=amp_dtype(cfg.precision, dev), log=lambda m: None)
    index, valid = minibatch_table(data_batches(n), cfg.batch_size)
    trainer.set_phase(index, valid, 1.0, 1.0)
    trainer.epoch(5 if cuda else 1)            # warm-up (and the graph's capture)
    if cuda:
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(steps // len(index) + 1):
        trainer.epoch(min(steps, len(index)))
    if cuda:
        torch.cuda.synchronize(dev)
    done = (steps // len(index) + 1) * min(steps, len(index))
    return {"step_seconds": (time.perf_counter() - t0) / done, "graph": trainer.graph is not None,
            "device_name": torch.cuda.get_device_name(dev) if cuda else "cpu"}


def make_jobs(cfg: CifarNormConfig, estimate: dict[str, float]) -> list[Job]:
    """Jobs (a net and its seeds, or one seed with --no-stack-seeds) on devices, the longest first
    onto the least loaded device."""
    groups = [tuple(cfg.seeds)] if cfg.stack_seeds else [(s,) for s in cfg.seeds]
    todo = sorted(((n, g) for n in cfg.nets for g in groups), key=lambda j: -estimate[j[0]])
    load = {d: 0.0 for d in cfg.devices}
    jobs = []
    for net, seeds in todo:
        dev = min(load, key=load.get)
        load[dev] += estimate[net]
        jobs.append(Job(net, seeds, dev))
    return jobs


def plan(cfg: CifarNormConfig, n_train: int, log=print) -> dict:
    """Time a few steps of each net, print the budget table and the jobs per device."""
    replicas = len(cfg.seeds) if cfg.stack_seeds else 1
    runs = 1 if cfg.stack_seeds else len(cfg.seeds)
    rows, estimate, timing = [], {}, {}
    for net in cfg.nets:
        timing[net] = time_steps(net, replicas, cfg.devices[0], cfg)
        epochs, steps = steps_of(net, cfg, n_train)
        estimate[net] = steps * timing[net]["step_seconds"] * 1.05 + 10      # + tests, start-up
        rows.append({"what": f"{net} ({replicas} seed(s) per run)", "runs": runs, "epochs": epochs,
                     "seconds_per_run": estimate[net]})
        log(f"{net}: {steps:,} steps per run, {1e3 * timing[net]['step_seconds']:.2f} ms per step with "
            f"{replicas} replica(s) on {timing[net]['device_name']} ({'graph' if timing[net]['graph'] else 'eager'})")
        if replicas > 1 and timing[net]["graph"]:        # what stacking the seeds buys, measured
            one = time_steps(net, 1, cfg.devices[0], cfg)["step_seconds"]
            timing[net]["single_step_seconds"] = one
            log(f"  one seed alone: {1e3 * one:.2f} ms per step; {replicas} stacked cost "
                f"{timing[net]['step_seconds'] / one:.2f}x one (separate runs: {replicas}x)")
    jobs = make_jobs(cfg, estimate)
    per_dev = {d: sum(estimate[j.net] for j in jobs if j.device == d) for d in cfg.devices}
    text = budget_table(rows) + "\n" + "\n".join(
        f"{d}: {', '.join(j.net for j in jobs if j.device == d) or '-'} (about {per_dev[d]:.0f} s)" for d in cfg.devices)
    text += f"\nprojected wall time: about {max(per_dev.values()):.0f} s (the busiest device)"
    log("budget (estimated from the timed steps; jobs on one device run side by side):\n" + text)
    return {"plan": text, "rows": rows, "timing": timing, "jobs": [asdict(j) for j in jobs], "estimate": estimate}


# ---------------------------------------------------------------------------------------------- the experiment


def run_cifar_normalisation(cfg: CifarNormConfig, log=print) -> dict:
    from alexnet.experiments.cifar_normalisation_report import format_result, summarise
    from alexnet.runtime import atomic_write_text

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.smoke:
        from alexnet.experiments.cifar_normalisation_report import smoke

        return smoke(cfg, log)
    data = experiment_data(cfg.data, out, 32, cfg.train_images, cfg.test_images, log)
    from alexnet.data.prepared import PreparedData

    n_train = len(PreparedData.open(data).split("train"))
    planned = plan(cfg, n_train, log)
    if cfg.plan:
        return planned
    projected = max(sum(planned["estimate"][j["net"]] for j in planned["jobs"] if j["device"] == d) for d in cfg.devices)
    if cfg.budget_seconds is not None and projected > cfg.budget_seconds:
        raise ConfigError(f"the plan projects {projected:.0f} s, over --budget-seconds {cfg.budget_seconds:g}: "
                          "nothing trained (fewer seeds or nets, or more devices)")
    t0 = time.perf_counter()
    results = run_jobs([Job(**j) for j in planned["jobs"]], cfg, str(data), out)
    result = summarise(cfg, results, str(data), n_train, time.perf_counter() - t0)
    atomic_write_text(out / "cifar_normalisation.json", json.dumps(result, indent=1))
    log(f"wrote {out / 'cifar_normalisation.json'}")
    try:
        from alexnet.experiments.cifar_normalisation_report import plot_cifar_normalisation

        log(f"wrote {plot_cifar_normalisation(result, out / 'cifar_normalisation.png')}")
    except ImportError:
        log("no figure: matplotlib is not installed (pip install 'alexnet[figures]')")
    log(format_result(result))
    return result


# ---------------------------------------------------------------------------------------------- command line


def add_parser(subparsers) -> None:
    """`alexnet experiment cifar-normalisation` (its options come from CifarNormConfig)."""
    import argparse

    e = subparsers.add_parser("cifar-normalisation", help="section 3.3: cuda-convnet's 13%% and 11%% CIFAR-10 nets "
                                                          "and the 11%% net without normalisation, over seeds")
    e.add_argument("--data", required=True, help="CIFAR-10 image folders (train/, test/) or an `alexnet prepare` output")
    e.add_argument("--out", help="output directory (default runs/cifar-normalisation)")
    e.add_argument("--nets", nargs="+", choices=NETS)
    e.add_argument("--seeds", type=int, nargs="+")
    e.add_argument("--devices", nargs="+", help="e.g. cuda:0 cuda:1: the runs are spread over them (default auto)")
    e.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="auto: bf16 autocast on CUDA, fp32 on CPU")
    e.add_argument("--graph", action=argparse.BooleanOptionalAction, default=None, help="CUDA graphs (default on)")
    e.add_argument("--stack-seeds", action=argparse.BooleanOptionalAction, default=None,
                   help="train the seeds of a net as replicas of one model, one process per net (default on)")
    e.add_argument("--mean-window", choices=["centre", "same"], help="cuda-convnet: centre (default)")
    e.add_argument("--drop-eps-b", action="store_true", default=None, help="lower epsB with epsW (the files do not)")
    e.add_argument("--batch-size", type=int, help="cuda-convnet's --mini (128)")
    e.add_argument("--eval-every", type=int, help="epochs between held-out evaluations (default 10)")
    e.add_argument("--checkpoint-every", type=int,
                   help="epochs between saves of each job's progress (default 10); a stopped experiment run "
                        "again with the same --out continues every unfinished job from its last save")
    e.add_argument("--train-images", type=int, help="a class-balanced subset of train")
    e.add_argument("--test-images", type=int, help="a class-balanced subset of test")
    e.add_argument("--short", action="store_true", default=None,
                   help="CI: every phase, 1-2 epochs each, on 1,000 train / 500 test images")
    e.add_argument("--plan", action="store_true", default=None, help="print the budget table and stop")
    e.add_argument("--smoke", action="store_true", default=None,
                   help="a few steps of each net, eager and as CUDA graphs, compared (CUDA)")
    e.add_argument("--budget-seconds", type=float, help="stop before training if the plan projects more than this")


def main(args) -> int:
    fields = {k: v for k, v in vars(args).items() if k in CifarNormConfig.__dataclass_fields__ and v is not None}
    run_cifar_normalisation(CifarNormConfig(**fields))
    return 0
