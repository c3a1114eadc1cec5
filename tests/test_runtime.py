"""The host's waits for the GPU (alexnet.runtime.wait_for_gpu): done when it returns, and asleep meanwhile."""

from __future__ import annotations

import time

import pytest
import torch

from alexnet import runtime


def test_waiting_for_a_cpu_device_is_nothing():
    t = time.perf_counter()
    runtime.wait_for_gpu("cpu")
    runtime.wait_for_gpu(torch.device("cpu"))
    assert time.perf_counter() - t < 0.1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_host_sleeps_while_it_waits_for_the_gpu(monkeypatch):
    """The work queued before the wait is done once it returns, and the waiting thread spends far less
    CPU time than the wait lasts (CUDA's default, spinning, spends all of it: checked as the control)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    (a @ a).sum().item()  # warm up

    def wait(blocking: bool) -> tuple[float, float]:
        monkeypatch.setattr(runtime, "BLOCKING_WAITS", blocking)
        for _ in range(60):  # about half a second of work on an H200
            a @ a
        wall, cpu = time.perf_counter(), time.thread_time()
        if blocking:
            runtime.wait_for_gpu("cuda")
            assert torch.cuda.current_stream().query()
        else:
            torch.cuda.current_stream().synchronize()
        return time.perf_counter() - wall, time.thread_time() - cpu

    (slept_wall, slept_cpu), (spun_wall, spun_cpu) = wait(True), wait(False)
    assert slept_wall > 0.05 and spun_wall > 0.05
    assert slept_cpu < 0.3 * slept_wall and spun_cpu > 0.7 * spun_wall, (slept_wall, slept_cpu, spun_wall, spun_cpu)
