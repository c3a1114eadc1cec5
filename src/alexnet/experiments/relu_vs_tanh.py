"""Figure 1: a four-layer CNN on CIFAR-10 reaches 25% training error about six times faster with
ReLUs than with tanh units (PAPER.md, Layers).

The network is `cifar-fig1`, our reconstruction (see alexnet.models.cifar): the paper says only "a
four-layer convolutional neural network". Both nets have the same layers and the same fan-in scaled
initialisation; only the activation differs. As in the paper, there is no regularisation of any
kind: no dropout (the net has none), weight decay 0, no PCA colour noise, no flips, and no random
crops either (the whole 32x32 image goes in, `input_size=32`). Plain SGD with momentum 0.9 (the
paper's update), batch 128, a constant learning rate.

The learning rate is chosen per activation by a small sweep, "to make training as fast as
possible" (the paper's words): each rate of the grid is trained for `sweep_epochs` epochs with the
first seed, and the rate that reaches the threshold first wins (or, if none does, the one with the
lowest training error at the end). The winner's sweep run is continued, not repeated, as that
seed's full run. Then each activation is trained for `epochs` epochs with every seed.

Training error is the error on the training batches as they are trained on, averaged over the
epoch (the number cuda-convnet printed, which Figure 1 plots). The crossing of the threshold is
interpolated linearly between epochs, from the chance level at epoch 0. A run that never crosses
within `epochs` gives a lower bound for the ratio, reported as such.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from alexnet.experiments import (experiment_data, budget_table, epochs_to_error, format_table, run_many,
                                 run_seconds, seed_summary, time_step)

ACTIVATIONS = ("relu", "tanh")
PAPER_RATIO = 6.0
IMAGE_SIZE = 32


@dataclass
class ReluTanhConfig:
    data: str
    out: str = "runs/relu-vs-tanh"
    epochs: int = 30
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    lrs: list[float] = field(default_factory=lambda: [0.005, 0.01, 0.02, 0.04, 0.08])   # the sweep's grid
    relu_lrs: list[float] | None = None      # per-activation grids, overriding `lrs`
    tanh_lrs: list[float] | None = None
    sweep_epochs: int = 3
    threshold: float = 0.25
    batch_size: int = 128
    train_images: int | None = None          # a class-balanced subset (small budgets); None: all
    test_images: int | None = None
    device: str = "auto"
    precision: str = "auto"
    jobs: int = 1
    plan: bool = False                       # print the budget table and stop


def _train_config(cfg: ReluTanhConfig, data: Path, activation: str, lr: float, seed: int, epochs: int):
    from alexnet.data.prepared import PreparedData
    from alexnet.config import TrainConfig

    splits = PreparedData.open(data).splits
    val = "test" if "test" in splits else ("val" if "val" in splits else None)
    return TrainConfig(
        data=str(data), out=str(Path(cfg.out) / "runs" / f"{activation}-lr{lr:g}-seed{seed}"),
        arch="cifar-fig1", arch_options={"activation": activation, "input_size": IMAGE_SIZE},
        epochs=epochs, batch_size=cfg.batch_size, lr=lr, momentum=0.9, weight_decay=0.0,
        schedule="step", milestones=[], crop=IMAGE_SIZE, image_size=IMAGE_SIZE, flip=False, pca_std=0.0,
        val_split=val, test_crops=(), eval_crops=1, device=cfg.device, precision=cfg.precision, seed=seed,
        keep_checkpoints=0, stall_window=0, progress=False, eval_batch_size=1000)


def _grid(cfg: ReluTanhConfig, activation: str) -> list[float]:
    own = cfg.relu_lrs if activation == "relu" else cfg.tanh_lrs
    return list(own if own else cfg.lrs)


def _crossing(record: dict, threshold: float, classes: int) -> float | None:
    errors = [m["train_top1_error"] for m in record["metrics"]]
    return epochs_to_error(errors, threshold, 1.0 - 1.0 / classes)


def _sweep_key(record: dict, threshold: float, classes: int):
    if record.get("error") or not record["metrics"]:
        return (math.inf, math.inf)
    last = record["metrics"][-1]["train_top1_error"]
    if not math.isfinite(last):
        return (math.inf, math.inf)
    crossed = _crossing(record, threshold, classes)
    return (crossed if crossed is not None else math.inf, last)


def run_relu_vs_tanh(cfg: ReluTanhConfig, log=print) -> dict:
    from alexnet.data.prepared import PreparedData

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = experiment_data(cfg.data, out, IMAGE_SIZE, cfg.train_images, cfg.test_images, log)
    prepared = PreparedData.open(data)
    classes = prepared.num_classes
    n_train = len(prepared.split("train"))
    n_eval = max((len(prepared.split(s)) for s in ("test", "val") if s in prepared.splits), default=0)

    # The plan, from one measured step of each net on this device.
    grids = {a: _grid(cfg, a) for a in ACTIVATIONS}
    rows = []
    for a in ACTIVATIONS:
        timing = time_step("cifar-fig1", {"activation": a}, IMAGE_SIZE, IMAGE_SIZE, cfg.batch_size, cfg.device,
                           cfg.precision)
        sweep = len(grids[a]) > 1
        if sweep:
            rows.append({"what": f"{a} sweep ({len(grids[a])} rates)", "runs": len(grids[a]),
                         "epochs": cfg.sweep_epochs,
                         "seconds_per_run": run_seconds(timing, cfg.sweep_epochs, n_train, n_eval, cfg.batch_size)})
        rows.append({"what": f"{a} seeds" + (" (the first continues its sweep run)" if sweep else ""),
                     "runs": len(cfg.seeds), "epochs": cfg.epochs,
                     "seconds_per_run": run_seconds(timing, cfg.epochs, n_train, n_eval, cfg.batch_size)})
    log(f"Figure 1 (ReLU vs tanh), cifar-fig1 on {data}: {n_train:,} train images, {classes} classes; "
        f"device {timing['device_name']}, {timing['step_seconds'] * 1e3:.1f} ms per step (tanh net, batch "
        f"{cfg.batch_size}); jobs {cfg.jobs}")
    plan = budget_table(rows)
    log("budget (estimated, sequential; --jobs N overlaps runs):\n" + plan)
    if cfg.plan:
        return {"plan": plan, "rows": rows}

    # 1. The learning-rate sweep, first seed.
    chosen, sweep_records = {}, {}
    sweep_seed = cfg.seeds[0]
    todo = [(a, lr) for a in ACTIVATIONS for lr in grids[a] if len(grids[a]) > 1]
    records = run_many([_train_config(cfg, data, a, lr, sweep_seed, cfg.sweep_epochs) for a, lr in todo],
                       cfg.jobs, log)
    for (a, lr), rec in zip(todo, records):
        sweep_records.setdefault(a, {})[lr] = rec
    for a in ACTIVATIONS:
        if len(grids[a]) == 1:
            chosen[a] = grids[a][0]
            continue
        chosen[a] = min(grids[a], key=lambda lr: _sweep_key(sweep_records[a][lr], cfg.threshold, classes))
        log(f"{a}: learning rate {chosen[a]:g} chosen from {', '.join(f'{x:g}' for x in grids[a])}")

    # 2. Every seed at the chosen rate (the sweep's run of the first seed is continued).
    todo = [(a, s) for a in ACTIVATIONS for s in cfg.seeds]
    records = run_many([_train_config(cfg, data, a, chosen[a], s, cfg.epochs) for a, s in todo], cfg.jobs, log)
    runs = {a: {} for a in ACTIVATIONS}
    for (a, s), rec in zip(todo, records):
        runs[a][s] = rec

    result = summarise(cfg, runs, sweep_records, chosen, classes, n_train, str(data), timing)
    (out / "relu_vs_tanh.json").write_text(json.dumps(result, indent=1, default=str))
    plot_relu_vs_tanh(result, out / "relu_vs_tanh.png")
    log(format_result(result))
    log(f"wrote {out / 'relu_vs_tanh.json'} and {out / 'relu_vs_tanh.png'}")
    return result


def summarise(cfg, runs, sweep_records, chosen, classes, n_train, data, timing) -> dict:
    per_act = {}
    for a in ACTIVATIONS:
        crossings = {s: _crossing(rec, cfg.threshold, classes) for s, rec in runs[a].items()}
        per_act[a] = {
            "lr": chosen[a],
            "epochs_to_threshold": seed_summary([crossings[s] for s in cfg.seeds]),
            "per_seed": {str(s): {"epochs_to_threshold": crossings[s],
                                  "train_error": [m["train_top1_error"] for m in rec["metrics"]],
                                  "test_error": [m["val_top1_error"] for m in rec["metrics"]],
                                  "seconds": rec["seconds"], "error": rec.get("error"), "run": rec["run"]}
                         for s, rec in runs[a].items()},
        }
    ratios, bounds = [], []
    for s in cfg.seeds:
        r, t = per_act["relu"]["per_seed"][str(s)]["epochs_to_threshold"], \
            per_act["tanh"]["per_seed"][str(s)]["epochs_to_threshold"]
        if r is not None and t is not None:
            ratios.append(t / r)
        elif r is not None and t is None:
            n_t = len(per_act["tanh"]["per_seed"][str(s)]["train_error"])
            bounds.append(n_t / r)    # tanh had not got there by its last epoch
    # The same ratio at looser thresholds: what a short (CPU) budget can still measure.
    chance = 1.0 - 1.0 / classes
    at = {}
    for t in sorted({0.7, 0.6, 0.5, 0.4, 0.3, cfg.threshold}, reverse=True):
        r_t = []
        for s in cfg.seeds:
            e = {a: epochs_to_error(per_act[a]["per_seed"][str(s)]["train_error"], t, chance) for a in ACTIVATIONS}
            if e["relu"] is not None and e["tanh"] is not None:
                r_t.append(e["tanh"] / e["relu"])
        at[f"{t:g}"] = seed_summary(r_t) | {
            "relu_epochs": seed_summary([epochs_to_error(per_act["relu"]["per_seed"][str(s)]["train_error"], t, chance)
                                         for s in cfg.seeds])["mean"],
            "tanh_epochs": seed_summary([epochs_to_error(per_act["tanh"]["per_seed"][str(s)]["train_error"], t, chance)
                                         for s in cfg.seeds])["mean"]}
    sweep = {a: {f"{lr:g}": {"final_train_error": rec["metrics"][-1]["train_top1_error"] if rec["metrics"] else None,
                             "epochs_to_threshold": _crossing(rec, cfg.threshold, classes),
                             "error": rec.get("error")}
                 for lr, rec in sweep_records.get(a, {}).items()} for a in ACTIVATIONS}
    return {
        "experiment": "relu-vs-tanh (paper Figure 1)", "arch": "cifar-fig1", "data": data,
        "train_images": n_train, "classes": classes, "threshold": cfg.threshold, "epochs": cfg.epochs,
        "seeds": cfg.seeds,
        "sweep_epochs": cfg.sweep_epochs, "batch_size": cfg.batch_size, "device": timing["device_name"],
        "choices": {"weight_decay": 0.0, "dropout": "none in this net", "pca_noise": 0.0, "flips": False,
                    "crops": "none (32x32 input)", "momentum": 0.9, "schedule": "constant learning rate",
                    "training_error": "running error over each epoch's training batches"},
        "activations": per_act, "sweep": sweep,
        "ratio_tanh_over_relu": seed_summary(ratios) | {"lower_bounds": bounds},
        "ratio_at_thresholds": at,
        "paper_ratio": PAPER_RATIO,
    }


def _fmt(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


def headline(result: dict) -> str:
    """The ratio at the paper's threshold; failing that, a bound, or the ratio at the lowest training
    error both activations reached in every seed."""
    t, ratio, n = result["threshold"], result["ratio_tanh_over_relu"], len(result["seeds"])
    if ratio["n"]:
        text = f"tanh/relu at {t:.0%}: {_fmt(ratio['mean'])} +- {_fmt(ratio['std'])} ({ratio['n']}/{n} seeds)"
        if ratio["lower_bounds"]:
            text += f"; > {_fmt(min(ratio['lower_bounds']))} in the others"
        return text
    if ratio["lower_bounds"]:
        return f"tanh never reached {t:.0%} in {result['epochs']} epochs: ratio > {_fmt(min(ratio['lower_bounds']))}"
    reached = [(float(k), v) for k, v in result.get("ratio_at_thresholds", {}).items() if v["n"] == n]
    text = f"neither reached {t:.0%} in {result['epochs']} epochs"
    if reached:
        k, v = min(reached)
        text += f"; at {k:.0%}: tanh/relu {_fmt(v['mean'])} +- {_fmt(v['std'])}"
    return text


def format_result(result: dict) -> str:
    rows = []
    for a, r in result["activations"].items():
        e = r["epochs_to_threshold"]
        rows.append([a, f"{r['lr']:g}", f"{_fmt(e['mean'])} +- {_fmt(e['std'])}",
                     ", ".join(_fmt(v) for v in e["values"]), e["missing"]])
    t = result["threshold"]
    text = format_table(["activation", "lr", f"epochs to {t:.0%} (mean +- sd)", "per seed", "never"], rows)
    line = headline(result)
    rows = [[f"{float(t):.0%}", _fmt(v["relu_epochs"]), _fmt(v["tanh_epochs"]),
             f"{_fmt(v['mean'])} +- {_fmt(v['std'])}", f"{v['n']}/{len(result['seeds'])}"]
            for t, v in result.get("ratio_at_thresholds", {}).items()]
    more = format_table(["training error", "relu epochs", "tanh epochs", "tanh/relu (mean +- sd)", "seeds"], rows)
    return text + "\n" + line + f" (paper: {result['paper_ratio']:g} at 25%)\n" + more


def plot_relu_vs_tanh(result: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), dpi=90)
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
    styles = {"relu": ("tab:blue", "-"), "tanh": ("tab:red", "--")}
    t = result["threshold"]
    for a, r in result["activations"].items():
        colour, ls = styles[a]
        curves = [s["train_error"] for s in r["per_seed"].values() if s["train_error"]]
        chance = 1.0 - 1.0 / result.get("classes", 10)
        curves = [[chance] + c for c in curves]      # epoch 0: chance
        for c in curves:
            ax.plot(range(len(c)), c, color=colour, ls=ls, lw=0.8, alpha=0.35)
        if curves:
            n = min(len(c) for c in curves)
            mean = [sum(c[i] for c in curves) / len(curves) for i in range(n)]
            e = r["epochs_to_threshold"]
            label = (f"{a} (lr {r['lr']:g}): {_fmt(e['mean'], 1)} +- {_fmt(e['std'], 1)} epochs to {t:.0%}"
                     + (f" ({e['missing']} seed(s) never)" if e["missing"] else "")
                     if e["n"] else f"{a} (lr {r['lr']:g}): not at {t:.0%} within {result['epochs']} epochs")
            ax.plot(range(n), mean, color=colour, ls=ls, lw=2, label=label)
    ax.axhline(t, color="k", lw=0.8, ls=":")
    ax.set_title(f"cifar-fig1, {result['train_images']:,} images, {len(result['seeds'])} seed(s): {headline(result)} "
                 f"(paper: {result['paper_ratio']:g} at 25%)", fontsize=8)
    ax.set_xlabel("epochs")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("training error rate")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    for a in ACTIVATIONS:
        pts = sorted((float(lr), v["final_train_error"]) for lr, v in result["sweep"].get(a, {}).items()
                     if v["final_train_error"] is not None and math.isfinite(v["final_train_error"]))
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], "o" + styles[a][1], color=styles[a][0], label=a)
    ax2.set_xscale("log")
    ax2.minorticks_off()
    lrs = sorted({float(lr) for a in ACTIVATIONS for lr in result["sweep"].get(a, {})})
    if lrs:
        ax2.set_xticks(lrs, [f"{lr:g}" for lr in lrs], fontsize=8)
    ax2.set_title(f"learning-rate sweep ({result['sweep_epochs']} epochs)", fontsize=9)
    ax2.set_xlabel("learning rate")
    ax2.set_ylabel("final training error")
    ax2.set_ylim(0, 1)
    if any(result["sweep"].values()):
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)
