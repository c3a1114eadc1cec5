"""The paper's design choices, each switched off in turn: test error per variant over several seeds,
beside the direction and size the paper reports (PAPER.md, Architecture and Layers).

| variant | switched | the paper, when it is removed |
|---|---|---|
| baseline | - (all of the paper's choices) | - |
| no-response-norm | response normalisation off | +1.4 top-1, +1.2 top-5 (ImageNet); a 4-layer CIFAR-10 CNN: 11% -> 13% |
| non-overlapping-pool | max-pool 2/2 instead of 3/2 | +0.4 top-1, +0.3 top-5 |
| no-dropout | dropout 0 in fc6, fc7 | "substantial overfitting" (no number) |
| no-pca-noise | PCA colour noise off | over +1% top-1 |
| one-column | one column, half the kernels in conv1-4 | +1.7 top-1, +1.2 top-5 |

Every variant is trained with the same recipe (the paper's: SGD, momentum 0.9, weight decay 5e-4,
batch 128, random crops and flips, PCA noise 0.1 unless switched off) for `epochs` epochs, the
learning rate divided by 10 at half and three quarters of them (the paper's three drops on a
plateau need ~90 epochs). The test error is the final model's, one centre crop, on the test split
(or val); the per-epoch validation runs on that split only to be logged: nothing is selected on
it. Agreement with the paper is judged by sign and seed spread: the difference of the means beside
twice its standard error over seeds. Our nets are small and trained briefly, and regularisers
(dropout, PCA noise) slow early training, so short budgets bias against them: say so when reading.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alexnet.experiments import (budget_table, experiment_data, format_table, run_many, run_seconds,
                                 seed_summary, time_step)


@dataclass(frozen=True)
class Variant:
    name: str
    switched: str
    arch: dict
    train: dict
    paper: str                       # what the paper reports when the feature is removed
    paper_top1: float | None         # ImageNet top-1 points, + = worse without the feature


VARIANTS = {v.name: v for v in [
    Variant("baseline", "all of the paper's choices", {}, {}, "-", None),
    Variant("no-response-norm", "response normalisation off", {"response_norm": False}, {},
            "+1.4 top-1, +1.2 top-5; CIFAR-10 4-layer CNN 11% -> 13%", 1.4),
    Variant("non-overlapping-pool", "max-pool 2/2 instead of 3/2", {"pooling": "non-overlapping"}, {},
            "+0.4 top-1, +0.3 top-5", 0.4),
    Variant("no-dropout", "dropout 0 in fc6, fc7", {"dropout": 0.0}, {}, "substantial overfitting (no number)", None),
    Variant("no-pca-noise", "PCA colour noise off", {}, {"pca_std": 0.0}, "over +1 top-1", 1.0),
    Variant("one-column", "one column, half the kernels in conv1-4", {"columns": 1}, {},
            "+1.7 top-1, +1.2 top-5", 1.7),
]}


@dataclass
class AblationConfig:
    data: str
    out: str = "runs/ablations"
    arch: str = "cifar-alexnet"
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    epochs: int = 12
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    lr: float = 0.01
    batch_size: int = 128
    train_images: int | None = None
    test_images: int | None = None
    device: str = "auto"
    precision: str = "auto"
    jobs: int = 1
    plan: bool = False


def milestones(epochs: int) -> list[int]:
    return sorted({m for m in (round(epochs * 0.5), round(epochs * 0.75)) if 1 <= m < epochs})


def _train_config(cfg: AblationConfig, data: Path, variant: Variant, seed: int, image_size: int):
    from alexnet.data.prepared import PreparedData
    from alexnet.config import TrainConfig

    splits = PreparedData.open(data).splits
    val = "test" if "test" in splits else ("val" if "val" in splits else None)
    fields = dict(data=str(data), out=str(Path(cfg.out) / "runs" / f"{variant.name}-seed{seed}"), arch=cfg.arch,
                  arch_options=dict(variant.arch), epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                  momentum=0.9, weight_decay=5e-4, schedule="step", milestones=milestones(cfg.epochs), flip=True,
                  pca_std=0.1, val_split=val, test_crops=(), eval_crops=1, device=cfg.device,
                  precision=cfg.precision, seed=seed, keep_checkpoints=0, progress=False,
                  eval_batch_size=1000 if image_size <= 64 else 256)
    fields.update(variant.train)
    return TrainConfig(**fields)


def verdict(delta: float | None, se: float | None, n_min: int) -> str:
    """The paper says every one of these features lowers the error: delta (ablated - baseline) > 0."""
    if delta is None:
        return "no result"
    if n_min < 2 or se is None:
        return ("same sign" if delta > 0 else "opposite sign") + " (one seed: spread unknown)"
    if delta > 2 * se:
        return "agrees: worse without it, beyond seed spread"
    if delta > 0:
        return "same sign, within seed spread"
    if delta >= -2 * se:
        return "opposite sign, within seed spread"
    return "disagrees: better without it, beyond seed spread"


def run_ablations(cfg: AblationConfig, log=print) -> dict:
    from alexnet.data.prepared import PreparedData
    from alexnet.errors import ConfigError
    from alexnet.models import get_arch

    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    names = ["baseline"] + [v for v in cfg.variants if v != "baseline"]
    arch = get_arch(cfg.arch)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = experiment_data(cfg.data, out, arch.image_size, cfg.train_images, cfg.test_images, log)
    prepared = PreparedData.open(data)
    n_train = len(prepared.split("train"))
    n_eval = max((len(prepared.split(s)) for s in ("test", "val") if s in prepared.splits), default=0)

    rows, timings = [], {}
    for name in names:
        v = VARIANTS[name]
        # Dropout and PCA noise cost nothing measurable: those variants are timed with the baseline.
        key = json.dumps({k: x for k, x in v.arch.items() if k != "dropout"}, sort_keys=True)
        if key not in timings:
            timings[key] = time_step(cfg.arch, v.arch, arch.crop, arch.image_size, cfg.batch_size, cfg.device,
                                     cfg.precision)
        rows.append({"what": name, "runs": len(cfg.seeds), "epochs": cfg.epochs,
                     "seconds_per_run": run_seconds(timings[key], cfg.epochs, n_train, n_eval, cfg.batch_size)})
    base_t = timings[json.dumps({}, sort_keys=True)]
    log(f"ablations of {cfg.arch} on {data}: {n_train:,} train, {n_eval:,} test images; {len(names)} variants x "
        f"{len(cfg.seeds)} seeds x {cfg.epochs} epochs; device {base_t['device_name']}, "
        f"{base_t['step_seconds'] * 1e3:.1f} ms per step (baseline, batch {cfg.batch_size}); jobs {cfg.jobs}")
    plan = budget_table(rows)
    log("budget (estimated, sequential; --jobs N overlaps runs):\n" + plan)
    if cfg.plan:
        return {"plan": plan, "rows": rows}

    todo = [(name, s) for name in names for s in cfg.seeds]
    records = run_many([_train_config(cfg, data, VARIANTS[n], s, arch.image_size) for n, s in todo], cfg.jobs, log)
    per = {n: {} for n in names}
    for (n, s), rec in zip(todo, records):
        per[n][s] = rec
        rec["train_error_eval"] = held_in_error(rec, data, cfg.device)

    result = summarise(cfg, names, per, str(data), n_train, n_eval, base_t["device_name"])
    (out / "ablations.json").write_text(json.dumps(result, indent=1, default=str))
    plot_ablations(result, out / "ablations.png")
    log(format_result(result))
    log(f"wrote {out / 'ablations.json'} and {out / 'ablations.png'}")
    return result


def _final(rec: dict, key: str) -> float | None:
    if rec.get("error") or not rec["metrics"]:
        return None
    v = rec["metrics"][-1][key]
    return v if math.isfinite(v) else None


HELD_IN_IMAGES = 10_000


def held_in_error(rec: dict, data: Path, device: str, images: int = HELD_IN_IMAGES) -> float | None:
    """Top-1 error of a run's final network on training images it learned from, measured as the test
    is: eval mode (no dropout), the centre crop, no flips or colour noise. A fixed random subset of
    `images` training images (all, if fewer). The running training error of the metrics is taken on
    augmented views with dropout on, so it overstates the error the net makes on its training data:
    argue about overfitting with this one. None when the run failed or left no checkpoint."""
    import numpy as np

    from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
    from alexnet.data.prepared import PreparedData
    from alexnet.evaluate import evaluate_split
    from alexnet.runtime import resolve_device

    last = Path(rec["run"]) / "last.pt"
    if rec.get("error") or not last.exists():
        return None
    dev = resolve_device(device)
    ckpt = load_checkpoint(last)
    model = model_from_checkpoint(ckpt).to(dev)
    train = PreparedData.open(data).split("train")
    pick = np.sort(np.random.default_rng(0).permutation(len(train))[:images])
    amp = torch.bfloat16 if dev.type == "cuda" else None
    result = evaluate_split(model, train.subset(pick), ckpt["mean"].to(dev), ckpt["crop"], 1, device=dev,
                            amp_dtype=amp, channels_last=dev.type == "cuda", input_scales=ckpt["input_scale"],
                            batch_size=500)
    return result["top1_error"]


def summarise(cfg, names, per, data, n_train, n_eval, device) -> dict:
    variants = {}
    for n in names:
        v = VARIANTS[n]
        variants[n] = {
            "switched": v.switched, "paper": v.paper, "paper_top1_points": v.paper_top1,
            "test_top1_error": seed_summary([_final(per[n][s], "val_top1_error") for s in cfg.seeds]),
            "test_top5_error": seed_summary([_final(per[n][s], "val_top5_error") for s in cfg.seeds]),
            "final_train_error": seed_summary([_final(per[n][s], "train_top1_error") for s in cfg.seeds]),
            "train_error_eval": seed_summary([per[n][s].get("train_error_eval") for s in cfg.seeds]),
            "seconds": sum(per[n][s]["seconds"] for s in cfg.seeds),
            "errors": [per[n][s]["error"] for s in cfg.seeds if per[n][s].get("error")],
        }
    base = variants["baseline"]["test_top1_error"]
    for n in names[1:]:
        t = variants[n]["test_top1_error"]
        if t["mean"] is None or base["mean"] is None:
            delta = se = None
        else:
            delta = 100 * (t["mean"] - base["mean"])
            se = 100 * math.sqrt((t["std"] ** 2) / t["n"] + (base["std"] ** 2) / base["n"])
        variants[n]["delta_top1_points"] = delta
        variants[n]["delta_se_points"] = se
        variants[n]["verdict"] = verdict(delta, se, min(t["n"], base["n"]))
    return {"experiment": "ablations", "arch": cfg.arch, "data": data, "train_images": n_train,
            "test_images": n_eval, "epochs": cfg.epochs, "seeds": cfg.seeds, "lr": cfg.lr,
            "milestones": milestones(cfg.epochs), "batch_size": cfg.batch_size, "device": device,
            "variants": variants}


def _pct(x, digits=2):
    return "-" if x is None else f"{100 * x:.{digits}f}"


def format_result(result: dict) -> str:
    rows = []
    for n, v in result["variants"].items():
        t = v["test_top1_error"]
        delta = v.get("delta_top1_points")
        held_in = v.get("train_error_eval", {}).get("mean")
        rows.append([n, f"{_pct(t['mean'])} +- {_pct(t['std'])}", _pct(v["final_train_error"]["mean"]), _pct(held_in),
                     "" if delta is None else f"{delta:+.2f} +- {v['delta_se_points']:.2f}",
                     v["paper"], v.get("verdict", "")])
    head = f"{result['arch']}, {result['epochs']} epochs, seeds {result['seeds']}, test top-1 error % (1 crop)"
    return head + "\n" + format_table(
        ["variant", "test top-1 % (mean +- sd)", "train % (running)", "train % (eval)", "vs baseline (pts +- se)",
         "paper (removed)", "verdict"], rows) + (
        "\ntrain % (running): last epoch's training batches as trained on (augmented, dropout on); "
        f"train % (eval): {HELD_IN_IMAGES:,} training images, centre crop, eval mode")


def plot_ablations(result: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    names = list(result["variants"])
    fig = Figure(figsize=(9, 3.6), dpi=90)
    ax = fig.subplots()
    for i, n in enumerate(names):
        t = result["variants"][n]["test_top1_error"]
        vals = [100 * x for x in t["values"] if x is not None]
        if not vals:
            continue
        colour = "tab:gray" if n == "baseline" else "tab:blue"
        ax.bar(i, 100 * t["mean"], yerr=100 * t["std"], color=colour, alpha=0.6, capsize=4)
        ax.plot([i] * len(vals), vals, "k.", ms=5)
        delta = result["variants"][n].get("delta_top1_points")
        note = "" if delta is None else f"{delta:+.1f}"
        paper = result["variants"][n]["paper_top1_points"]
        if paper is not None:
            note += f"\n(paper +{paper:g})"
        ax.annotate(note, (i, 100 * t["mean"]), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=7)
    base = result["variants"]["baseline"]["test_top1_error"]["mean"]
    if base is not None:
        ax.axhline(100 * base, color="tab:gray", lw=0.8, ls=":")
    ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
    ax.set_ylabel("test top-1 error (%)")
    ax.set_title(f"{result['arch']}: each choice switched off ({result['epochs']} epochs, {len(result['seeds'])} "
                 f"seed(s); points above bars: change vs baseline)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)
