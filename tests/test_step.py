"""The training step (alexnet.step): its compiled head computes what the eager step does, and CUDA
graphs reading each batch where it lies train exactly as one graph with the batch copied in."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from alexnet.data.augment import Augment
from alexnet.optim import PaperSGD, param_groups
from alexnet.parallel.distributed import DistributedContext
from alexnet.parallel.placement import Placement
from alexnet.step import GraphedStep, head, make_step
from alexnet.tools.bench_steps import random_u8, stats_for


def test_head_is_the_eager_loss_and_top1_error():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=g).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, 10, (64,), generator=g)
    loss, misses = head(logits, labels)
    want = F.cross_entropy(logits.float(), labels)
    assert torch.equal(loss, want)
    assert misses.item() == (logits.argmax(1) != labels).sum().item() / 64 and not misses.requires_grad
    got_grad, = torch.autograd.grad(loss, logits)
    want_grad, = torch.autograd.grad(want, logits)
    assert torch.equal(got_grad, want_grad)


def tiny_step(device, *, compile: bool = False, graphs: bool = False, max_graphs: int = 4, amp=None,
              dropout: float = 0.5):
    """A small network (with dropout, so that graphs must draw the same random numbers; compiled code
    draws other ones) stepped by the paper's recipe on 32x32 batches cropped to 24."""
    torch.manual_seed(0)                            # CUDA's generators too
    model = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.Dropout(dropout), nn.AdaptiveAvgPool2d(2),
                          nn.Flatten(), nn.Linear(64, 10)).to(device)
    placement = Placement("single", model, DistributedContext(), "paper")
    optimizer = PaperSGD(param_groups(model, "paper", 0.002), lr=0.002, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator(device=device).manual_seed(1)
    fmt = torch.channels_last if torch.device(device).type == "cuda" else torch.contiguous_format
    step = make_step(placement, optimizer, Augment(crop=24), stats_for(device, 32), gen, amp, fmt,
                     compile=compile, graphs=graphs, log=print, max_graphs=max_graphs)
    return model, optimizer, step


def batches(device, count: int = 5):
    g = torch.Generator(device=device).manual_seed(3)
    return [(random_u8(16, device, 32, seed=k), torch.randint(0, 10, (16,), device=device, generator=g))
            for k in range(count)]


@pytest.mark.slow
def test_the_compiled_step_sums_what_the_eager_one_does_on_cpu():
    """With compile on, the loss and the error are computed by the compiled head and summed in one
    kernel; their sums agree with the eager step's (inductor's CPU code: close, not bitwise; no
    dropout, whose compiled form draws other random numbers)."""
    data = batches("cpu", 3)
    sums = []
    for compile in (False, True):
        model, _, step = tiny_step("cpu", compile=compile, dropout=0.0)
        assert (step.head is not None) == compile
        losses = [step(*data[i % 3]).item() for i in range(4)]
        sums.append((losses, step.loss_sum.item(), step.miss_sum.item()))
    (l0, s0, m0), (l1, s1, m1) = sums
    assert l0 == pytest.approx(l1, rel=1e-4) and s0 == pytest.approx(s1, rel=1e-4) and m0 == m1
    assert s0 == pytest.approx(sum(l0), rel=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphs_reading_batches_in_place_train_as_one_copying_graph(plain_fp32_cuda):
    """Five input buffers in turn: with max_graphs=4, four graphs read theirs in place and the fifth
    buffer is copied into a fifth graph's input; with max_graphs=0 every batch is copied into one
    graph's. A learning-rate drop at step 9 captures them all again. Same kernels, same random
    numbers: the losses, the sums and the weights are bitwise the same."""
    data = batches("cuda")
    runs = []
    for max_graphs in (0, 4):
        model, optimizer, step = tiny_step("cuda", graphs=True, max_graphs=max_graphs)
        assert isinstance(step, GraphedStep)
        losses, keys = [], []
        for i in range(20):
            if i == 9:
                for group in optimizer.param_groups:
                    group["lr"] /= 10
            losses.append(step(*data[i % 5]).clone())
            keys.append(sorted(map(str, step.graphs)))
        assert step.failed is None
        in_place = [k for k in step.graphs if k is not None]
        assert len(in_place) == min(max_graphs, 5) and (None in step.graphs)
        runs.append((torch.stack(losses), step.loss_sum.clone(), step.miss_sum.clone(),
                     [p.detach().clone() for p in model.parameters()]))
        step.release()
        assert not step.graphs
    (l0, s0, m0, p0), (l1, s1, m1, p1) = runs
    assert torch.equal(l0, l1) and torch.equal(s0, s1) and torch.equal(m0, m1)
    assert all(torch.equal(a, b) for a, b in zip(p0, p1))
    assert not torch.equal(p0[0], tiny_step("cuda")[0][0].weight)  # it trained


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_compiled_graphed_step_sums_what_the_eager_one_does_on_cuda(plain_fp32_cuda):
    data = batches("cuda", 3)
    sums = []
    for compile, graphs in ((False, False), (True, True)):
        _, _, step = tiny_step("cuda", compile=compile, graphs=graphs, dropout=0.0)
        assert (step.head is not None) == compile
        losses = [step(*data[i % 3]).item() for i in range(8)]
        sums.append((losses, step.loss_sum.item(), step.miss_sum.item()))
    (l0, s0, m0), (l1, s1, m1) = sums
    assert l0 == pytest.approx(l1, rel=1e-3) and s0 == pytest.approx(s1, rel=1e-3) and m0 == m1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_graphed_run_on_one_gpu_reads_each_batch_where_the_feeder_put_it(shapes, tmp_path):
    """`alexnet train` on CUDA with loader processes: the Feeder copies batches into MAX_GRAPHS device
    buffers, and the step has one graph for each, none with its input copied in."""
    from conftest import tiny

    from alexnet.step import MAX_GRAPHS
    from alexnet.train import fit, setup

    cfg = tiny(shapes, tmp_path / "run", device="cuda", compile=False, loader_workers=2, epochs=1,
               deterministic=False)
    said = []
    run = setup(cfg, log=said.append, stop=SimpleNamespace(signal=None))
    try:
        assert run.train_feeder.device_buffers == MAX_GRAPHS
        assert f"loader: batches copied into {MAX_GRAPHS} GPU buffers in turn" in "\n".join(said)
        fit(run)
        assert run.step.failed is None and len(run.step.graphs) == MAX_GRAPHS and None not in run.step.graphs
    finally:
        run.close()
