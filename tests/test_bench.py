"""`alexnet bench` on the CPU at tiny sizes: every row and form it can run here runs, the JSON has
its keys, numbers are positive, the CPU defaults are CPU-sized. The GPU figures: docs/RESULTS.md."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alexnet.cli import main
from alexnet.tools import bench, bench_data, bench_parallel, bench_steps, timing


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One `alexnet bench --device cpu --batch 2 --json` run shared by the tests of this module."""
    import contextlib
    import io

    work = tmp_path_factory.mktemp("bench")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["bench", "--device", "cpu", "--batch", "2", "--steps", "1", "--warmup", "0", "--json", "--quiet",
                   "--workdir", str(work), "--json-out", str(work / "bench.json"), "--e2e-steps", "1",
                   "--workers", "0", "1"])
    assert rc == 0
    return json.loads(buf.getvalue()), work


def test_every_form_the_cpu_runs_has_a_positive_rate(small_run):
    r, _ = small_run
    assert r["env"]["device"] == "cpu"
    rates = {(row["form"], row["variant"]): row["images_per_s"] for row in r["step"] if "images_per_s" in row}
    assert set(rates) == {(f, "eager") for f in ("alexnet2012", "torchvision", "one-column", "columns-2streams")}
    assert all(v > 0 for v in rates.values()), rates
    whats = {c["what"] for c in r["comparisons"]}
    assert "the paper's net / torchvision's" in whats and any("two streams" in w for w in whats)
    assert {p["row"] for p in r["peers"]} == {"infer", "tencrop"}
    assert all(p["alexnet2012"]["images_per_s"] > 0 and p["ratio"] > 0 for p in r["peers"])


def test_end_to_end_rows_per_worker_count(small_run):
    r, _ = small_run
    e2e = r["e2e"]
    assert e2e["images"] > 0 and [row["workers"] for row in e2e["rows"]] == [0, 1]
    for row in e2e["rows"]:
        for key in ("e2e_images_per_s", "loader_images_per_s", "resident_images_per_s", "e2e_over_resident",
                    "epoch_minutes"):
            assert row[key] > 0, key


def test_json_file_and_table(small_run):
    r, work = small_run
    assert json.loads((work / "bench.json").read_text())["step"] == r["step"]
    table = bench.format_table(r)
    for needle in ("training step on GPU-resident batches", "alexnet2012", "columns-2streams", "peers",
                   "end to end", "ratio"):
        assert needle in table, needle


def test_cpu_defaults_are_cpu_sized_and_small_rates_keep_their_digits():
    cfg = bench.BenchConfig(device="cpu").resolved()
    assert cfg.batches == (8,) and cfg.steps == 2 and cfg.repeats == 1 and cfg.variants == ("eager",)
    assert "columns-2gpu" not in cfg.forms
    assert bench._fmt_rate(3.14159) == "3.14" and bench._fmt_rate(12_345.6) == "12,346"


def test_replicate_prepared_cycles_rows_and_labels(tmp_path):
    from alexnet.data.prepare import prepare
    from alexnet.data.prepared import PreparedData

    src = prepare(bench_data.make_synthetic_source(tmp_path / "src", 5), tmp_path / "prep", size=32, workers=1,
                  progress=False, encoding="raw")
    info = bench_data.replicate_prepared(src, tmp_path / "rep", 12)
    assert info["images"] == 12 and info["source_images"] == 5
    a, b = PreparedData.open(src).split("train"), PreparedData.open(tmp_path / "rep").split("train")
    assert len(b) == 12
    assert torch.equal(b.read(list(range(12))), a.read([i % 5 for i in range(12)]))
    assert torch.equal(b.labels, a.labels[torch.arange(12) % 5])
    b.read(list(range(12)))                                # just read: its pages are in the page cache
    assert bench_data.page_cache_fraction(b.path) == pytest.approx(1.0)


def test_the_step_of_each_form_trains():
    """One step of each CPU form changes the weights (the step timed is a real training step)."""
    dev = torch.device("cpu")
    for form in ("alexnet2012", "one-column", "columns-2streams"):
        placement = bench_steps.build_form(form, dev)
        before = next(placement.model.parameters()).detach().clone()
        fn = bench_steps.step_fn(placement, "eager", 2, dev)
        loss = fn()
        assert torch.isfinite(loss) and not torch.equal(before, next(placement.model.parameters())), form


