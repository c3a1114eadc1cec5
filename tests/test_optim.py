"""The paper's exact update, by hand, across a learning-rate drop; and where torch's SGD differs."""

import pytest
import torch

from alexnet.models import build_model
from alexnet.optim import PaperSGD, PlateauDrops, StepDrops, drop_learning_rate, param_groups


def hand_update(w, grads, lrs, momentum=0.9, wd=5e-4):
    v = 0.0
    for g, eps in zip(grads, lrs):
        v = momentum * v - wd * eps * w - eps * g
        w = w + v
    return w


def run(opt_cls, grads, lrs, **kw):
    w = torch.nn.Parameter(torch.tensor([1.5, -2.0], dtype=torch.float64))
    opt = opt_cls([w], lr=lrs[0], **kw)
    for g, eps in zip(grads, lrs):
        for group in opt.param_groups:
            group["lr"] = eps
        w.grad = g.clone()
        opt.step()
    return w.detach()


GRADS = [torch.tensor([0.3, -0.1], dtype=torch.float64) * (i + 1) for i in range(6)]
LRS = [0.01, 0.01, 0.01, 0.001, 0.001, 0.001]  # a drop after three steps


def test_paper_rule_equals_the_hand_computation_across_a_drop():
    w0 = torch.tensor([1.5, -2.0], dtype=torch.float64)
    expected = hand_update(w0, GRADS, LRS)
    got = run(PaperSGD, GRADS, LRS, momentum=0.9, weight_decay=5e-4)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)


def test_torch_sgd_agrees_at_constant_rate_and_differs_after_a_drop():
    kw = dict(momentum=0.9, weight_decay=5e-4)
    const = [0.01] * 6
    torch.testing.assert_close(run(PaperSGD, GRADS, const, **kw), run(torch.optim.SGD, GRADS, const, **kw))
    paper, sgd = run(PaperSGD, GRADS, LRS, **kw), run(torch.optim.SGD, GRADS, LRS, **kw)
    # torch's SGD rescales the old momentum by the new rate at once; the paper's velocity does not.
    assert (paper - sgd).abs().max() > 1e-4


def test_cuda_convnet_groups_give_biases_twice_the_rate_and_no_decay():
    model = build_model("cifar-fig1")
    groups = param_groups(model, "cuda-convnet", lr=0.01)
    weights, biases = groups
    assert all(p.ndim > 1 for p in weights["params"]) and all(p.ndim == 1 for p in biases["params"])
    assert biases["lr"] == pytest.approx(0.02) and biases["weight_decay"] == 0.0
    assert weights["lr"] == pytest.approx(0.01) and weights["weight_decay"] == 5e-4
    assert len(param_groups(model, "paper", lr=0.01)) == 1

    b = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = PaperSGD([dict(params=[b], lr=0.02, weight_decay=0.0)], lr=0.01)
    b.grad = torch.tensor([0.5], dtype=torch.float64)
    opt.step()
    assert b.item() == pytest.approx(1.0 - 0.02 * 0.5)   # no decay term
    drop_learning_rate(opt, 10)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.002)


def test_optimizer_state_round_trips():
    w = torch.nn.Parameter(torch.ones(3))
    opt = PaperSGD([w], lr=0.1)
    w.grad = torch.ones(3)
    opt.step()
    other = PaperSGD([w], lr=0.1)
    other.load_state_dict(opt.state_dict())
    torch.testing.assert_close(other.state[w]["velocity"], opt.state[w]["velocity"])


def test_schedules():
    step = StepDrops([25, 51, 79])
    assert [e for e in range(1, 91) if step.should_drop(e, None)] == [25, 51, 79]
    plateau = PlateauDrops(patience=2, max_drops=3)
    errors = [0.9, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
    drops = []
    for epoch, err in enumerate(errors, 1):
        if plateau.should_drop(epoch, err):
            plateau.drops += 1
            drops.append(epoch)
    assert drops == [4, 7, 9]  # never more than three
