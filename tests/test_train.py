"""Behaviour of training: it learns, resumes exactly after SIGKILL, stops on divergence, logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet.checkpoint import load_checkpoint
from alexnet.errors import TrainingDiverged
from alexnet.train import TrainConfig, train

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> Path:
    """A small prepared copy of the embedded synthetic dataset (train/test, 32x32)."""
    from alexnet.data.prepare import prepare
    from alexnet.data.synthetic import make_shapes

    root = tmp_path_factory.mktemp("shapes")
    src = make_shapes(root / "src", n_train_per_class=30, n_test_per_class=8)
    return prepare(src, root / "prepared", size=32, workers=1, progress=False)


def tiny(shapes, out, **kw) -> TrainConfig:
    base = dict(data=str(shapes), out=str(out), arch="cifar-fig1", epochs=2, batch_size=32, lr=0.01,
                schedule="step", milestones=[1], progress=False, deterministic=True, test_crops=(1,),
                eval_batch_size=64)
    base.update(kw)
    return TrainConfig(**base)


def test_a_short_run_writes_config_metrics_and_checkpoints(shapes, tmp_path):
    result = train(tiny(shapes, tmp_path / "run"), log=lambda *a: None)
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["arch"] == "cifar-fig1" and "torch" in config["hardware"]
    assert config["data"]["val"].startswith("train[held-out")      # shapes has no val split
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    for key in ("epoch", "lr", "train_loss", "train_top1_error", "val_top1_error", "val_top5_error",
                "seconds", "images_per_second"):
        assert key in lines[0]
    assert lines[1]["lr"] == pytest.approx(0.001)                 # dropped by 10 after epoch 1
    ckpt = load_checkpoint(run / "last.pt")                       # weights_only=True inside
    assert torch.load(run / "best.pt", weights_only=True)["arch"] == "cifar-fig1"
    assert ckpt["classes"] and ckpt["mean"].shape == (3, 32, 32) and ckpt["crop"] == 28
    assert sorted(p.name for p in run.glob("epoch-*.pt")) == ["epoch-001.pt", "epoch-002.pt"]
    assert 0.0 <= result["test_1crop"]["top1_error"] <= 1.0 and result["test_1crop"]["images"] == 80


def _final_weights(run: Path) -> dict:
    return load_checkpoint(run / "last.pt")["model"]


def test_resume_after_sigkill_is_bit_identical(shapes, tmp_path):
    """Kill the process with SIGKILL at a known step after a checkpoint exists, resume, and compare
    with an uninterrupted run: the final weights must be identical bit for bit."""
    args = ["--data", str(shapes), "--arch", "cifar-fig1", "--epochs", "2", "--batch-size", "16",
            "--lr", "0.01", "--schedule", "step", "--milestones", "1", "--deterministic", "--no-progress",
            "--checkpoint-steps", "5", "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    whole = tmp_path / "whole"
    subprocess.run([sys.executable, "-m", "alexnet", "train", "--out", str(whole), *args], env=env, check=True,
                   capture_output=True, timeout=300)

    cut = tmp_path / "cut"
    killed = subprocess.run([sys.executable, "-m", "alexnet", "train", "--out", str(cut), *args],
                            env=dict(env, ALEXNET_TEST_KILL_AT_STEP="22"), capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert load_checkpoint(cut / "last.pt")["global_step"] == 20   # saved at step 20, killed at 22
    subprocess.run([sys.executable, "-m", "alexnet", "train", "--out", str(cut), "--resume", *args], env=env,
                   check=True, capture_output=True, timeout=300)

    a, b = _final_weights(whole), _final_weights(cut)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]     # no epoch logged twice


def test_sigterm_saves_and_exits_cleanly(shapes, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "alexnet", "train", "--data", str(shapes), "--arch", "cifar-fig1",
                             "--epochs", "50", "--batch-size", "16", "--no-progress", "--out", str(run)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:           # wait until it is training, then ask it to stop
            if line.startswith("device:"):
                break
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "SIGTERM: saved" in out
    assert load_checkpoint(run / "last.pt")["global_step"] >= 1


def test_a_loss_stuck_at_chance_stops_the_run(shapes, tmp_path):
    with pytest.raises(TrainingDiverged, match="ln\\(10\\)"):
        train(tiny(shapes, tmp_path / "stuck", lr=0.0, stall_window=20, epochs=3), log=lambda *a: None)


def test_a_healthy_run_does_not_trip_the_stall_window(shapes, tmp_path):
    train(tiny(shapes, tmp_path / "ok", lr=0.01, stall_window=20, epochs=3), log=lambda *a: None)


def test_a_nan_loss_stops_the_run_and_keeps_the_checkpoint(shapes, tmp_path):
    with pytest.raises(TrainingDiverged, match="loss is nan"):
        train(tiny(shapes, tmp_path / "nan", lr=1e6, epochs=3), log=lambda *a: None)


def test_init_from_reinitialises_a_mismatched_classifier(shapes, tmp_path):
    from alexnet.models import build_model

    other = build_model("cifar-fig1", num_classes=7)
    torch.save(other.state_dict(), tmp_path / "seven.pth")
    messages = []
    train(tiny(shapes, tmp_path / "ft", init_from=str(tmp_path / "seven.pth"), epochs=1), log=messages.append)
    text = "\n".join(map(str, messages))
    assert "re-initialised" in text and "fc4.weight" in text
