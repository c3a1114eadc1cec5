"""nvImageCodec's import prints, from C, that its optional JPEG 2000 and TIFF libraries are missing (red
[ERROR] lines in every GPU worker's start); alexnet silences that import, and only that."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet.data.gpu_decode import nvimgcodec_available, quiet_stderr

SRC = Path(__file__).resolve().parents[1] / "src"


def test_what_c_code_prints_meanwhile_is_dropped_and_stderr_comes_back(capfd):
    with quiet_stderr():
        os.write(2, b"Failed to load nvjpeg2k library!\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not nvimgcodec_available(),
                    reason="needs CUDA and nvImageCodec")
def test_loading_nvimgcodec_prints_nothing():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", "from alexnet.data.gpu_decode import nvimgcodec_available as a; "
                           "assert a(); print('loaded')"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "loaded\n", done.stderr
    assert done.stderr == "", done.stderr
