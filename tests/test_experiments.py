"""The experiments run end to end on tiny synthetic data, write their JSON and PNG, and report sane
numbers; their statistics and run bookkeeping do what they say."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from alexnet.cli import main  # noqa: E402
from alexnet.experiments import epochs_to_error, run_or_reuse, seed_summary, subset_prepared  # noqa: E402
from alexnet.experiments.ablations import VARIANTS, milestones, verdict  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    from alexnet.data.prepare import prepare
    from alexnet.data.synthetic import make_shapes

    root = tmp_path_factory.mktemp("shapes")
    src = make_shapes(root / "src", n_train_per_class=12, n_test_per_class=4)
    return prepare(src, root / "prepared", size=32, workers=1, progress=False)


def test_epochs_to_error_interpolates_from_chance():
    assert epochs_to_error([0.8, 0.5, 0.2], 0.25, 0.9) == pytest.approx(2 + (0.5 - 0.25) / 0.3)
    assert epochs_to_error([0.2], 0.25, 0.9) == pytest.approx(0.65 / 0.7)   # crossed inside epoch 1
    assert epochs_to_error([0.8, 0.6], 0.25, 0.9) is None


def test_seed_summary_counts_missing_runs():
    s = seed_summary([1.0, 3.0, None])
    assert s["mean"] == 2.0 and s["std"] == pytest.approx(math.sqrt(2)) and s["n"] == 2 and s["missing"] == 1
    assert seed_summary([4.0])["std"] == 0.0 and seed_summary([None])["mean"] is None


def test_verdict_uses_sign_and_spread():
    assert verdict(2.0, 0.5, 3).startswith("agrees")
    assert verdict(0.5, 0.5, 3).startswith("same sign, within")
    assert verdict(-0.5, 0.5, 3).startswith("opposite sign, within")
    assert verdict(-2.0, 0.5, 3).startswith("disagrees")
    assert "one seed" in verdict(1.0, 0.0, 1)
    assert milestones(12) == [6, 9] and milestones(1) == []


def test_subset_is_class_balanced_and_reused(shapes, tmp_path):
    from alexnet.data.prepared import PreparedData

    out = subset_prepared(shapes, tmp_path / "sub", {"train": 50, "test": None})
    data = PreparedData.open(out)
    counts = data.split("train").labels.bincount(minlength=10).tolist()
    assert len(data.split("train")) == 50 and counts == [5] * 10 and len(data.split("test")) == 40
    full = PreparedData.open(shapes)
    assert (data.mean == full.mean).all()                     # the full set's statistics
    stamp = (out / "meta.json").stat().st_mtime_ns
    subset_prepared(shapes, tmp_path / "sub", {"train": 50, "test": None})
    assert (out / "meta.json").stat().st_mtime_ns == stamp


def test_a_finished_run_is_reused_and_a_longer_one_continues(shapes, tmp_path):
    from alexnet.config import TrainConfig

    cfg = TrainConfig(data=str(shapes), out=str(tmp_path / "r"), arch="cifar-fig1", epochs=1, batch_size=40,
                      schedule="step", milestones=[], progress=False, test_crops=(), device="cpu", keep_checkpoints=0)
    first = run_or_reuse(cfg, log=lambda *a: None)
    again = run_or_reuse(cfg, log=lambda *a: None)
    assert not first["reused"] and again["reused"] and again["metrics"] == first["metrics"]
    longer = run_or_reuse(TrainConfig(**{**cfg.__dict__, "epochs": 2}), log=lambda *a: None)
    assert longer["continued"] and [m["epoch"] for m in longer["metrics"]] == [1, 2]
    assert longer["metrics"][0] == first["metrics"][0]


def test_relu_vs_tanh_end_to_end(shapes, tmp_path, capsys):
    out = tmp_path / "fig1"
    args = ["experiment", "relu-vs-tanh", "--data", str(shapes), "--out", str(out), "--epochs", "2",
            "--seeds", "0", "1", "--lrs", "0.02", "0.05", "--sweep-epochs", "1", "--batch-size", "24",
            "--train-images", "48", "--test-images", "10", "--threshold", "0.88", "--device", "cpu"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "budget" in text and "total" in text and "paper: 6 at 25%" in text
    result = json.loads((out / "relu_vs_tanh.json").read_text())
    assert (out / "relu_vs_tanh.png").read_bytes().startswith(PNG)
    assert result["train_images"] == 48 and result["seeds"] == [0, 1]
    for act in ("relu", "tanh"):
        r = result["activations"][act]
        assert r["lr"] in (0.02, 0.05) and set(result["sweep"][act]) == {"0.02", "0.05"}
        for seed in ("0", "1"):
            curve = r["per_seed"][seed]["train_error"]
            assert len(curve) == 2 and all(0.0 <= e <= 1.0 for e in curve)
            crossing = r["per_seed"][seed]["epochs_to_threshold"]
            assert crossing is None or 0.0 < crossing <= 2.0
    ratio = result["ratio_tanh_over_relu"]
    assert ratio["n"] + len(ratio["lower_bounds"]) <= 2
    for value in ratio["values"]:
        assert value > 0
    # the seed-0 runs at the chosen rates continued their sweep runs
    relu0 = json.loads((Path(result["activations"]["relu"]["per_seed"]["0"]["run"]) / "experiment.json").read_text())
    assert relu0["continued"]


def test_ablations_end_to_end(shapes, tmp_path, capsys):
    out = tmp_path / "abl"
    args = ["experiment", "ablations", "--data", str(shapes), "--out", str(out), "--variants", "one-column",
            "--epochs", "1", "--seeds", "0", "1", "--batch-size", "20", "--train-images", "40",
            "--test-images", "10", "--device", "cpu"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.index("budget") < text.index("[baseline-seed0]")          # the plan comes first
    result = json.loads((out / "ablations.json").read_text())
    assert (out / "ablations.png").read_bytes().startswith(PNG)
    assert list(result["variants"]) == ["baseline", "one-column"]
    for name, v in result["variants"].items():
        t = v["test_top1_error"]
        assert t["n"] == 2 and all(0.0 <= x <= 1.0 for x in t["values"])
        if name != "baseline":
            assert v["delta_top1_points"] == pytest.approx(100 * (t["mean"] - result["variants"]["baseline"]
                                                                  ["test_top1_error"]["mean"]))
            assert v["verdict"] and v["paper"] == VARIANTS[name].paper


def test_plan_prints_the_budget_and_trains_nothing(shapes, tmp_path, capsys):
    out = tmp_path / "plan"
    assert main(["experiment", "ablations", "--data", str(shapes), "--out", str(out), "--plan", "--batch-size", "8",
                 "--variants", "no-dropout", "no-pca-noise", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in ("baseline", "no-dropout", "no-pca-noise")) and "total" in text
    assert not (out / "runs").exists()


@pytest.mark.slow
def test_runs_in_parallel_processes(shapes, tmp_path):
    from alexnet.experiments import run_many
    from alexnet.config import TrainConfig

    cfgs = [TrainConfig(data=str(shapes), out=str(tmp_path / f"r{s}"), arch="cifar-fig1", epochs=1, batch_size=40,
                        seed=s, schedule="step", milestones=[], progress=False, test_crops=(), device="cpu")
            for s in (0, 1)]
    records = run_many(cfgs, jobs=2)
    assert [Path(r["run"]).name for r in records] == ["r0", "r1"]
    assert all(len(r["metrics"]) == 1 for r in records)
    assert records[0]["metrics"][0]["train_loss"] != records[1]["metrics"][0]["train_loss"]