def test_categories_of_kernel_names():
    c = timing.categorize
    assert c("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc") == "convolutions"
    assert c("sm90_xmma_wgrad_implicit_gemm_indexed_bf16") == "convolutions"
    assert c("nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NTT") == "matmul (fc layers)"
    assert c("_lrn_bwd_tile") == "response norm (Triton)"
    assert c("triton_poi_fused_max_pool2d_with_indices_3") == "max-pool"
    assert c("_pool_bwd") == c("_pool_fwd") == "max-pool"                  # alexnet.kernels.max_pool
    assert c("triton_poi_fused_relu_threshold_backward_5") == "fused elementwise (inductor Triton)"
    assert c("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<...>") == "optimizer"
    assert c("Memcpy HtoD (Pinned -> Device)") == "memcpy/memset"
    assert c("Memcpy PtoP (Device -> Device)") == "exchange (peer copies)"
    assert c("ncclDevKernel_AllGather_RING_LL") == "collectives (NCCL)"


def test_measure_takes_the_median_and_alternates():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    t = timing.measure(fns, timing.Timer(torch.device("cpu")), warmup=1, steps=2, repeats=3)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3          # warm-up, then alternating runs
    assert set(t) == {"a", "b"} and all(len(v["runs_ms"]) == 3 and v["ms"] >= 0 for v in t.values())
    assert np.isclose(t["a"]["ms"], sorted(t["a"]["runs_ms"])[1])


def test_unknown_rows_and_forms_are_refused():
    with pytest.raises(ValueError, match="unknown rows"):
        bench.BenchConfig(device="cpu", rows=("step", "bogus")).resolved()
    with pytest.raises(ValueError, match="unknown forms"):
        bench.BenchConfig(device="cpu", forms=("alexnet2013",)).resolved()


def test_the_torchrun_rows_time_what_train_runs():
    """With "graphed" asked for, DDP is timed graphed (what `alexnet train` runs on GPUs) and with the
    classifier's update shared out; --only takes the torchrun forms' own variants."""
    cfg = bench.BenchConfig(device="cpu", variants=("eager", "compiled", "graphed")).resolved()
    assert bench.parallel_variants(cfg, "ddp") == ["eager", "compiled", "graphed", "graphed-shard"]
    assert bench.parallel_variants(cfg, "columns-2proc") == ["eager", "compiled", "graphed"]
    cpu = bench.BenchConfig(device="cpu").resolved()
    assert bench.parallel_variants(cpu, "ddp") == ["eager"]
    only = bench.BenchConfig(device="cpu", only=("ddp:graphed-shard", "alexnet2012:eager")).resolved()
    assert bench.plan_pairs(only, bench_parallel.PARALLEL_FORMS) == [("ddp", "graphed-shard")]
    with pytest.raises(ValueError, match="FORM:VARIANT"):
        bench.plan_pairs(bench.BenchConfig(device="cpu", only=("alexnet2012:graphed-shard",)).resolved(),
                         bench_steps.FORMS)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("form", ["ddp", "columns-2proc"])
def test_the_torchrun_forms_run_on_two_cpu_processes(form, tmp_path):
    """`bench_parallel` (what `alexnet bench` launches with two GPUs for its torchrun rows) on two gloo
    CPU processes: both forms time a step and rank 0 writes a positive rate (DDP: of both processes'
    images)."""
    from alexnet.tools.bench_parallel import run_under_torchrun

    r = run_under_torchrun(form, [2], ["eager"], steps=1, warmup=1, repeats=1, device="cpu",
                           out=tmp_path / "out.json", timeout_s=240)
    assert "error" not in r, r
    row = r["rows"]["2/eager"]
    assert r["world_size"] == 2 and row["ms"] > 0
    assert row["images_per_s"] == pytest.approx((4 if form == "ddp" else 2) / row["ms"] * 1e3, rel=1e-6)
