"""`alexnet profile` (alexnet.tools.profile_train): a real run's step time, traced over a window of its
steps, and the run stopped after it."""

import json

import pytest
import torch

from alexnet.cli import main
from alexnet.config import TrainConfig
from alexnet.errors import AlexnetError
from alexnet.tools import profile_train as P


def test_union_counts_overlapping_time_once():
    assert P.union_ms([]) == 0
    assert P.union_ms([(0, 1000), (500, 1500), (2000, 3000)]) == 2.5      # overlap once, a gap not at all
    assert P.union_ms([(0, 4000), (1000, 2000)]) == 4.0                      # nested
    assert P.union_ms([(3000, 4000), (0, 1000)]) == 2.0                      # any order


def test_gaps_are_the_time_between_the_union_s_pieces():
    def gaps_ms(intervals):
        return [g for g, _ in P.gaps_before((a, b, None) for a, b in intervals)]

    assert gaps_ms([]) == []
    assert gaps_ms([(0, 1000), (500, 1500), (2000, 3000), (2500, 2600), (3100, 4000)]) == [0.5, 0.1]
    assert gaps_ms([(3000, 4000), (0, 1000)]) == [2.0]


def test_gaps_are_counted_by_length_and_by_what_ended_them():
    items = [(0, 100, "a"), (105, 200, "conv"), (230, 400, "copy"), (700, 800, "conv"), (2000, 2100, "copy")]
    gaps = P.gaps_before(items)
    assert gaps == [(0.005, "conv"), (0.03, "copy"), (0.3, "conv"), (1.2, "copy")]
    g = P.gap_profile(gaps, steps=2)
    assert list(g["by_length"]) == ["under 10 us", "10-50 us", "50-200 us", "200-500 us", "500 us or more"]
    assert g["by_length"]["under 10 us"] == [0.5, 0.0025]
    assert g["by_length"]["50-200 us"] == [0.0, 0.0]
    assert g["by_length"]["500 us or more"] == [0.5, 0.6]
    assert g["before"] == {"copy": pytest.approx(0.615), "conv": pytest.approx(0.1525)}
    text = P.table({"steps": 2, "batch": 8, "wall_ms": 2.0, "images_per_s": 4000.0, "epochs": [1, 1],
                    "busy_ms": 1.0, "idle_ms": 1.0, "long_gaps": 1, "long_gap_ms": 0.6, "gaps": g,
                    "kernel_ms": {"conv": 0.5}})
    assert "500 us or more 0.5, 0.600" in text and "copy 0.615" in text


def test_kernels_are_summed_by_name_longest_first(monkeypatch):
    from types import SimpleNamespace

    import alexnet.tools.timing as timing

    def evt(name, a, b):
        return SimpleNamespace(name=name, time_range=SimpleNamespace(start=a, end=b))

    trace = [(evt("conv_fprop", 0, 300), 300.0), (evt("_lrn_bwd_tile", 300, 350), 50.0),
             (evt("conv_fprop", 400, 700), 300.0), (evt("Memcpy HtoD", 0, 900), 900.0)]
    monkeypatch.setattr(timing, "device_events", lambda prof: iter(trace))
    r = P.summarize(None, wall_s=2e-3, steps=2, batch=8, device=torch.device("cuda"))
    assert [k["name"] for k in r["top_kernels"]] == ["Memcpy HtoD", "conv_fprop", "_lrn_bwd_tile"]
    conv = r["top_kernels"][1]
    assert conv["ms_per_step"] == pytest.approx(0.3) and conv["calls_per_step"] == 1.0
    assert conv["category"] == "convolutions" and r["kernel_ms"]["convolutions"] == pytest.approx(0.3)
    assert r["busy_ms"] == pytest.approx(0.45)   # 0-900 us covered once, over 2 steps
    r["epochs"] = [1, 1]
    assert "0.300   1.00  conv_fprop" in P.table(r)


