"""`alexnet bench` on the CPU at --small sizes: every row runs, the JSON has its keys, numbers are
positive. The GPU figures are in docs/notes-speed.md."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alexnet.tools import bench
from alexnet.cli import main


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One `alexnet bench --device cpu --small --json` run shared by the tests of this module."""
    import contextlib
    import io

    work = tmp_path_factory.mktemp("bench")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["bench", "--device", "cpu", "--small", "--json", "--quiet", "--workdir", str(work),
                   "--json-out", str(work / "bench.json"), "--loader-variants", "pread:2"])
    assert rc == 0
    return json.loads(buf.getvalue()), work


def test_small_cpu_run_has_every_row_with_positive_numbers(small_run):
    r, _ = small_run
    assert r["env"]["device"] == "cpu" and r["config"]["small"] is True
    assert {n: r["nets"][n]["compile"] for n in bench.NETS} == {"alexnet2012": "off", "torchvision": "off"}
    rows = {(row["row"], row["batch"]): row for row in r["rows"]}
    assert {k[0] for k in rows} == {"train", "infer", "tencrop", "step_u8"}
    for (kind, _), row in rows.items():
        nets = ["alexnet2012"] if kind == "step_u8" else list(bench.NETS)
        for n in nets:
            assert row[n]["images_per_s"] > 0 and row[n]["ms"] > 0, (kind, n)
        if kind != "step_u8":
            assert row["ratio"] > 0
    e2e = r["e2e"]
    assert e2e["images"] > 0
    for b, e in e2e["batches"].items():
        for key in ("e2e_images_per_s", "loader_only_images_per_s", "synthetic_images_per_s",
                    "e2e_over_synthetic", "projected_90_epochs_h"):
            assert e[key] > 0, key
    assert rows[("tencrop", r["config"]["eval_batch"])]["views_per_image"] == 10
    (variant,) = e2e["variants"]
    assert variant["reader"] == "pread" and variant["threads"] == 2 and variant["e2e_images_per_s"] > 0


def test_json_file_and_table(small_run):
    r, work = small_run
    assert json.loads((work / "bench.json").read_text())["rows"] == r["rows"]
    table = bench.format_table(r)
    assert "train step" in table and "ratio" in table and "end-to-end" in table


def test_replicate_prepared_cycles_rows_and_labels(tmp_path):
    from alexnet.data.prepare import prepare
    from alexnet.data.prepared import PreparedData

    src = prepare(bench.make_synthetic_source(tmp_path / "src", 5), tmp_path / "prep", size=32, workers=1,
                  progress=False)
    info = bench.replicate_prepared(src, tmp_path / "rep", 12)
    assert info["images"] == 12 and info["source_images"] == 5
    a, b = PreparedData.open(src).split("train"), PreparedData.open(tmp_path / "rep").split("train")
    assert len(b) == 12
    assert torch.equal(b.read(list(range(12))), a.read([i % 5 for i in range(12)]))
    assert torch.equal(b.labels, a.labels[torch.arange(12) % 5])
    frac = bench.page_cache_fraction(b.path)
    assert frac is None or 0.0 <= frac <= 1.0


def test_raw_readers_equal_the_split_reader(tmp_path):
    from alexnet.data.loader import BatchLoader
    from alexnet.data.prepare import prepare
    from alexnet.data.prepared import PreparedData

    src = prepare(bench.make_synthetic_source(tmp_path / "src", 7), tmp_path / "prep", size=32, workers=1,
                  progress=False)
    split = PreparedData.open(src).split("train")
    for part in (split, split.subset([6, 1, 4, 3])):
        kw = dict(shuffle=True, seed=2, drop_last=False, threads=2)
        plain = [(x.clone(), y.clone()) for x, y in BatchLoader(part, 3, reader="split", **kw)]
        for reader in ("auto", "gather", "pread"):
            fast = [(x.clone(), y.clone()) for x, y in BatchLoader(part, 3, reader=reader, **kw)]
            assert len(fast) == len(plain) > 0
            for (a, ya), (b, yb) in zip(fast, plain):
                assert torch.equal(a, b) and torch.equal(ya, yb), reader


def test_categories_of_kernel_names():
    c = bench.categorize
    assert c("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc") == "convolutions"
    assert c("sm90_xmma_wgrad_implicit_gemm_indexed_bf16") == "convolutions"
    assert c("nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NTT") == "matmul (fc layers)"
    assert c("_lrn_bwd_tile") == "response norm (Triton)"
    assert c("triton_poi_fused_max_pool2d_with_indices_3") == "max-pool"
    assert c("_pool_bwd") == c("_pool_fwd") == "max-pool"                  # alexnet.kernels.max_pool
    assert c("triton_poi_fused_relu_threshold_backward_5") == "fused elementwise (inductor Triton)"
    assert c("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<...>") == "optimizer"
    assert c("Memcpy HtoD (Pinned -> Device)") == "memcpy/memset"


def test_measure_takes_the_median_and_alternates():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    t = bench.measure(fns, bench.Timer(torch.device("cpu")), warmup=1, steps=2, repeats=3)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3          # warm-up, then alternating runs
    assert set(t) == {"a", "b"} and all(len(v["runs_ms"]) == 3 and v["ms"] >= 0 for v in t.values())
    assert np.isclose(t["a"]["ms"], sorted(t["a"]["runs_ms"])[1])


def test_unknown_rows_are_refused():
    with pytest.raises(ValueError, match="unknown rows"):
        bench.BenchConfig(rows=("train", "bogus")).resolved()
