"""What `alexnet experiment cifar-normalisation` reports: the summary over seeds, the printed table,
and the smoke test of the GPU path (eager and CUDA-graph steps from the same start must agree)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from alexnet.experiments import experiment_data, format_table, seed_summary
from alexnet.experiments.cifar_normalisation_jobs import NETS, PAPER_ERROR, CifarNormConfig

KEYS = ("test_error_1view", "test_error_10views", "train_error_eval", "train_error_running",
        "test_nats_1view", "test_nats_10views")


def difference(a: dict, b: dict) -> dict:
    """a - b of two seed summaries, in points: the difference of the means and its standard error
    sqrt(sd_a^2 / n_a + sd_b^2 / n_b) (None where a side has no result)."""
    if a["mean"] is None or b["mean"] is None:
        return {"points": None, "se": None}
    return {"points": 100 * (a["mean"] - b["mean"]), "se": 100 * math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])}


def jpeg_share(data) -> float | None:
    """The share of a prepared store's training images that were JPEG files (None: not recorded).
    JPEG is lossy: for a JPEG copy of CIFAR-10 (quality 75, 4:2:0) a dose-response measurement
    projects the nets' test error about 3 points above the original arrays' (docs/RESULTS.md)."""
    listing = Path(data) / "train.files.txt"
    if not listing.exists():
        return None
    names = [n for n in listing.read_text().splitlines() if n.strip()]
    return sum(n.lower().endswith((".jpg", ".jpeg")) for n in names) / len(names) if names else None


def summarise(cfg: CifarNormConfig, results: list[dict], data: str, n_train: int, seconds: float) -> dict:
    nets = {}
    for net in cfg.nets:
        runs = [r for r in results if r["net"] == net]
        per_seed = {str(s): v for r in runs for s, v in r["per_seed"].items()}
        per_seed = {str(s): per_seed[str(s)] for s in cfg.seeds if str(s) in per_seed}
        nets[net] = {"paper_error_percent": PAPER_ERROR.get(net), "per_seed": per_seed,
                     "wall_seconds": {s: r["wall_seconds"] for r in runs for s in map(str, r["seeds"])},
                     "steps": runs[0]["steps"] if runs else None,
                     "ms_per_step": [r["ms_per_step"] for r in runs], "devices": [r["device"] for r in runs],
                     "graph_replays": sum(r["graph_replays"] for r in runs), "phases": runs[0]["phases"] if runs else [],
                     "held_in_images": runs[0]["held_in_images"] if runs else None,
                     **{k: seed_summary([v[k] for v in per_seed.values()]) for k in KEYS}}
    comparisons = {}
    for a, b, what in (("cuda-convnet-11pct", "cuda-convnet-11pct-no-norm", "the clean ablation: 11pct minus no-norm"),
                       ("cuda-convnet-11pct", "cuda-convnet-13pct", "the paper's two files: 11pct minus 13pct")):
        if a in nets and b in nets:
            comparisons[f"{a} - {b}"] = {"what": what, **{k: difference(nets[a][k], nets[b][k])
                                                          for k in ("test_error_1view", "test_error_10views")}}
    return {"experiment": "cifar-normalisation (paper section 3.3: 13% without normalisation, 11% with)",
            "data": data, "train_images": n_train, "source_jpeg_share": jpeg_share(data), "seeds": cfg.seeds,
            "config": {k: v for k, v in vars(cfg).items()},
            "seconds": seconds, "nets": nets, "comparisons": comparisons,
            "paper": "13% test error without response normalisation, 11% with (cuda-convnet layers-conv-local-13pct/11pct)"}


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def seed_table(result: dict) -> str:
    """Per net and seed: test error (1 and 10 views), training error (eval and running), wall time."""
    rows = []
    for net, r in result["nets"].items():
        paper = r["paper_error_percent"]
        for s, v in r["per_seed"].items():
            rows.append([net, "-" if paper is None else f"{paper:g}", s, _pct(v["test_error_1view"]),
                         _pct(v["test_error_10views"]), _pct(v["train_error_eval"]), _pct(v["train_error_running"]),
                         f"{r['wall_seconds'].get(s, 0):.0f}"])
        one, ten = r["test_error_1view"], r["test_error_10views"]
        rows.append([net, "", "mean+-sd", f"{_pct(one['mean'])} +- {_pct(one['std'])}",
                     f"{_pct(ten['mean'])} +- {_pct(ten['std'])}", _pct(r["train_error_eval"]["mean"]),
                     _pct(r["train_error_running"]["mean"]), ""])
    return format_table(["net", "paper %", "seed", "test % 1 view", "test % 10 views", "train % (eval)",
                         "train % (running)", "wall s"], rows)


def format_result(result: dict) -> str:
    held = max((r["held_in_images"] or 0) for r in result["nets"].values()) if result["nets"] else 0
    lines = [f"CIFAR-10, {result['train_images']:,} training images, seeds {result['seeds']}: test error %",
             seed_table(result),
             f"train % (eval): {held:,} training images, centre view, eval mode; (running): the last epoch's "
             "augmented training views as trained on. wall s: the run that trained these seeds together."]
    for c in result["comparisons"].values():
        parts = [f"{views}: {d['points']:+.2f} +- {d['se']:.2f}" if d["points"] is not None else f"{views}: -"
                 for views, d in (("1 view", c["test_error_1view"]), ("10 views", c["test_error_10views"]))]
        lines.append(f"{c['what']} (points, difference of means +- se): {'; '.join(parts)}")
    lines.append("paper: " + result["paper"] + "; the clean ablation should be about -2 points if the claim holds")
    share = result.get("source_jpeg_share")
    if share:
        lines.append(f"note: {100 * share:.0f}% of the training images came from JPEG files, which are lossy; the "
                     "paper's nets trained on CIFAR-10's original arrays. For a JPEG copy at quality 75, 4:2:0, "
                     "a dose-response measurement projects about 3 points of extra error (alexnet's docs/RESULTS.md)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- smoke


def _smoke_run(net: str, cfg: CifarNormConfig, data_dir: str, graph: bool, steps: int) -> dict:
    from alexnet.experiments.cifar_normalisation_jobs import Job, _setup
    from alexnet.experiments.cifar_normalisation_trainer import data_batches, minibatch_table

    trainer, data = _setup(Job(net, tuple(cfg.seeds), cfg.devices[0]), CifarNormConfig(**{**vars(cfg), "graph": graph}),
                           data_dir, print)
    start = [p.detach().clone() for p in trainer.model.parameters()]
    index, valid = minibatch_table(data_batches(data.train.shape[0])[:4], cfg.batch_size)
    trainer.set_phase(index, valid, 1.0, 1.0)
    trainer.pos.zero_()
    losses, t0 = [], None
    for i in range(steps):
        if i == steps // 2:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        before = trainer.sums.clone()
        trainer.step()
        d = trainer.sums - before
        losses.append(d[:, 0] / d[:, 2])
    torch.cuda.synchronize()
    ms = 1e3 * (time.perf_counter() - t0) / (steps - steps // 2)
    moved = [p.detach() - s for p, s in zip(trainer.model.parameters(), start)]
    return {"losses": torch.stack(losses).cpu(), "moved": moved, "ms": ms, "graph": trainer.graph is not None}


def smoke(cfg: CifarNormConfig, log=print, steps: int = 40) -> dict:
    """A few steps of every net on the first device, eager and as CUDA graphs, from the same start
    and random streams: the per-step losses and the weight updates must agree. Raises on failure."""
    from alexnet.errors import TrainingDiverged

    if not torch.cuda.is_available():
        raise TrainingDiverged("the smoke test compares eager and CUDA-graph steps: it needs CUDA")
    from pathlib import Path

    data = experiment_data(cfg.data, Path(cfg.out), 32, None, None, log)
    report, failed = {}, []
    for net in cfg.nets:
        eager = _smoke_run(net, cfg, str(data), False, steps)
        graph = _smoke_run(net, cfg, str(data), True, steps)
        loss_diff = (eager["losses"] - graph["losses"]).abs().max().item()
        num = sum(((a - b) ** 2).sum().item() for a, b in zip(eager["moved"], graph["moved"]))
        den = sum((a ** 2).sum().item() for a in eager["moved"])
        update_diff = math.sqrt(num / max(den, 1e-30))
        ok = (graph["graph"] and math.isfinite(loss_diff) and loss_diff < 0.05 and update_diff < 0.1
              and bool(torch.isfinite(graph["losses"]).all()))
        report[net] = {"eager_ms_per_step": eager["ms"], "graph_ms_per_step": graph["ms"], "captured": graph["graph"],
                       "max_loss_difference": loss_diff, "relative_update_difference": update_diff,
                       "first_loss": eager["losses"][0].tolist(), "last_loss": eager["losses"][-1].tolist(), "ok": ok}
        log(f"smoke {net} ({len(cfg.seeds)} replicas, {steps} steps): eager {eager['ms']:.2f} ms/step, graph "
            f"{graph['ms']:.2f} ms/step (captured: {graph['graph']}); loss {eager['losses'][0].mean():.4f} -> "
            f"{eager['losses'][-1].mean():.4f}; max |loss eager - graph| {loss_diff:.2e}, relative update "
            f"difference {update_diff:.2e}: {'ok' if ok else 'FAILED'}")
        if not ok:
            failed.append(net)
    if failed:
        raise TrainingDiverged(f"smoke test failed for {', '.join(failed)}: eager and CUDA-graph steps disagree")
    return report


__all__ = ["NETS", "difference", "format_result", "plot_cifar_normalisation", "seed_table", "smoke", "summarise"]


def _held_out_epochs(result: dict, net: dict) -> list[int]:
    """The epochs at which the held-out batch was scored: every `eval_every` in the first phase and
    at its end."""
    every, first = int(result["config"]["eval_every"]), int(net["phases"][0]["epochs"])
    return [e for e in range(1, first + 1) if e % every == 0 or e == first]


def plot_cifar_normalisation(result: dict, path) -> Path:
    """Two panels: the training error as trained on (mean of the seeds) and the held-out error per
    epoch of each net; the test error with 1 and 10 views per net (bars: mean +- sd, dots: seeds,
    red: the paper's figure). Written to `path` (PNG). Needs matplotlib (the `figures` extra)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter

    fig = Figure(figsize=(11, 4), dpi=90)
    curves, bars = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    colours = dict(zip(result["nets"], ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    for name, net in result["nets"].items():
        seeds = list(net["per_seed"].values())
        train = np.mean([s["train_error_curve"] for s in seeds], 0) * 100
        curves.plot(np.arange(1, len(train) + 1), train, color=colours[name], lw=1, label=f"{name}: train (running)")
        held = np.mean([s["held_out_error"] for s in seeds], 0) * 100
        curves.plot(_held_out_epochs(result, net)[:len(held)], held, "o", ms=2.5, color=colours[name],
                    label=f"{name}: held-out batch 5")
    curves.set_yscale("log")
    curves.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    curves.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    curves.set_xlabel("epoch")
    curves.set_ylabel("error (%)")
    curves.legend(fontsize=7)
    curves.set_title("training error as trained on, and the held-out batch (first phase)", fontsize=9)
    for i, (name, net) in enumerate(result["nets"].items()):
        for j, key in enumerate(("test_error_1view", "test_error_10views")):
            x, t = i + (j - 0.5) * 0.38, net[key]
            bars.bar(x, 100 * t["mean"], width=0.36, yerr=100 * t["std"], capsize=3, color=colours[name],
                     alpha=0.45 if j == 0 else 0.85)
            bars.plot([x] * len(t["values"]), [100 * v for v in t["values"]], "k.", ms=3)
        if net.get("paper_error_percent") is not None:
            bars.plot([i - 0.4, i + 0.4], [net["paper_error_percent"]] * 2, color="red", lw=2)
    bars.set_xticks(range(len(result["nets"])), [n.replace("cuda-convnet-", "") for n in result["nets"]], fontsize=8)
    bars.set_ylabel("test error (%)")
    bars.set_title("test error: 1 view (light), 10 views (dark); red: the paper", fontsize=9)
    fig.suptitle(f"cuda-convnet's CIFAR-10 nets, {len(result['seeds'])} seeds, {result['train_images']:,} "
                 "training images", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return Path(path)
