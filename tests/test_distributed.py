"""Training on several processes: data parallelism (DDP) and the paper's columns under torchrun,
distributed evaluation, resuming with another process count; and the 3 GB question (memory).

The multi-process tests start two gloo CPU processes (`python -m torch.distributed.run
--standalone`, which picks a free port, or spawned workers with a FileStore), each under a
timeout, and are marked `distributed`: run them one at a time, never in parallel with each other.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import spawn_processes
import torch

from alexnet.checkpoint import load_checkpoint
from alexnet.train import TrainConfig, train

SRC = Path(__file__).resolve().parents[1] / "src"
TWO_GPUS = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two GPUs")


@pytest.fixture(scope="module")
def shapes224(tmp_path_factory) -> Path:
    """One image per class and split, prepared at 224 (alexnet2012's crop): 10 train, 10 test."""
    from alexnet.data.prepare import prepare
    from alexnet.data.synthetic import make_shapes

    root = tmp_path_factory.mktemp("shapes224")
    src = make_shapes(root / "src", n_train_per_class=1, n_test_per_class=1)
    return prepare(src, root / "prepared", size=224, workers=1, progress=False)


# Runs whose only randomness is the data order: crop = image size, no flips, no colour noise, and
# cifar-fig1 has no dropout. One step on a global batch is then the same computation on any number
# of processes, up to the rounding of the gradient average.
PLAIN = ["--arch", "cifar-fig1", "--crop", "32", "--no-flip", "--pca-std", "0", "--batch-size", "32",
         "--schedule", "step", "--milestones", "1", "--deterministic", "--no-progress", "--device", "cpu",
         "--eval-batch-size", "7"]


def _config(args: list[str], **extra) -> TrainConfig:
    """The TrainConfig the CLI would build from `args` (for in-process single runs)."""
    import dataclasses

    from alexnet.cli import build_parser, train_config

    cfg, _, _ = train_config(build_parser().parse_args(["train", *args]))
    return dataclasses.replace(cfg, **extra)


def _torchrun(nproc: int, args: list[str], timeout_s: float = 240.0) -> str:
    """`torchrun --standalone --nproc-per-node N -m alexnet train ARGS`; its output. The whole
    process group is killed if it outlives the timeout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "alexnet", "train", *args]
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", ALEXNET_DIST_TIMEOUT_S="120")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout_s:.0f} s:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-6000:]
    return out


def _assert_weights_close(a: dict, b: dict, atol: float, rtol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol, msg=lambda m, k=k: f"{k}: {m}")


def _quiet(*_a, **_k):
    pass


# ---------------------------------------------------------------------------------------------
# Data parallelism


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_of_one_process_each_train_as_one_ddp_run(shapes, tmp_path):
    """The multi-node launch, on one machine: `torchrun --nnodes 2 --node-rank 0|1` with a rendezvous
    on localhost (what two machines would run, each with its own address in --master-addr), gloo on
    the CPU. One step equals the one-process step on the whole batch."""
    args = ["--data", str(shapes), *PLAIN, "--epochs", "1", "--max-steps", "1"]
    port, env = _free_port(), dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", ALEXNET_DIST_TIMEOUT_S="120")
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={rank}",
                               "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "alexnet",
                               "train", *args, "--out", str(tmp_path / "nodes")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) for rank in (0, 1)]
    outs = []
    try:
        for proc in procs:
            outs.append(proc.communicate(timeout=240)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    assert "data parallel: 2 processes" in outs[0]
    train(_config([*args, "--out", str(tmp_path / "one")]), log=_quiet)
    a, b = load_checkpoint(tmp_path / "nodes" / "last.pt"), load_checkpoint(tmp_path / "one" / "last.pt")
    assert a["world_size"] == 2
    _assert_weights_close(a["model"], b["model"], atol=1e-6)


@pytest.mark.slow
@pytest.mark.distributed
def test_one_ddp_step_on_two_processes_equals_one_step_on_the_whole_batch(shapes, tmp_path):
    args = ["--data", str(shapes), *PLAIN, "--epochs", "1", "--max-steps", "1"]
    out = _torchrun(2, [*args, "--out", str(tmp_path / "ddp")])
    assert "x2" in out and "data parallel: 2 processes" in out
    train(_config([*args, "--out", str(tmp_path / "one")]), log=_quiet)

    ddp, one = load_checkpoint(tmp_path / "ddp" / "last.pt"), load_checkpoint(tmp_path / "one" / "last.pt")
    _assert_weights_close(ddp["model"], one["model"], atol=1e-6)
    _assert_weights_close({i: s["velocity"] for i, s in ddp["optimizer"]["state"].items()},
                          {i: s["velocity"] for i, s in one["optimizer"]["state"].items()}, atol=1e-7)
    # The checkpoint holds each rank's random number generators (augmentation differs per rank).
    assert ddp["world_size"] == 2 and len(ddp["rng"]) == 2 and len(one["rng"]) == 1
    assert not torch.equal(ddp["rng"][0]["augment"], ddp["rng"][1]["augment"])
    assert (ddp["global_step"], ddp["batch_in_epoch"]) == (1, 1)

    # Only rank 0 writes; the global batch of 32 is 16 per process.
    names = sorted(p.name for p in (tmp_path / "ddp").iterdir())
    assert names == ["best.pt", "config.json", "last.pt", "metrics.jsonl", "test.json"], names
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert (config["config"]["world_size"], config["config"]["global_batch"], config["config"]["local_batch"]) == (2, 32, 16)
    assert config["parallel"]["mode"] == "data"
    # Evaluation counts each image once (30 held-out val images, 80 test images, 7 per batch per rank).
    (m_ddp,), (m_one,) = ([json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
                          for r in ("ddp", "one"))
    assert m_ddp["val_images"] == m_one["val_images"] == 30
    assert m_ddp["train_loss"] == pytest.approx(m_one["train_loss"], rel=1e-5)
    t_ddp, t_one = (json.loads((tmp_path / r / "test.json").read_text()) for r in ("ddp", "one"))
    for crops in ("test_1crop", "test_10crop"):
        assert t_ddp[crops]["images"] == t_one[crops]["images"] == 80
        assert abs(t_ddp[crops]["top1_error"] - t_one[crops]["top1_error"]) <= 1 / 80 + 1e-9


def _eval_worker(rank: int, store: str, data: str, out: str) -> None:
    from alexnet.data.prepared import PreparedData
    from alexnet.models import build_model
    from alexnet.parallel import distributed as d
    from alexnet.parallel.placement import Placement

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    d.init_from_env("gloo", timeout_s=60, init_method=f"file://{store}")
    try:
        ctx = d.DistributedContext.from_env("cpu")
        assert ctx.enabled and not ctx.owns_group and ctx.world_size == 2
        prepared = PreparedData.open(data)
        test = prepared.split("test")
        torch.manual_seed(0)
        model = build_model("cifar-fig1")
        placement = Placement("ddp", model, ctx, "paper")
        results = {}
        for n in (21, 1):          # 21: 11 + 10 images; 1: rank 1's part is empty
            split = test.subset(torch.arange(n))
            r = placement.evaluate(placement.eval_part(split), prepared.mean, 28, 10, device=torch.device("cpu"),
                                   batch_size=4)
            results[n] = r
        if rank == 0:
            Path(out).write_text(json.dumps(results))
        ctx.cleanup()              # adopted: left running
        assert torch.distributed.is_initialized() and torch.distributed.get_world_size() == 2
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.distributed
def test_distributed_evaluation_counts_each_image_once(shapes, tmp_path):
    from alexnet.data.prepared import PreparedData
    from alexnet.evaluate import evaluate_split
    from alexnet.models import build_model

    out = tmp_path / "result.json"
    spawn_processes(_eval_worker, (os.fspath(tmp_path / "store"), os.fspath(shapes), os.fspath(out)))
    got = json.loads(out.read_text())
    prepared = PreparedData.open(shapes)
    torch.manual_seed(0)
    model = build_model("cifar-fig1")
    for n in (21, 1):
        want = evaluate_split(model, prepared.split("test").subset(torch.arange(n)), prepared.mean, 28, 10,
                              device=torch.device("cpu"), batch_size=4)
        assert got[str(n)]["images"] == want["images"] == n
        assert got[str(n)]["top1_error"] == pytest.approx(want["top1_error"])
        assert got[str(n)]["top5_error"] == pytest.approx(want["top5_error"])


@pytest.mark.distributed
@pytest.mark.slow
def test_resume_with_another_process_count_continues_at_the_same_sample(shapes, tmp_path):
    """Two processes stop after 5 of 16 steps (8 per epoch); one process resumes: the weights end
    as an uninterrupted one-process run's (the same batches in the same order, same update)."""
    args = ["--data", str(shapes), *PLAIN, "--epochs", "2"]
    train(_config([*args, "--out", str(tmp_path / "whole")]), log=_quiet)

    cut = tmp_path / "cut"
    _torchrun(2, [*args, "--out", str(cut), "--max-steps", "5", "--checkpoint-steps", "5"])
    ckpt = load_checkpoint(cut / "last.pt")
    assert (ckpt["world_size"], ckpt["global_step"], ckpt["epoch"], ckpt["batch_in_epoch"]) == (2, 5, 0, 5)
    messages = []
    result = train(_config([*args, "--out", str(cut), "--resume"]), log=messages.append)
    assert any("same sample position" in str(m) for m in messages)
    assert result["steps"] == 16
    _assert_weights_close(load_checkpoint(cut / "last.pt")["model"],
                          load_checkpoint(tmp_path / "whole" / "last.pt")["model"], atol=1e-5, rtol=1e-4)
    lines = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2] and all(m["complete"] for m in lines)


