"""The Triton kernels on the CPU through Triton's interpreter, in a child process.

TRITON_INTERPRET is read when a kernel is decorated, so it must be set before the kernels are
imported; setting it here for one child process keeps it out of every other test. The child runs
test_kernels.py (every kernel and operator test at tiny sizes). On CUDA those tests run compiled in
the main process instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA test_kernels.py runs the compiled kernels")
def test_kernels_and_operators_under_the_triton_interpreter():
    env = os.environ | {"TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu",
                        "tests/test_kernels.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = r.stdout[-4000:] + r.stderr[-2000:]
    assert r.returncode == 0, tail
    assert " passed" in r.stdout and " failed" not in r.stdout and " skipped" not in r.stdout.split("\n")[-2], tail
