"""The ablations' training error measured without dropout or augmentation (eval mode, centre crop of
training images): the number to argue about overfitting with."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_held_in_error_is_the_eval_mode_centre_crop_error_on_training_images(shapes, tmp_path):
    from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
    from alexnet.data.prepared import PreparedData
    from alexnet.experiments import run_or_reuse
    from alexnet.experiments.ablations import VARIANTS, AblationConfig, _train_config, held_in_error

    cfg = AblationConfig(data=str(shapes), out=str(tmp_path), epochs=1, batch_size=32, device="cpu")
    rec = run_or_reuse(_train_config(cfg, shapes, VARIANTS["baseline"], 0, 32), log=lambda m: None)
    err = held_in_error(rec, shapes, "cpu", images=60)

    ckpt = load_checkpoint(f"{rec['run']}/last.pt")
    model = model_from_checkpoint(ckpt)
    train = PreparedData.open(shapes).split("train")
    pick = np.sort(np.random.default_rng(0).permutation(len(train))[:60])
    images, labels = train.read(pick).float(), train.labels[pick]
    o = (32 - ckpt["crop"]) // 2
    x = ((images - ckpt["mean"]) * ckpt["input_scale"])[:, :, o:o + ckpt["crop"], o:o + ckpt["crop"]]
    with torch.no_grad():
        want = (model.eval()(x).argmax(1) != labels).float().mean().item()
        torch.manual_seed(0)
        with_dropout = [(model.train()(x).argmax(1) != labels).float().mean().item() for _ in range(3)]
    assert err == pytest.approx(want)
    assert any(e != want for e in with_dropout)          # eval mode matters: dropout changes the answer
    assert held_in_error({**rec, "error": "diverged"}, shapes, "cpu") is None


def test_ablation_table_shows_both_training_errors():
    from alexnet.experiments.ablations import format_result

    def summary(x):
        return {"mean": x, "std": 0.0, "n": 1, "values": [x]}

    variants = {"baseline": {"test_top1_error": summary(0.3), "final_train_error": summary(0.31),
                             "train_error_eval": summary(0.12), "paper": "-"}}
    text = format_result({"arch": "cifar-alexnet", "epochs": 8, "seeds": [0], "variants": variants})
    assert "train % (eval)" in text and "12.00" in text and "31.00" in text
