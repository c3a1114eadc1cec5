"""Figures 3 and 4 and the run report: the colour-specificity measure separates grey kernels from
colourful ones, the commands run end to end on a tiny trained run, the report is one HTML file."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")

from alexnet.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from alexnet.cli import main  # noqa: E402
from alexnet.experiments.figures import (RANDOM_SHARE, colour_specificity, conv1_columns, kernel_report,  # noqa: E402
                             nearest_neighbours, open_data)
from alexnet.models import build_model  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run dir, prepared data): cifar-alexnet trained for a few steps on the synthetic shapes."""
    from alexnet.data.prepare import prepare
    from alexnet.data.synthetic import make_shapes
    from alexnet.train import TrainConfig, train

    root = tmp_path_factory.mktemp("figs")
    src = make_shapes(root / "src", n_train_per_class=12, n_test_per_class=4)
    data = prepare(src, root / "prepared", size=32, workers=1, progress=False)
    run = root / "run"
    train(TrainConfig(data=str(data), out=str(run), arch="cifar-alexnet", epochs=2, batch_size=24, lr=0.01,
                      schedule="step", milestones=[1], progress=False, test_crops=(1,), eval_batch_size=64,
                      device="cpu"), log=lambda *a: None)
    return run, data


def grey_kernels(k: int, size: int = 5) -> torch.Tensor:
    w = torch.randn(k, 1, size, size)
    return w.expand(k, 3, size, size).clone()              # r = g = b at every pixel


def colourful_kernels(k: int, size: int = 5) -> torch.Tensor:
    w = torch.randn(k, 1, size, size)
    return torch.cat([w, -w, torch.zeros_like(w)], 1)       # red-green opponent: no grey component


def test_colour_specificity_is_zero_for_grey_one_for_opponent_and_two_thirds_for_random():
    torch.manual_seed(0)
    assert colour_specificity(grey_kernels(8)).max() < 1e-6
    assert colour_specificity(colourful_kernels(8)).min() > 1 - 1e-6
    random_share = colour_specificity(torch.randn(2000, 3, 5, 5)).mean()
    assert abs(random_share - RANDOM_SHARE) < 0.01
    # a grey kernel tinted a little is a little colourful; more tint, more colour
    g = grey_kernels(4)
    tint = torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1) * g.abs().mean()
    assert (colour_specificity(g) < colour_specificity(g + 0.2 * tint)).all()
    assert (colour_specificity(g + 0.2 * tint) < colour_specificity(g + tint)).all()


def test_the_column_with_colourful_kernels_scores_higher():
    torch.manual_seed(0)
    model = build_model("cifar-alexnet", columns=2)
    with torch.no_grad():
        k = model.conv1.weight.shape[0] // 2
        model.conv1.weight[:k] = grey_kernels(k)
        model.conv1.weight[k:] = colourful_kernels(k)
    report = kernel_report(model)
    (c1, c2) = report["columns"]
    assert c1["kernels"] == c2["kernels"] == 32
    assert c1["colour_specificity"] < 0.01 and c2["colour_specificity"] > 0.99
    assert c1["colour_specific_kernels"] == 0 and c2["colour_specific_kernels"] == 32


def test_alexnet2012_conv1_splits_into_two_columns_of_48():
    torch.manual_seed(0)
    model = build_model("alexnet2012")
    cols = conv1_columns(model)
    assert [tuple(c.shape) for c in cols] == [(48, 3, 11, 11), (48, 3, 11, 11)]
    assert torch.equal(torch.cat(cols), model.conv1.weight.detach())
    one = conv1_columns(build_model("cifar-fig1"))
    assert len(one) == 1 and one[0].shape[0] == 32


