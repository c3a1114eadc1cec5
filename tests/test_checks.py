"""The training loop's checks (alexnet.checks): read a step late, so the host never drains the GPU's
queue, and still the values of the step that asked; and a run stopped between checks resumes exactly."""

from __future__ import annotations

import dataclasses
import time
from types import SimpleNamespace

import pytest
import torch

from conftest import StopAfter, tiny

from alexnet.checkpoint import load_checkpoint
from alexnet.checks import ask
from alexnet.train import fit, setup, train

QUIET = lambda *a, **k: None  # noqa: E731

# "cuda" as a parameter of its own, with the gpu marker (`pytest -m gpu` selects it) and skipped without CUDA
CUDA_MARKED = pytest.param("cuda", marks=[pytest.mark.gpu,
                                          pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])


def _run(step=7, signal=None, saved_ago=0.0, minutes=30.0, dist=None):
    return SimpleNamespace(global_step=step, stop=SimpleNamespace(signal=signal),
                           last_save=time.monotonic() - saved_ago, cfg=SimpleNamespace(checkpoint_minutes=minutes),
                           dist=dist or SimpleNamespace(enabled=False), placement=SimpleNamespace(weight=1.0))


class _TwoProcesses:
    """A stand-in for torchrun's all-reduce: the other process asked with `other`."""

    enabled = True

    def __init__(self, other):
        self.other = other

    def sum_(self, t):
        t += torch.as_tensor(self.other, dtype=t.dtype, device=t.device)
        return t


@pytest.mark.parametrize("device", ["cpu", CUDA_MARKED])
def test_a_check_answers_with_the_asking_steps_values(device):
    loss = torch.tensor(2.5, device=device)
    check = ask(_run(step=7), loss)
    loss.fill_(9.0)                                 # the next step overwrites it (a graph's static loss)
    assert check.answer() == (2.5, False, False)
    assert check.step == 7
    assert check.answer() == (2.5, False, False)    # answered once, kept

    assert ask(_run(signal="SIGTERM"), loss).answer() == (9.0, True, False)
    assert ask(_run(saved_ago=120, minutes=1), loss).answer() == (9.0, False, True)


@pytest.mark.parametrize("device", ["cpu", CUDA_MARKED])
def test_under_torchrun_every_process_gets_the_same_answer(device):
    """Loss weighted and summed; a stop or a due checkpoint on any process counts for all."""
    loss = torch.tensor(1.0, device=device, dtype=torch.bfloat16)
    other = [0.5, 1.0, 0.0]                          # the other process: loss 0.5, stopping
    run = _run(dist=_TwoProcesses(other))
    run.placement.weight = 0.5
    assert ask(run, loss).answer() == (1.0, True, False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_asking_does_not_wait_for_the_gpu():
    """Asked behind a long kernel, the check is still in flight when ask returns (it did not wait, so
    the GPU keeps the work queued after it); answering waits for it."""
    loss = torch.tensor(3.0, device="cuda")
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)                 # about a second of GPU time
    loss.add_(1.0)
    check = ask(_run(), loss)
    assert not check._event.query()
    loss.fill_(0.0)                                  # queued after the check's copy
    assert check.answer() == (4.0, False, False)
    assert check._event is None


@pytest.mark.parametrize("device", ["cpu", CUDA_MARKED])
def test_a_stop_between_checks_saves_a_step_after_the_next_check_and_resumes_exactly(shapes, tmp_path, device):
    """8 steps an epoch, a check every 10: a stop during step 9 is read by the check of step 10 and
    acted on after step 11 (epoch 2, batch 3). Resuming from there ends as an uninterrupted run (on
    CUDA, with CUDA graphs: at the same place, the weights close, as its kernels are not bitwise
    deterministic)."""
    cfg = dict(device=device, compile=False) if device == "cuda" else {}
    whole = tmp_path / "whole"
    train(tiny(shapes, whole, **cfg), log=QUIET)
    cut = tmp_path / "cut"
    run = setup(tiny(shapes, cut, **cfg), log=QUIET, stop=SimpleNamespace(signal=None))
    run.step = StopAfter(run, 9)
    assert fit(run)["stopped_by"] == "SIGTERM"
    run.close()
    saved = load_checkpoint(cut / "last.pt")
    assert (saved["global_step"], saved["epoch"], saved["batch_in_epoch"]) == (11, 1, 3)
    train(dataclasses.replace(tiny(shapes, cut, **cfg), resume=True), log=QUIET)
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(cut / "last.pt")
    assert a["global_step"] == b["global_step"] == 16
    for k in a["model"]:
        if device == "cpu":
            assert torch.equal(a["model"][k], b["model"][k]), k
        else:
            torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-3, rtol=1e-2)
