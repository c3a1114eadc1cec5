"""Behaviour of training: it learns, resumes exactly after SIGKILL, stops on divergence, logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny

from alexnet.checkpoint import load_checkpoint
from alexnet.errors import TrainingDiverged
from alexnet.train import TrainConfig, train

SRC = Path(__file__).resolve().parents[1] / "src"


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
    assert "data_wait_seconds" not in lines[0]                    # read in this process: no waits recorded
    ckpt = load_checkpoint(run / "last.pt")                       # weights_only=True inside
    assert torch.load(run / "best.pt", weights_only=True)["arch"] == "cifar-fig1"
    assert ckpt["classes"] and ckpt["mean"].shape == (3, 32, 32) and ckpt["crop"] == 28
    assert sorted(p.name for p in run.glob("epoch-*.pt")) == ["epoch-001.pt", "epoch-002.pt"]
    assert 0.0 <= result["test_1crop"]["top1_error"] <= 1.0 and result["test_1crop"]["images"] == 80


def test_with_loader_workers_each_epoch_says_how_long_it_waited_for_batches(shapes, tmp_path, monkeypatch):
    """Loader worker processes (the GPU's default): metrics.jsonl gives each epoch's waits for batches by
    cause, and the epoch line says so when they add up to 0.05 s or more. A data-bound second epoch gets
    one line more saying what held the batches (every epoch counts as data-bound here)."""
    import alexnet.data.waits as waits
    from alexnet.train import _waited_text

    monkeypatch.setattr(waits, "BOUND_SHARE", -1.0)
    messages = []
    train(tiny(shapes, tmp_path / "run", loader_workers=1), log=messages.append)
    texts = [str(x) for x in messages]
    hints = [i for i, t in enumerate(texts) if t.startswith("data-bound: ")]
    assert len(hints) == 1 and texts[hints[0] - 1].startswith("epoch 2: ")   # once, after the first steady epoch
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for m in lines:
        waited = m["data_wait_seconds"]
        assert set(waited) == {"ring full", "CPU workers", "GPU workers"} and min(waited.values()) >= 0
        assert waited["GPU workers"] == 0 and waited["CPU workers"] < m["seconds"]
    epoch_lines = [str(x) for x in messages if str(x).startswith("epoch ")]
    assert len(epoch_lines) == 2
    for text, m in zip(epoch_lines, lines):
        assert text.endswith(_waited_text(m["data_wait_seconds"]))
    assert _waited_text({"ring full": 0.01, "CPU workers": 0.02, "GPU workers": 0.0}) == ""
    assert _waited_text({"ring full": 0.0, "CPU workers": 0.5, "GPU workers": 1.26}) == \
        "; waited 1.8 s for batches (CPU workers 0.5, GPU workers 1.3)"


def _final_weights(run: Path) -> dict:
    return load_checkpoint(run / "last.pt")["model"]


def _kill_when(proc: subprocess.Popen, ready, timeout_s: float = 240.0) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (polled every 20 ms)."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "timed out waiting for a checkpoint"
        time.sleep(0.02)
    proc.kill()
    proc.wait(timeout=60)


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(shapes, tmp_path):
    """Kill the process with SIGKILL right after its first checkpoint within an epoch (wherever the
    kill lands), resume, and compare with an uninterrupted run: identical weights, bit for bit."""
    args = ["--data", str(shapes), "--arch", "cifar-fig1", "--epochs", "2", "--batch-size", "16",
            "--lr", "0.01", "--schedule", "step", "--milestones", "1", "--deterministic", "--no-progress",
            "--checkpoint-steps", "5", "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    whole = tmp_path / "whole"
    subprocess.run([sys.executable, "-m", "alexnet", "train", "--out", str(whole), *args], env=env, check=True,
                   capture_output=True, timeout=300)

    cut = tmp_path / "cut"
    killed = subprocess.Popen([sys.executable, "-m", "alexnet", "train", "--out", str(cut), *args], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(killed, lambda: (cut / "last.pt").exists())
    assert killed.returncode == -signal.SIGKILL
    assert 0 < load_checkpoint(cut / "last.pt")["global_step"] < 2 * 16   # killed within the first epoch
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


# ----------------------------------------------------------------------------------------------
# --parallel columns in one process (the paper's two columns; here both on the CPU)


@pytest.fixture(scope="session")
def shapes224(tmp_path_factory) -> Path:
    """One synthetic image per class and split, prepared at 224 (alexnet2012's crop)."""
    from alexnet.data.prepare import prepare
    from alexnet.data.synthetic import make_shapes

    root = tmp_path_factory.mktemp("shapes224")
    src = make_shapes(root / "src", n_train_per_class=1, n_test_per_class=1)
    return prepare(src, root / "prepared", size=224, workers=1, progress=False)


def _close(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=lambda m, k=k: f"{k}: {m}", **tol)


def _velocities(ckpt: dict) -> dict:
    return {i: s["velocity"] for i, s in ckpt["optimizer"]["state"].items()}


@pytest.mark.slow
def test_a_columns_run_trains_like_the_grouped_network_and_its_checkpoint_serves_both_forms(shapes224, tmp_path,
                                                                                               capsys):
    from alexnet import cli
    from alexnet.checkpoint import model_from_checkpoint

    base = dict(data=str(shapes224), arch="alexnet2012", arch_options={"dropout": 0.0}, epochs=1, batch_size=4,
                max_steps=2, progress=False, device="cpu", test_crops=(1,), keep_checkpoints=0, lr=0.001)
    col, grp = tmp_path / "columns", tmp_path / "grouped"
    messages = []
    train(TrainConfig(out=str(col), parallel="columns", memory_cap_gb=3.0, **base), log=messages.append)
    text = "\n".join(map(str, messages))
    assert "column 0 on cpu, column 1 on cpu" in text and "columns exchange per step" in text
    assert "memory cap: ignored (not on CUDA)" in text and "memory per device" in text
    parallel = json.loads((col / "config.json").read_text())["parallel"]
    assert parallel["form"] == "columns" and parallel["exchanged_per_step"]["backward_bytes"] > 0
    train(TrainConfig(out=str(grp), **base), log=lambda *a: None)

    # Same weights and velocities as the grouped network after two steps (no dropout: its masks
    # are drawn per column by design). The checkpoint is the grouped form.
    c, g = load_checkpoint(col / "last.pt"), load_checkpoint(grp / "last.pt")
    _close(c["model"], g["model"], rtol=1e-4, atol=1e-5)
    # (fp32 sums in another order can flip a ReLU whose input is near zero, so a few velocity elements
    # differ at the weights' absolute tolerance)
    _close(_velocities(c), _velocities(g), rtol=1e-4, atol=1e-5)
    assert type(model_from_checkpoint(c)).__name__ == "AlexNet2012"
    assert cli.main(["eval", "--checkpoint", str(col / "last.pt"), "--data", str(shapes224), "--split", "test",
                     "--crops", "1", "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["images"] == 10

    # Either form resumes the other's checkpoint, at the same position with the same velocities.
    more = base | {"epochs": 2, "max_steps": None}
    assert train(TrainConfig(out=str(col), resume=True, **more), log=lambda *a: None)["steps"] == 4
    assert train(TrainConfig(out=str(grp), resume=True, parallel="columns", **more), log=lambda *a: None)["steps"] == 4
    c, g = load_checkpoint(col / "last.pt"), load_checkpoint(grp / "last.pt")
    assert c["parallel"] == "data" and g["parallel"] == "columns"
    _close(c["model"], g["model"], rtol=1e-4, atol=1e-5)
    _close(_velocities(c), _velocities(g), rtol=1e-4, atol=1e-5)


def test_columns_need_the_two_column_network(shapes, tmp_path):
    from alexnet.errors import ConfigError

    with pytest.raises(ConfigError, match="alexnet2012"):
        train(tiny(shapes, tmp_path / "x", parallel="columns"), log=lambda *a: None)
    with pytest.raises(ConfigError, match="batch-per-process"):
        train(TrainConfig(data=str(shapes), out=str(tmp_path / "y"), parallel="columns", batch_per_process=8),
              log=lambda *a: None)


def test_deterministic_mode_is_each_runs_own(shapes, tmp_path):
    """torch's deterministic mode is process-wide: a run without --deterministic after one with it,
    in the same process, must not inherit it (a run turned it on and left it on before 2026-12-02)."""
    try:
        train(tiny(shapes, tmp_path / "a", epochs=1, max_steps=2), log=lambda *a: None)
        assert torch.are_deterministic_algorithms_enabled()
        train(tiny(shapes, tmp_path / "b", epochs=1, max_steps=2, deterministic=False), log=lambda *a: None)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
