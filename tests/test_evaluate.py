"""Evaluation, ensembles, ten crops, prediction and export, through the CLI as a user runs them."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet.cli import main
from alexnet.data.augment import views
from alexnet.data.prepared import PreparedData
from alexnet.evaluate import crop_probabilities


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_json_reports_errors_on_the_test_split(trained_run, shapes_prepared, capsys):
    code, out, _ = run_cli(capsys, "eval", "--checkpoint", str(trained_run / "last.pt"), "--data",
                           str(shapes_prepared), "--split", "test", "--crops", "10", "--json", "--device", "cpu")
    assert code == 0
    r = json.loads(out)
    assert set(r) >= {"top1_error", "top5_error", "images", "crops", "checkpoints"}
    assert r["images"] == 80 and r["crops"] == 10 and r["checkpoints"] == [str(trained_run / "last.pt")]
    assert 0.0 <= r["top5_error"] <= r["top1_error"] <= 1.0


def test_ten_crops_average_the_softmax_of_the_ten_views(trained_run, shapes_prepared):
    ckpt = load_checkpoint(trained_run / "last.pt")
    model = model_from_checkpoint(ckpt).eval()
    images = PreparedData.open(shapes_prepared).split("test").read(torch.arange(3))
    got = crop_probabilities([model], images, ckpt["mean"], ckpt["crop"], 10, None, False, [1.0])
    with torch.no_grad():
        each = model(views(images, ckpt["mean"], ckpt["crop"], 10)).softmax(1).view(3, 10, -1)
    torch.testing.assert_close(got, each.mean(1))


def test_an_ensemble_averages_the_softmax_of_its_members(trained_run, shapes_prepared, tmp_path, capsys):
    # A second, different member: the same checkpoint with perturbed weights.
    ckpt = load_checkpoint(trained_run / "last.pt")
    torch.manual_seed(0)
    ckpt["model"] = {k: v + 0.05 * torch.randn_like(v) for k, v in ckpt["model"].items()}
    torch.save(ckpt, tmp_path / "other.pt")
    first, second = str(trained_run / "last.pt"), str(tmp_path / "other.pt")
    a, b = (model_from_checkpoint(load_checkpoint(p)).eval() for p in (first, second))
    split = PreparedData.open(shapes_prepared).split("test")
    images, labels = split.read(torch.arange(len(split))), split.labels
    probs = crop_probabilities([a, b], images, ckpt["mean"], ckpt["crop"], 1, None, False, [1.0, 1.0])
    expected_top1 = (probs.argmax(1) != labels).float().mean().item()

    code, out, _ = run_cli(capsys, "eval", "--checkpoint", first, second, "--data", str(shapes_prepared),
                           "--split", "test", "--crops", "1", "--json", "--device", "cpu")
    r = json.loads(out)
    assert code == 0 and r["checkpoints"] == [first, second]
    assert r["top1_error"] == pytest.approx(expected_top1)


def test_eval_maps_an_image_folder_holding_a_subset_of_the_classes(trained_run, tmp_path, capsys):
    src = tmp_path / "shapes-src"
    from alexnet.data.synthetic import make_shapes

    make_shapes(src, n_train_per_class=2, n_test_per_class=4)
    for cls in list((src / "test").iterdir())[3:]:
        shutil.rmtree(cls)                           # keep 3 of the 10 classes
    code, out, _ = run_cli(capsys, "eval", "--checkpoint", str(trained_run / "last.pt"), "--data", str(src),
                           "--split", "test", "--crops", "1", "--json", "--device", "cpu")
    assert code == 0, out
    assert json.loads(out)["images"] == 12


def test_eval_of_an_image_folder_prepares_only_the_split_it_evaluates(trained_run, tmp_path, capsys):
    # A tree whose train split holds an unreadable image: evaluating its test split must not read train
    # (for ImageNet: not prepare 1.28 M training images to evaluate 50,000).
    from alexnet.data.synthetic import make_shapes

    src = make_shapes(tmp_path / "src", n_train_per_class=2, n_test_per_class=3)
    (next((src / "train").iterdir()) / "broken.png").write_bytes(b"not an image")
    cache = tmp_path / "cache"
    code, out, err = run_cli(capsys, "eval", "--checkpoint", str(trained_run / "last.pt"), "--data", str(src),
                             "--crops", "1", "--json", "--device", "cpu", "--cache", str(cache))
    assert code == 0, err
    r = json.loads(out)
    assert r["split"] == "test" and r["images"] == 30 and "prepare:" in err
    assert [p.name for p in cache.iterdir()] == ["test"] and list(PreparedData.open(cache / "test").splits) == ["test"]
    code, out, err = run_cli(capsys, "eval", "--checkpoint", str(trained_run / "last.pt"), "--data", str(src),
                             "--split", "test", "--crops", "1", "--json", "--device", "cpu", "--cache", str(cache))
    assert code == 0 and json.loads(out)["images"] == 30 and "prepare:" not in err        # the cached copy


def test_eval_names_an_unreadable_image_without_pointing_at_a_removed_list(trained_run, tmp_path, capsys):
    from alexnet.data.synthetic import make_shapes

    src = make_shapes(tmp_path / "src", n_train_per_class=1, n_test_per_class=2)
    bad = next((src / "test").iterdir()) / "broken.png"
    bad.write_bytes(b"not an image")
    argv = ["eval", "--checkpoint", str(trained_run / "last.pt"), "--data", str(src), "--crops", "1", "--json",
            "--device", "cpu"]
    code, _, err = run_cli(capsys, *argv)
    assert code != 0 and str(bad) in err and "--skip-bad" in err and "bad-images.txt" not in err
    code, out, _ = run_cli(capsys, *argv, "--skip-bad")
    assert code == 0 and json.loads(out)["images"] == 20


def test_predict_gives_named_top5_classes(trained_run, tmp_path, capsys):
    from alexnet.data.synthetic import make_shapes

    src = make_shapes(tmp_path / "p", n_train_per_class=1, n_test_per_class=1)
    images = sorted(str(p) for p in (src / "test").rglob("*.png"))[:2]
    code, out, _ = run_cli(capsys, "predict", "--checkpoint", str(trained_run / "last.pt"), *images, "--json",
                           "--device", "cpu")
    assert code == 0
    results = json.loads(out)
    assert [r["image"] for r in results] == images
    classes = load_checkpoint(trained_run / "last.pt")["classes"]
    for r in results:
        probs = [t["probability"] for t in r["top"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
        assert all(t["class"] in classes and t["name"] for t in r["top"])


def test_export_safetensors_and_onnx_match_the_model(trained_run, tmp_path, capsys):
    from safetensors.torch import load_file

    ckpt = load_checkpoint(trained_run / "last.pt")
    code, out, _ = run_cli(capsys, "export", "--checkpoint", str(trained_run / "last.pt"), "--format",
                           "safetensors", "--out", str(tmp_path / "w.safetensors"))
    assert code == 0
    weights = load_file(str(tmp_path / "w.safetensors"))
    for k, v in ckpt["model"].items():
        assert torch.equal(weights[k], v)
    pytest.importorskip("onnx")
    code, out, _ = run_cli(capsys, "export", "--checkpoint", str(trained_run / "last.pt"), "--format", "onnx",
                           "--out", str(tmp_path / "m.onnx"))
    assert code == 0 and (tmp_path / "m.onnx").is_file()
    if "onnxruntime vs torch" in out:
        assert float(out.rsplit(" ", 1)[1]) < 1e-3


def test_export_onnx_of_alexnet2012_matches(tmp_path):
    pytest.importorskip("onnxruntime")
    from alexnet.export import check_onnx, export_onnx
    from alexnet.models import build_model, model_options

    model = build_model("alexnet2012", num_classes=10)
    ckpt = {"arch": "alexnet2012", "model_options": model_options(model), "model": model.state_dict(), "crop": 224}
    export_onnx(ckpt, tmp_path / "a.onnx")
    assert check_onnx(ckpt, tmp_path / "a.onnx", batch=1) < 1e-3


@pytest.mark.parametrize("argv,needle", [
    (["eval", "--checkpoint", "/nonexistent.pt", "--data", "/tmp"], "no such checkpoint"),
    (["info", "--arch", "resnet"], "valid: alexnet2012"),
    (["train", "--data", "/nonexistent/dir", "--out", "/tmp/x"], "/nonexistent/dir"),
])
def test_user_errors_are_one_line_without_a_traceback(argv, needle, capsys):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys, shapes_prepared):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(bad), "--data", str(shapes_prepared))
    assert code == 2 and str(bad) in err and "not a readable checkpoint" in err