@pytest.mark.distributed
@pytest.mark.slow
def test_resume_with_the_same_process_count_is_exact(shapes, tmp_path):
    """With random crops, flips and colour noise: each rank's generators come back, bit for bit."""
    args = ["--data", str(shapes), "--arch", "cifar-fig1", "--batch-size", "32", "--epochs", "1", "--deterministic",
            "--no-progress", "--device", "cpu", "--schedule", "step", "--milestones", "5"]
    _torchrun(2, [*args, "--max-steps", "6", "--out", str(tmp_path / "whole")])
    cut = tmp_path / "cut"
    _torchrun(2, [*args, "--max-steps", "3", "--out", str(cut)])
    assert load_checkpoint(cut / "last.pt")["global_step"] == 3
    out = _torchrun(2, [*args, "--max-steps", "6", "--out", str(cut), "--resume"])
    assert "resuming from" in out and "fresh augmentation" not in out
    a, b = load_checkpoint(tmp_path / "whole" / "last.pt")["model"], load_checkpoint(cut / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------------
# The paper's columns on two processes


@pytest.mark.distributed
@pytest.mark.slow
def test_columns_on_two_gloo_processes_train_like_the_grouped_network(shapes224, tmp_path, capsys):
    """`torchrun --nproc-per-node 2 -m alexnet train --parallel columns`: each process one column,
    both reading the same batch with the same augmentation. Without dropout two steps give the
    grouped network's weights and velocities; the checkpoint is the grouped form, which `alexnet
    eval` reads, and the log and config.json carry the exchange and memory accounting."""
    from alexnet import cli

    args = ["--data", str(shapes224), "--arch", "alexnet2012", "--dropout", "0", "--batch-size", "4",
            "--epochs", "1", "--max-steps", "2", "--no-progress", "--device", "cpu", "--keep-checkpoints", "0"]
    out = _torchrun(2, [*args, "--parallel", "columns", "--out", str(tmp_path / "columns")], timeout_s=400)
    assert "one column per process" in out and "columns exchange per step" in out
    train(_config([*args, "--out", str(tmp_path / "grouped")], test_crops=(1,)), log=_quiet)

    col, grp = load_checkpoint(tmp_path / "columns" / "last.pt"), load_checkpoint(tmp_path / "grouped" / "last.pt")
    assert col["parallel"] == "columns" and col["world_size"] == 2
    _assert_weights_close(col["model"], grp["model"], atol=1e-4, rtol=1e-4)
    assert sorted(col["optimizer"]["state"]) == sorted(grp["optimizer"]["state"])
    _assert_weights_close({i: s["velocity"] for i, s in col["optimizer"]["state"].items()},
                          {i: s["velocity"] for i, s in grp["optimizer"]["state"].items()}, atol=1e-4, rtol=1e-4)
    config = json.loads((tmp_path / "columns" / "config.json").read_text())
    par = config["parallel"]
    assert par["form"] == "columns-distributed"
    assert par["exchanged_per_step"]["forward_bytes"] == 4 * 4 * 2 * (128 * 13 * 13 + 4608 + 2048) + 4 * 4 * 2048
    assert [d["device"] for d in par["per_device_memory_estimate"]] == [0, 1]

    assert cli.main(["eval", "--checkpoint", str(tmp_path / "columns" / "last.pt"), "--data", str(shapes224),
                     "--split", "test", "--crops", "1", "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["images"] == 10


# ---------------------------------------------------------------------------------------------
# The 3 GB question


def test_memory_on_the_cpu_reports_the_estimate_and_says_it_needs_cuda(capsys):
    from alexnet.runtime import apply_memory_cap
    from alexnet.tools import memory

    assert memory.main(["--device", "cpu", "--cap-gb", "3"]) == 0
    text = capsys.readouterr().out
    assert "needs CUDA" in text and "column 0 (holds fc8)" in text and "whole network" in text
    assert memory.main(["--device", "cpu", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["measured"] is False and r["batch"] == 128
    est = r["estimate"]
    assert est["column_0"]["total_bytes"] < est["whole"]["total_bytes"]
    assert est["column_0"]["param_bytes"] == 4 * 32_531_112 and est["column_1"]["param_bytes"] == 4 * 28_434_112
    assert apply_memory_cap(3, ["cpu"]) == []


def test_a_column_on_its_own_runs_forward_and_backward_with_the_exchanged_tensors_as_inputs():
    from alexnet.tools.memory import column_step
    from alexnet.models.alexnet2012 import AlexNet2012, AlexNet2012Config

    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 224, 224) * 50, torch.tensor([1, 2])
    for index in (0, 1):
        column = AlexNet2012(AlexNet2012Config(num_classes=5), column=index)
        out = column_step(column, x, y)
        assert out.shape == (() if index == 0 else (2, 2048))
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in column.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_memory_on_cuda_measures_one_column_below_the_whole_network():
    """Also when this process already holds CUDA memory (earlier tests): peaks and the cap are
    measured relative to what the caller holds."""
    from alexnet.tools.memory import format_report, measure

    held = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")          # 64 MiB the caller keeps
    r = measure(batch=16, cap_gb=1.5, steps=2)
    info = json.dumps(r, indent=1)
    assert r["measured"] and r["context"]["at_init_bytes"] > 0, info
    whole, c0, c1 = (r[k]["peak_allocated_bytes"] for k in ("whole", "column_0", "column_1"))
    assert 0 < c1 < c0 < whole, info
    assert whole > 3 * 4 * 60_000_000, info                # weights, gradients, velocities
    assert r["cap"]["column_0"]["fits"] and r["cap"]["held_by_caller_bytes"] >= held.numel(), info
    assert "under a cap of 1.5 GiB" in format_report(r)


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_with_the_all_reduce_in_the_step_equals_ddp(shapes, tmp_path):
    """`--ddp-reduce step` (the step all-reduces the gradients after backward: what the CUDA-graph
    step uses on GPUs) against torch's DDP: the same weights and velocities after 3 steps, dropout
    and augmentation on (each rank its own draws, the same in both runs)."""
    args = ["--data", str(shapes), "--arch", "cifar-alexnet", "--batch-size", "16", "--epochs", "1", "--max-steps",
            "3", "--deterministic", "--no-progress", "--device", "cpu", "--eval-batch-size", "7"]
    out = _same_runs(args, "step", "ddp", tmp_path)
    assert "gradients all-reduced in the step" in out


def _same_runs(args: list[str], reduce: str, other: str, tmp_path: Path, atol: float = 1e-6, rtol: float = 1e-5,
               nproc: int = 2) -> str:
    """Two `nproc`-process runs of `args`, `--ddp-reduce reduce` and `other`: the same weights and
    velocities at the end (every velocity moved; velocities to atol / 10). Returns the first run's output."""
    out = _torchrun(nproc, [*args, "--ddp-reduce", reduce, "--out", str(tmp_path / reduce)])
    _torchrun(nproc, [*args, "--ddp-reduce", other, "--out", str(tmp_path / other)])
    a, b = load_checkpoint(tmp_path / reduce / "last.pt"), load_checkpoint(tmp_path / other / "last.pt")
    _assert_weights_close(a["model"], b["model"], atol=atol, rtol=rtol)
    _assert_weights_close({i: s["velocity"] for i, s in a["optimizer"]["state"].items()},
                          {i: s["velocity"] for i, s in b["optimizer"]["state"].items()}, atol=atol / 10, rtol=rtol)
    assert all(s["velocity"].abs().max() > 0 for s in a["optimizer"]["state"].values())
    return out


@pytest.mark.slow
@pytest.mark.distributed
def test_overlapped_all_reduce_equals_the_all_reduce_after_backward(shapes224, tmp_path):
    """`--ddp-reduce overlap` (the paper's net: backward in two parts, the classifier's all-reduces
    started before the convolutions' backward pass) gives the weights and velocities of `--ddp-reduce
    step` after 2 steps of alexnet2012, dropout and augmentation on."""
    args = ["--data", str(shapes224), "--arch", "alexnet2012", "--batch-per-process", "2", "--epochs", "1",
            "--max-steps", "2", "--deterministic", "--no-progress", "--device", "cpu", "--eval-batch-size", "4",
            "--test-crops", "1"]
    out = _same_runs(args, "overlap", "step", tmp_path)
    assert "the classifier's during the convolutions' backward pass" in out


@pytest.mark.slow
@pytest.mark.distributed
def test_the_shared_out_classifier_update_equals_the_overlapped_all_reduce(shapes224, tmp_path):
    """`--ddp-reduce shard` (the classifier's gradients reduce-scattered, each process updating its
    slice, the slices gathered during the next step) gives the weights and velocities of `--ddp-reduce
    overlap` after 3 steps of alexnet2012: on two processes bit for bit (a sum of two is the same in any
    order, and halving is exact; a stale slice would show), on three to rounding (3 divides the fc
    weights, sharded, not the 4,096 biases, all-reduced whole); and a run resumed from its step-2
    checkpoint (which gathers the slices) continues it exactly."""
    base = ["--data", str(shapes224), "--arch", "alexnet2012", "--batch-per-process", "2", "--epochs", "1",
            "--deterministic", "--no-progress", "--device", "cpu", "--eval-batch-size", "4", "--test-crops", "1",
            "--recipe", "cuda-convnet"]                      # two parameter groups: biases' own rate and decay
    out = _same_runs([*base, "--max-steps", "3"], "shard", "overlap", tmp_path / "two", atol=0, rtol=0)
    assert "its update shared out" in out
    _same_runs([*base, "--max-steps", "3"], "shard", "overlap", tmp_path / "three", nproc=3)
    _torchrun(2, [*base, "--max-steps", "2", "--ddp-reduce", "shard", "--out", str(tmp_path / "r")])
    _torchrun(2, [*base, "--max-steps", "3", "--ddp-reduce", "shard", "--out", str(tmp_path / "r"), "--resume"])
    a, b = load_checkpoint(tmp_path / "r" / "last.pt"), load_checkpoint(tmp_path / "two" / "shard" / "last.pt")
    _assert_weights_close(a["model"], b["model"], atol=0, rtol=0)
    _assert_weights_close({i: s["velocity"] for i, s in a["optimizer"]["state"].items()},
                          {i: s["velocity"] for i, s in b["optimizer"]["state"].items()}, atol=0, rtol=0)


def test_auto_reduce_shares_the_classifier_update_out_when_graphed_in_fp32():
    """`--ddp-reduce auto`: shard for the CUDA-graphed step (measured fastest on two H200s), overlap
    where the all-reduce is bf16 (shard is fp32 only), torch's DDP wrapper without graphs."""
    from alexnet.parallel.placement import REDUCES, auto_reduce

    assert auto_reduce(True) == auto_reduce(True, "fp32") == "shard"
    assert auto_reduce(True, "bf16") == "overlap"
    assert auto_reduce(False) == auto_reduce(False, "bf16") == "ddp"
    assert {auto_reduce(g, d) for g in (True, False) for d in ("fp32", "bf16")} <= set(REDUCES)


@pytest.mark.distributed
@pytest.mark.gpu
@TWO_GPUS
def test_the_shared_out_classifier_update_equals_the_overlap_over_nccl(shapes224, tmp_path):
    """The same on two GPUs over NCCL (reduce-scatter with AVG, in-place all-gather), 3 eager fp32
    steps. cuDNN and TF32 make two identical GPU runs differ (2.5e-5 in conv1 once, 2026-11-30), so
    the bound is that noise floor, measured here: shard against overlap differs by at most 10x what
    overlap against itself does or by at most 1e-4 (rounding grown over 3 steps, where two overlap runs
    happen to agree bit for bit), and always by under 1e-3 (a stale slice: 2e-2 on the CPU). Prints the
    largest difference of each kind (`pytest -s`)."""
    args = ["--data", str(shapes224), "--arch", "alexnet2012", "--batch-per-process", "2", "--epochs", "1",
            "--max-steps", "3", "--no-progress", "--device", "cuda", "--no-compile", "--no-cuda-graphs",
            "--eval-batch-size", "4", "--test-crops", "1", "--precision", "fp32"]
    runs = {}
    for name, reduce in (("shard", "shard"), ("overlap", "overlap"), ("again", "overlap")):
        out = _torchrun(2, [*args, "--ddp-reduce", reduce, "--out", str(tmp_path / name)])
        ckpt = load_checkpoint(tmp_path / name / "last.pt")
        runs[name] = {**ckpt["model"], **{f"v{i}": s["velocity"] for i, s in ckpt["optimizer"]["state"].items()}}
        assert reduce != "shard" or "its update shared out" in out
    worst = {"shard": (0.0, ""), "again": (0.0, "")}
    for k, ref in runs["overlap"].items():
        if not ref.is_floating_point():
            continue
        noise = (runs["again"][k] - ref).abs().max().item()
        diff = (runs["shard"][k] - ref).abs().max().item()
        worst = {"shard": max(worst["shard"], (diff, k)), "again": max(worst["again"], (noise, k))}
        assert diff <= max(10 * noise, 1e-4) and diff < 1e-3, f"{k}: shard differs by {diff:.3g}, overlap by {noise:.3g}"
    print("largest difference from overlap: " + ", ".join(f"{n} {d:.3g} ({k})" for n, (d, k) in worst.items()))


def test_the_bf16_all_reduce_rounds_each_gradient_to_bf16_and_keeps_the_overlap_order():
    """`--ddp-reduce-dtype bf16`, one process (no collectives, the sum is the gradient): the step's
    and the overlapped reduce leave each gradient rounded to bf16, in its own dtype; fp32 leaves it."""
    from alexnet.models import build_model
    from alexnet.parallel.distributed import DistributedContext
    from alexnet.parallel.placement import Placement

    torch.manual_seed(0)
    model = build_model("alexnet2012", num_classes=10)
    for reduce, dtype in [("overlap", "bf16"), ("step", "bf16"), ("overlap", "fp32")]:
        p = Placement("ddp", model, DistributedContext(world_size=1), "paper", reduce, dtype)
        for q in model.parameters():
            q.grad = torch.randn_like(q) / 3
        want = [q.grad.to(torch.bfloat16).float() if dtype == "bf16" else q.grad.clone() for q in model.parameters()]
        if reduce == "overlap":
            p.finish_reduce(p.start_classifier_reduce())
        else:
            p.reduce_gradients()
        assert all(q.grad.dtype == torch.float32 and torch.equal(q.grad, w) for q, w in zip(model.parameters(), want))
        assert ("in bf16" in p.describe()) == (dtype == "bf16")


@pytest.mark.slow
@pytest.mark.distributed
def test_bf16_all_reduce_trains_close_to_fp32_in_both_reducers(shapes, tmp_path):
    """`--ddp-reduce-dtype bf16` under the step's all-reduce and under torch's DDP (its
    bf16_compress_hook): 3 steps end close to the fp32 run's weights, but not equal to them."""
    args = ["--data", str(shapes), "--arch", "cifar-alexnet", "--batch-size", "16", "--epochs", "1", "--max-steps",
            "3", "--deterministic", "--no-progress", "--device", "cpu", "--eval-batch-size", "8"]
    models = {}
    for name, extra in [("fp32", ["--ddp-reduce", "step"]),
                        ("bf16-step", ["--ddp-reduce", "step", "--ddp-reduce-dtype", "bf16"]),
                        ("bf16-ddp", ["--ddp-reduce", "ddp", "--ddp-reduce-dtype", "bf16"])]:
        out = _torchrun(2, [*args, *extra, "--out", str(tmp_path / name)])
        assert ("in bf16" in out) == name.startswith("bf16")
        models[name] = load_checkpoint(tmp_path / name / "last.pt")["model"]
    for name in ("bf16-step", "bf16-ddp"):
        _assert_weights_close(models[name], models["fp32"], atol=2e-4, rtol=1e-2)
        assert any(not torch.equal(models[name][k], models["fp32"][k]) for k in models["fp32"])


def test_gradients_are_bucketed_as_ddp_does_and_large_ones_stay_alone():
    """The step's all-reduce buckets: consecutive gradients up to 25 MB each; one larger than that
    is a bucket of its own (reduced in place). For the paper's net: the convolutions' ten tensors in
    one bucket, fc6's and fc7's weights alone."""
    from alexnet.models import build_model
    from alexnet.parallel.placement import BUCKET_BYTES, buckets

    t = [torch.empty(n) for n in (4, 4, 2**20, 7 * 2**20, 3)]       # 16 B, 16 B, 4 MiB, 28 MiB, 12 B
    assert [[x.numel() for x in b] for b in buckets(t)] == [[4, 4, 2**20], [7 * 2**20], [3]]
    assert [len(b) for b in buckets(t, limit=16)] == [1, 1, 1, 1, 1]
    model = build_model("alexnet2012", num_classes=1000)
    late = {id(q) for q in model.classifier_parameters()}
    conv = buckets([p for p in model.parameters() if id(p) not in late])
    assert len(conv) == 1 and len(conv[0]) == 10
    fc = buckets(list(model.classifier_parameters()))
    big = [b for b in fc if b[0].numel() * 4 > BUCKET_BYTES]
    assert [len(b) for b in big] == [1, 1] and sum(len(b) for b in fc) == 6


def _reducer_worker(rank: int, store: str, backend: str) -> None:
    """Each rank's gradients drawn from its own seed; after each reducer every gradient must be the
    exact mean of both ranks' (exact for two processes: one addition, one halving)."""
    import torch.distributed as td

    from alexnet.models import build_model
    from alexnet.parallel.distributed import DistributedContext
    from alexnet.parallel.placement import Placement

    device = torch.device(f"cuda:{rank}" if backend == "nccl" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    td.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        dist = DistributedContext(rank=rank, world_size=2, local_rank=rank, device=device, enabled=True)
        torch.manual_seed(0)
        model = build_model("alexnet2012", num_classes=10).to(device)
        draws = lambda r: [torch.randn(q.shape, generator=torch.Generator().manual_seed(100 * r + i)) / 3  # noqa: E731
                           for i, q in enumerate(model.parameters())]
        mine, theirs = draws(rank), draws(1 - rank)
        for reduce, dtype in [("overlap", "fp32"), ("step", "fp32"), ("overlap", "bf16"), ("step", "bf16")]:
            p = Placement("ddp", model, dist, "paper", reduce, dtype)
            for q, g in zip(model.parameters(), mine):
                q.grad = g.to(device, copy=True)
            if reduce == "overlap":
                assert p.parts is not None
                p.finish_reduce(p.start_classifier_reduce())
            else:
                p.reduce_gradients()
            for (name, q), a, b in zip(model.named_parameters(), mine, theirs):
                if dtype == "bf16":
                    want = (a.bfloat16() + b.bfloat16()).float() / 2
                else:
                    want = (a + b) / 2
                got = q.grad.cpu()
                assert got.dtype == torch.float32 and torch.equal(got, want), \
                    f"{backend} {reduce} {dtype} {name}: max error {(got - want).abs().max():.3g}"
    finally:
        td.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("backend", ["gloo", pytest.param("nccl", marks=[pytest.mark.gpu, TWO_GPUS])])
def test_the_step_reducers_make_every_gradient_the_exact_mean(backend, tmp_path):
    """The step's reducers (`--ddp-reduce overlap`: the classifier's buckets asynchronously, the
    convolutions' after their backward pass; `step`: every bucket after backward; buckets of one
    large tensor reduced in place, of several flattened), in fp32 and bf16, on gloo (sum, then
    divided) and on two GPUs over NCCL (its AVG: no division pass)."""
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    spawn_processes(_reducer_worker, (os.fspath(tmp_path / "store"), backend), timeout_s=180)


def test_the_collective_stop_poll_runs_only_on_the_batches_every_process_has():
    """DDP's evaluation shares differ by an image, and can differ by a batch: the stop poll (a
    collective) must run the same number of times on every process (a 2-process run with 1 val image
    crashed in gloo on 'collective mismatch' before: `test_overlapped_all_reduce...` runs it)."""
    from alexnet.parallel.distributed import DistributedContext
    from alexnet.parallel.placement import Placement

    dist = DistributedContext(rank=0, world_size=2)          # not enabled: no collectives here
    ddp = Placement("ddp", torch.nn.Linear(2, 2), dist, "paper", reduce="ddp")
    split = list(range(1001))                                # shares 501 and 500
    assert ddp.common_eval_batches(split, 500) == 1          # 2 batches and 1
    assert ddp.common_eval_batches(split, 100) == 5          # 6 and 5
    assert ddp.common_eval_batches(list(range(1000)), 500) == 1
    assert ddp.common_eval_batches([0], 4) == 0              # shares 1 and 0
    assert Placement("single", torch.nn.Linear(2, 2), dist, "paper").common_eval_batches(split, 500) is None
    polls = []
    poll = ddp.eval_stop_poll(split, 500, lambda: polls.append(1) or False)
    assert [poll(), poll(), poll()] == [False] * 3 and len(polls) == 1


@pytest.mark.gpu
@TWO_GPUS
@pytest.mark.parametrize("form", ["ddp", "columns"])
def test_graphed_distributed_runs_finish_and_exit(form, shapes, shapes224, tmp_path):
    """Both forms whose CUDA graph holds NCCL collectives (DDP with the all-reduces in the step, one
    column per process) train a few steps, save, and the processes exit: the graph is freed before
    the process group is destroyed (destroy_process_group hangs otherwise, pytorch/pytorch#115388)."""
    if form == "ddp":
        args = ["--data", str(shapes), "--arch", "cifar-alexnet", "--batch-per-process", "16"]  # graphed by default
    else:
        args = ["--data", str(shapes224), "--arch", "alexnet2012", "--parallel", "columns", "--batch-size", "8"]
    out = _torchrun(2, [*args, "--epochs", "1", "--max-steps", "12", "--no-progress", "--eval-batch-size", "8",
                        "--out", str(tmp_path / form)], timeout_s=300)
    assert "CUDA graphs" in out
    if form == "ddp":
        assert "gradients all-reduced in the step" in out
    assert "capture failed" not in out
    assert (tmp_path / form / "last.pt").exists()