def test_figures_kernels_command(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    out = tmp_path / "k.png"
    assert main(["figures", "kernels", "--checkpoint", str(run / "last.pt"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.read_bytes().startswith(PNG) and out.stat().st_size < 200_000
    shares = [float(x) for x in re.findall(r"colour specificity ([0-9.]+)", text)]
    assert len(shares) == 2 and all(0.0 <= s <= 1.0 for s in shares)


def test_figures_predictions_command(tiny_run, tmp_path, capsys):
    run, data = tiny_run
    out = tmp_path / "p.png"
    assert main(["figures", "predictions", "--checkpoint", str(run / "last.pt"), "--data", str(data),
                 "--images", "6", "--out", str(out), "--device", "cpu"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("test[")]
    assert out.read_bytes().startswith(PNG) and len(lines) == 6
    for line in lines:
        probs = [float(p) for p in re.findall(r" ([0-9.]+)%", line)]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 100.01


def test_figures_predictions_on_image_folders_prepare_only_the_split_shown(tiny_run, tmp_path, capsys):
    # The training images are not read: an unreadable one there does not stop Figure 4's predictions.
    from alexnet.data.synthetic import make_shapes

    run, _ = tiny_run
    src = make_shapes(tmp_path / "src", n_train_per_class=2, n_test_per_class=1)
    (next((src / "train").iterdir()) / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "p.png"
    assert main(["figures", "predictions", "--checkpoint", str(run / "last.pt"), "--data", str(src),
                 "--images", "4", "--out", str(out), "--device", "cpu"]) == 0
    assert len([x for x in capsys.readouterr().out.splitlines() if x.startswith("test[")]) == 4
    with open_data(src, 32, query_only=True) as prepared:
        assert list(prepared.splits) == ["test"]


def test_figures_neighbours_command(tiny_run, tmp_path, capsys):
    run, data = tiny_run
    out = tmp_path / "n.png"
    assert main(["figures", "neighbours", "--checkpoint", str(run / "last.pt"), "--data", str(data),
                 "--queries", "3", "--out", str(out), "--device", "cpu"]) == 0
    assert out.read_bytes().startswith(PNG)
    assert "searched 120 of 120 training images" in capsys.readouterr().out


def test_a_training_image_is_its_own_nearest_neighbour(tiny_run):
    run, data = tiny_run
    ckpt = load_checkpoint(run / "last.pt")
    model = model_from_checkpoint(ckpt)
    with open_data(data, ckpt["image_size"]) as prepared:
        result = nearest_neighbours(model, ckpt, prepared, split="train", queries=4, k=6, max_train=None, batch=50)
    assert result["searched"] == 120 and result["dimensions"] == 512      # cifar-alexnet's fc7
    for row in result["rows"]:
        d = [n["distance"] for n in row["neighbours"]]
        assert len(d) == 6 and d == sorted(d)
        assert row["neighbours"][0]["index"] == row["index"] and d[0] < 1e-3


def test_report_is_one_self_contained_html_page(tiny_run, tmp_path):
    run, _ = tiny_run
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out), "--max-train", "50"]) == 0
    page = out.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4                    # curves, kernels, predictions, neighbours
    assert all(base64.b64decode(i).startswith(PNG) for i in images)
    assert not re.search(r'(src|href)="(https?:|file:|/)', page)     # nothing outside the file
    config = json.loads((run / "config.json").read_text())
    assert "cifar-alexnet" in page and config["hardware"]["torch"] in page
    assert "colour specificity" in page and "Figure 4" in page


def test_report_without_reachable_data_says_so(tiny_run, tmp_path):
    run, _ = tiny_run
    moved = tmp_path / "run"
    moved.mkdir()
    for name in ("config.json", "metrics.jsonl", "last.pt"):
        (moved / name).write_bytes((run / name).read_bytes())
    config = json.loads((moved / "config.json").read_text())
    config["data"]["source"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(config))
    page = Path(main(["report", str(moved)]) == 0 and moved / "report.html").read_text()
    assert "not reachable" in page and len(re.findall(r"data:image/png;base64", page)) == 2