def test_the_resident_step_s_profile_lists_its_kernels_in_the_same_form(monkeypatch):
    from types import SimpleNamespace

    import alexnet.tools.timing as timing

    avg = [SimpleNamespace(key="conv_fprop", count=4, self_device_time_total=600.0),
           SimpleNamespace(key="aten::conv2d", count=2, self_device_time_total=0.0),   # host-side: no GPU time
           SimpleNamespace(key="_lrn_bwd_tile", count=2, self_device_time_total=50.0)]
    monkeypatch.setattr(timing, "_profile", lambda fn, steps, timer: (SimpleNamespace(key_averages=lambda: avg), 1.0))
    r = timing.profile_breakdown(None, steps=2, timer=None)
    assert r["top_kernels"] == [
        {"name": "conv_fprop", "ms_per_step": pytest.approx(0.3), "calls_per_step": 2.0, "category": "convolutions"},
        {"name": "_lrn_bwd_tile", "ms_per_step": pytest.approx(0.025), "calls_per_step": 1.0,
         "category": "response norm (Triton)"}]
    assert r["ms_per_step"] == {"convolutions": pytest.approx(0.3), "response norm (Triton)": pytest.approx(0.025)}


def _cfg(shapes, out, **kw):
    return TrainConfig(**(dict(data=str(shapes), out=str(out), arch="cifar-fig1", batch_size=16, epochs=1,
                               progress=False) | kw))


def test_a_window_of_a_real_run_is_measured_and_the_run_stops_after_it(shapes, tmp_path):
    r = P.profile_run(_cfg(shapes, tmp_path / "run", device="cpu"), at_step=3, steps=4, log=lambda *a: None)
    assert r["steps"] == 4 and r["batch"] == 16 and r["wall_ms"] > 0
    assert r["images_per_s"] == pytest.approx(16 * 1e3 / r["wall_ms"])
    metrics = tmp_path / "run" / "metrics.jsonl"   # stopped within epoch 1: no epoch ended
    assert not metrics.exists() or not metrics.read_text().strip()
    assert "busy_ms" not in r                        # on the CPU: the wall time only
    assert "ms a step" in P.table(r) and r["epochs"] == [1, 1] and "into" not in P.table(r)


def test_a_window_across_an_epochs_end_is_said_to_include_it(shapes, tmp_path):
    # a few hundred training images: at most 3 steps of 128 an epoch, so steps 1-3 reach a later epoch
    r = P.profile_run(_cfg(shapes, tmp_path / "run", device="cpu", epochs=3, batch_size=128), at_step=1, steps=3,
                      log=lambda *a: None)
    assert r["epochs"][0] == 1 and r["epochs"][1] > 1
    assert f"ran from epoch 1 into {r['epochs'][1]}" in P.table(r)


def test_a_run_shorter_than_the_window_says_so(shapes, tmp_path):
    with pytest.raises(AlexnetError, match="ended after 2 steps, before the window"):
        P.profile_run(_cfg(shapes, tmp_path / "run", device="cpu", max_steps=2), at_step=3, steps=4,
                      log=lambda *a: None)


def test_the_command_takes_train_options_and_writes_its_json(shapes, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["profile", "--at-step", "2", "--steps", "2", "--json-out", str(out), "--data", str(shapes),
                 "--arch", "cifar-fig1", "--batch-size", "16", "--epochs", "1", "--device", "cpu",
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert json.loads(out.read_text())["steps"] == 2
    assert "window: 2 steps of 16 images" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["batch_size"] == 16  # a train run's files


def test_the_command_says_when_the_run_is_too_short_for_its_window(shapes, tmp_path, capsys):
    assert main(["profile", "--at-step", "5", "--data", str(shapes), "--arch", "cifar-fig1", "--max-steps", "3",
                 "--device", "cpu", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "alexnet profile: error: the run ended after 3 steps, before the window (steps 5 to 204)" in err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_gpu_time_is_split_into_busy_idle_and_kernels(shapes, tmp_path):
    r = P.profile_run(_cfg(shapes, tmp_path / "run", device="cuda"), at_step=4, steps=6, log=lambda *a: None)
    assert 0 < r["busy_ms"] <= r["wall_ms"] * 1.01 and r["idle_ms"] >= 0
    assert 0 <= r["long_gap_ms"] <= r["idle_ms"] + 1e-6 and r["long_gaps"] >= 0
    in_gaps = sum(ms for _, ms in r["gaps"]["by_length"].values())
    assert in_gaps <= r["idle_ms"] + 1e-6 and sum(r["gaps"]["before"].values()) <= in_gaps + 1e-6
    assert sum(r["kernel_ms"].values()) >= r["busy_ms"] * 0.99   # the union never exceeds the sum
    assert any("conv" in c or "gemm" in c or "elementwise" in c for c in r["kernel_ms"]), r["kernel_ms"]
    top = [k["ms_per_step"] for k in r["top_kernels"]]
    assert top == sorted(top, reverse=True) and 0 < sum(top) <= sum(r["kernel_ms"].values()) + 1e-6
