"""Faults and mistakes: a clear answer every time, and nothing that was saved is lost.

Each test makes one fault on purpose: a stop on an epoch's last step, a kill between two saves, a
divergence between checkpoints, a run folder reused, changed flags on --resume, bad images and bad
checkpoints, a full disk, bad arguments, a signal during evaluation, a collapse to chance.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import StopAfter, tiny

from alexnet.checkpoint import CheckpointKeeper, load_checkpoint
from alexnet.cli import main
from alexnet.errors import CheckpointError, ConfigError, DataError, Interrupted, TrainingDiverged
from alexnet.runtime import DiskFull
from alexnet.train import fit, setup, train

SRC = Path(__file__).resolve().parents[1] / "src"
QUIET = lambda *a, **k: None  # noqa: E731


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _stop_after(run, steps: int) -> None:
    run.step = StopAfter(run, steps)


class _Flag:
    signal = None


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


# ---------------------------------------------------------------------------------------------
# 1-3: lost or wrong results


def test_a_stop_on_an_epochs_last_step_keeps_its_evaluation_drop_and_files(shapes, tmp_path):
    whole = tmp_path / "whole"
    train(tiny(shapes, whole), log=QUIET)
    cut = tmp_path / "cut"
    run = setup(tiny(shapes, cut, checkpoint_steps=8), log=QUIET, stop=_Flag())
    _stop_after(run, 8)                           # the 8th step is epoch 1's last
    assert fit(run)["stopped_by"] == "SIGTERM"
    run.close()
    saved = load_checkpoint(cut / "last.pt")
    assert (saved["epoch"], saved["batch_in_epoch"], saved["completed_epochs"]) == (0, 8, 0)
    assert not (cut / "metrics.jsonl").exists() or not (cut / "metrics.jsonl").read_text().strip()
    train(dataclasses.replace(tiny(shapes, cut), resume=True), log=QUIET)
    lines = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert [m["lr"] for m in lines] == [m["lr"] for m in want] == [0.01, pytest.approx(0.001)]   # the drop
    assert lines[0]["train_loss"] == pytest.approx(want[0]["train_loss"], rel=1e-6)    # the epoch's sums
    assert (cut / "epoch-001.pt").exists() and (cut / "best.pt").exists()
    a, b = _weights(whole / "last.pt"), _weights(cut / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_epoch_is_written_once_and_its_other_names_are_links(shapes, tmp_path):
    run = tmp_path / "run"
    (run).mkdir()
    stale = run / ".tmp-last.pt.99999"
    stale.write_bytes(b"half a checkpoint")       # what a kill during a save leaves
    keeper = CheckpointKeeper(run, keep=3)
    assert not stale.exists() and keeper.removed == [stale]
    train(tiny(shapes, tmp_path / "r2", epochs=1), log=QUIET)
    r2 = tmp_path / "r2"
    inodes = {n: os.stat(r2 / n).st_ino for n in ("epoch-001.pt", "best.pt", "last.pt")}
    assert len(set(inodes.values())) == 1, inodes
    assert not list(r2.glob(".tmp-*"))


def test_a_kill_between_the_links_of_a_save_loses_nothing(shapes, tmp_path, monkeypatch):
    """best.pt and the epoch file are linked before last.pt, so a kill in between leaves last.pt one
    state behind, and resuming from it rewrites the same files."""
    from alexnet import checkpoint

    whole = tmp_path / "whole"
    train(tiny(shapes, whole), log=QUIET)
    cut = tmp_path / "cut"
    real_link, calls = checkpoint._link, []

    def dying_link(src, dst):
        calls.append(dst.name)
        if dst.name == "last.pt" and src.name == "epoch-002.pt":
            raise KeyboardInterrupt                # the process dies here
        real_link(src, dst)

    monkeypatch.setattr(checkpoint, "_link", dying_link)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(shapes, cut), log=QUIET)
    monkeypatch.setattr(checkpoint, "_link", real_link)
    assert load_checkpoint(cut / "last.pt")["completed_epochs"] == 1 and (cut / "epoch-002.pt").exists()
    train(dataclasses.replace(tiny(shapes, cut), resume=True), log=QUIET)
    a, b = _weights(whole / "last.pt"), _weights(cut / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(x)["epoch"] for x in (cut / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_nothing_non_finite_is_ever_saved(shapes, tmp_path):
    run = tmp_path / "nan"
    with pytest.raises(TrainingDiverged) as e:
        train(tiny(shapes, run, lr=1e6, checkpoint_steps=3, stall_window=0), log=QUIET)
    for path in run.glob("*.pt"):
        state = load_checkpoint(path)["model"]
        assert all(torch.isfinite(v).all() for v in state.values()), path
    named = str(e.value)
    if (run / "last.pt").exists():
        assert str(run / "last.pt") in named
    else:
        assert "no checkpoint was saved yet" in named


# ---------------------------------------------------------------------------------------------
# 4, 6, 7, 11: arguments and run folders, checked before any work


def test_a_train_split_smaller_than_a_batch_and_bad_numbers_are_refused(shapes, tmp_path, capsys):
    with pytest.raises(DataError, match="fewer than one batch of 512"):
        train(tiny(shapes, tmp_path / "a", batch_size=512), log=QUIET)
    assert not (tmp_path / "a" / "last.pt").exists()
    for flag, value in (("--epochs", "-1"), ("--batch-size", "0"), ("--lr", "-1"), ("--eval-batch-size", "0")):
        code, _, err = _cli(capsys, "train", "--data", str(shapes), "--out", str(tmp_path / "b"), flag, value)
        assert code == 2 and flag in err and "Traceback" not in err, (flag, err)
    code, _, err = _cli(capsys, "eval", "--checkpoint", "x.pt", "--data", str(shapes), "--batch-size", "0")
    assert code == 2 and "--batch-size" in err
    code, _, err = _cli(capsys, "train", "--data", str(shapes), "--out", str(tmp_path / "c"), "--device", "cpu",
                        "--cuda-graphs")
    assert code == 2 and "--cuda-graphs needs a CUDA device" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()
    code, _, err = _cli(capsys, "train", "--data", str(shapes), "--out", str(tmp_path / "d"), "--device", "cpu",
                        "--decode", "mixed")
    assert code == 2 and "--decode mixed decodes on a CUDA device" in err and "Traceback" not in err
    code, _, err = _cli(capsys, "train", "--data", str(shapes), "--out", str(tmp_path / "e"), "--decode", "cuda",
                        "--gpu-workers", "0")
    assert code == 2 and "--gpu-workers of at least 1" in err and "Traceback" not in err


def test_the_demo_checks_its_arguments_before_making_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv, needle in ((["--batch-size", "0"], "--batch-size"), (["--arch", "alexnet2013"], "alexnet2012"),
                         (["--recipe", "nope"], "recipe")):
        code, _, err = _cli(capsys, "train", "--out", str(tmp_path / "demo"), *argv)
        assert code == 2 and needle in err, (argv, err)
        assert not (tmp_path / "demo" / "shapes").exists(), argv


def test_a_folder_holding_a_run_is_refused_without_resume(shapes, tmp_path):
    run = tmp_path / "run"
    train(tiny(shapes, run, epochs=1), log=QUIET)
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        train(tiny(shapes, run, epochs=1), log=QUIET)
    assert (run / "metrics.jsonl").read_text() == before


def test_resume_keeps_the_runs_configuration_and_config_json_tells_the_truth(shapes, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["--data", str(shapes), "--out", str(run), "--arch", "cifar-fig1", "--batch-size", "32", "--no-progress",
            "--schedule", "step", "--milestones", "1", "--device", "cpu", "--test-crops", "1", "--lr", "0.02"]
    assert _cli(capsys, "train", *base, "--epochs", "1")[0] == 0
    for flag, value in (("--lr", "0.1"), ("--momentum", "0.5"), ("--seed", "3"), ("--arch", "alexnet2012"),
                        ("--dropout", "0.2"), ("--pca-std", "0")):
        code, _, err = _cli(capsys, "train", "--out", str(run), "--resume", flag, value)
        assert code == 2 and flag in err and "keeps its configuration" in err, (flag, err)
    # no --data, no --schedule: the run's own; --epochs may grow and is recorded.
    code, out, err = _cli(capsys, "train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress")
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["epochs"], config["lr"], config["schedule"], config["milestones"]) == (2, 0.02, "step", [1])
    assert load_checkpoint(run / "last.pt")["config"]["epochs"] == 2


def test_resume_of_another_architectures_folder_is_one_clear_error(shapes, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny(shapes, run, epochs=1), log=QUIET)
    ckpt = load_checkpoint(run / "last.pt")
    ckpt["model"] = {k: v[..., :1] if v.dim() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, run / "last.pt")
    code, _, err = _cli(capsys, "train", "--out", str(run), "--resume")
    assert code == 2 and "do not fit the network" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# 8-10: bad images, bad checkpoints, a full disk


def test_predict_names_every_bad_image_and_predicts_the_good_ones(trained_run, tmp_path, capsys):
    from conftest import random_image, write_image
    import numpy as np

    good = write_image(tmp_path / "good.jpg", random_image(np.random.default_rng(1), 40, 50))
    data = good.read_bytes()
    bad = {"missing.jpg": None, "empty.jpg": b"", "cut.jpg": data[: len(data) // 3], "text.jpg": b"hello\n" * 50,
           "noise.jpg": bytes(np.random.default_rng(2).integers(0, 256, 3000, dtype=np.uint8))}
    for name, content in bad.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
    argv = [str(tmp_path / n) for n in ["missing.jpg", "good.jpg", "empty.jpg", "cut.jpg", "text.jpg", "noise.jpg"]]
    code, out, err = _cli(capsys, "predict", "--checkpoint", str(trained_run / "last.pt"), "--device", "cpu",
                          "--crops", "1", *argv)
    assert code == 1 and "Traceback" not in err
    assert out.splitlines()[0] == str(tmp_path / "good.jpg") and "%" in out
    for name in bad:
        assert sum(str(tmp_path / name) in line for line in err.splitlines()) == 1, (name, err)


def test_bad_checkpoints_are_one_line_naming_the_file(trained_run, tmp_path, shapes_prepared, capsys):
    ckpt = load_checkpoint(trained_run / "last.pt")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    shapes = tmp_path / "shapes.pt"
    torch.save(ckpt | {"model": {k: v[..., :1] if v.dim() > 1 else v for k, v in ckpt["model"].items()}}, shapes)
    nokeys = tmp_path / "nokeys.pt"
    torch.save({k: v for k, v in ckpt.items() if k != "arch"}, nokeys)
    pickled = tmp_path / "pickled.pt"
    import argparse

    torch.save({"model": {}, "format_version": 2, "thing": argparse.Namespace(code="not allowed")}, pickled)
    cases = {empty: "empty", shapes: "wrong shapes", nokeys: "missing arch", pickled: "objects other than tensors"}
    for path, needle in cases.items():
        for argv in (["eval", "--checkpoint", str(path), "--data", str(shapes_prepared), "--device", "cpu"],
                     ["predict", "--checkpoint", str(path), str(path)],
                     ["export", "--checkpoint", str(path), "--format", "safetensors", "--out", str(tmp_path / "w.st")]):
            code, _, err = _cli(capsys, *argv)
            assert code == 2 and str(path) in err and needle in err, (argv, err)
            assert "weights_only=False" not in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w.st").exists()                 # no wrong-shaped weights were written
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(empty)


def test_a_full_disk_keeps_the_last_good_checkpoint_and_removes_the_partial_file(shapes, tmp_path, monkeypatch):
    from alexnet import runtime

    run = tmp_path / "run"
    train(tiny(shapes, run, epochs=1), log=QUIET)
    good = (run / "last.pt").read_bytes()
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runtime.os, "fsync", full)
    with pytest.raises(DiskFull, match="disk is full.*previous file is kept"):
        train(dataclasses.replace(tiny(shapes, run), resume=True), log=QUIET)
    monkeypatch.setattr(runtime.os, "fsync", real_fsync)
    assert (run / "last.pt").read_bytes() == good
    assert not list(run.glob(".tmp-*"))
    train(dataclasses.replace(tiny(shapes, run), resume=True), log=QUIET)     # and the resume works
    assert load_checkpoint(run / "last.pt")["completed_epochs"] == 2


# ---------------------------------------------------------------------------------------------
# 12, 15, 16: signals during evaluation, the end of a run, a collapse to chance


def test_a_signal_during_validation_saves_the_trained_epoch_and_resume_finishes_it(shapes, tmp_path):
    whole = tmp_path / "whole"
    train(tiny(shapes, whole), log=QUIET)
    cut = tmp_path / "cut"
    flag = _Flag()
    run = setup(tiny(shapes, cut), log=QUIET, stop=flag)
    real = run.placement.evaluate

    def evaluate(*args, **kwargs):
        flag.signal = "SIGINT"                     # arrives while validating epoch 1
        return real(*args, **kwargs)

    run.placement.evaluate = evaluate
    t0 = time.monotonic()
    assert fit(run)["stopped_by"] == "SIGINT"
    assert time.monotonic() - t0 < 30
    run.close()
    saved = load_checkpoint(cut / "last.pt")
    assert (saved["epoch"], saved["batch_in_epoch"]) == (0, 8)
    train(dataclasses.replace(tiny(shapes, cut), resume=True), log=QUIET)
    a, b = _weights(whole / "last.pt"), _weights(cut / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluation_stops_at_the_next_batch(trained_run, shapes_prepared):
    from alexnet.checkpoint import model_from_checkpoint
    from alexnet.data.prepared import PreparedData
    from alexnet.evaluate import evaluate_split

    ckpt = load_checkpoint(trained_run / "last.pt")
    calls = []
    with pytest.raises(Interrupted):
        evaluate_split(model_from_checkpoint(ckpt), PreparedData.open(shapes_prepared).split("test"), ckpt["mean"],
                       ckpt["crop"], 10, device=torch.device("cpu"), batch_size=4,
                       should_stop=lambda: calls.append(1) or len(calls) > 2)
    assert len(calls) == 3


def test_sigint_stops_eval_within_seconds(trained_run, shapes_prepared):
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "alexnet", "eval", "--checkpoint", str(trained_run / "last.pt"),
                             "--data", str(shapes_prepared), "--split", "test", "--batch-size", "1", "--device", "cpu"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen, deadline = b"", time.monotonic() + 120
    while b"eval test" not in seen:               # its progress bar: the evaluation has started
        assert proc.poll() is None and time.monotonic() < deadline, seen
        seen += os.read(proc.stderr.fileno(), 4096)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert time.monotonic() - t0 < 5 and proc.returncode == 2 and "stopped by a signal" in err, err


def test_a_run_says_where_its_results_are(shapes, tmp_path):
    messages = []
    train(tiny(shapes, tmp_path / "run", epochs=1), log=messages.append)
    assert f"done: {tmp_path / 'run'}/" in messages[-1] and "alexnet eval --checkpoint" in messages[-1]


def test_a_validation_error_at_chance_for_epochs_stops_the_run(shapes, tmp_path):
    """lr 0 keeps the net at chance; the step-level stall detector is off, so the epoch-level one
    must fire: three epochs at chance and over 1,000 steps (batch 2: 135 steps an epoch)."""
    with pytest.raises(TrainingDiverged, match="validation error has stayed at chance"):
        train(tiny(shapes, tmp_path / "flat", lr=0.0, batch_size=2, epochs=12, stall_window=0,
                   eval_batch_size=64), log=QUIET)
    lines = (tmp_path / "flat" / "metrics.jsonl").read_text().splitlines()
    assert 8 <= len(lines) < 12                   # 1,000 steps take 8 epochs here
