"""The MPS daemon a run starts for itself (alexnet.data.mps): when it is wanted, that a CUDA client is
checked under it before the run relies on it, and that it is stopped when the run's process ends, however
that happens. On the CPU with a stand-in control program; on a GPU with NVIDIA's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from alexnet.config import TrainConfig
from alexnet.data import mps
from alexnet.data.gpu_decode import mps_running

# Stands in for nvidia-cuda-mps-control: "-d" makes the control pipe, "quit" on stdin removes it; both logged.
FAKE = """#!/bin/sh
if [ "$1" = "-d" ]; then
  echo "start $CUDA_MPS_PIPE_DIRECTORY" >> "$FAKE_MPS_LOG"
  [ -n "$FAKE_MPS_FAIL" ] && { echo "$FAKE_MPS_FAIL" >&2; exit 1; }
  touch "$CUDA_MPS_PIPE_DIRECTORY/control"; exit 0
fi
read cmd
echo "$cmd $CUDA_MPS_PIPE_DIRECTORY" >> "$FAKE_MPS_LOG"
[ "$cmd" = quit ] && rm -f "$CUDA_MPS_PIPE_DIRECTORY/control"
exit 0
"""


@pytest.fixture
def fake(tmp_path, monkeypatch) -> Path:
    """The stand-in control program in use, a probe that reports a Hopper GPU, and this process's MPS
    variables restored afterwards. Returns the stand-in's log."""
    program = tmp_path / "nvidia-cuda-mps-control"
    program.write_text(FAKE)
    program.chmod(0o755)
    log = tmp_path / "calls.log"
    monkeypatch.setattr(mps, "CONTROL", str(program))
    monkeypatch.setattr(mps, "PROBE", "print(9)")
    monkeypatch.setattr(mps, "GRACE_S", 0.0)
    monkeypatch.setenv("FAKE_MPS_LOG", str(log))
    monkeypatch.delenv("FAKE_MPS_FAIL", raising=False)
    for name in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    return log


def _wait_gone(path: str, seconds: float = 15.0) -> bool:
    end = time.monotonic() + seconds
    while os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.1)
    return not os.path.exists(path)


def _store(root: Path, encoding: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta.json").write_text(json.dumps({"splits": {"train": {"count": 1, "encoding": encoding}}}))
    return root


def test_daemon_is_checked_used_and_stopped_when_its_owner_ends(fake):
    owner = subprocess.Popen(["sleep", "60"])
    try:
        directory, why = mps.start_daemon(0, owner=owner.pid, hopper_only=True)
        assert why == "" and directory is not None
        assert os.environ["CUDA_MPS_PIPE_DIRECTORY"] == directory and mps_running()
        assert fake.read_text().splitlines() == [f"start {directory}"]
        time.sleep(1.0)
        assert os.path.exists(os.path.join(directory, "control")), "stopped while its owner still runs"
        owner.kill()                        # not reaped yet: a zombie counts as ended
        assert _wait_gone(directory), "the daemon's directory outlived its owner"
        assert fake.read_text().splitlines() == [f"start {directory}", f"quit {directory}"]
    finally:
        owner.kill()
        owner.wait()


@pytest.mark.parametrize("probe, expected", [
    ("import sys; sys.exit('cuInit returned CUresult 100')", "cuInit returned CUresult 100"),
    ("print(8)", "H100/H200 only"),
])
def test_a_daemon_without_a_working_client_is_stopped_at_once(fake, monkeypatch, probe, expected):
    monkeypatch.setattr(mps, "PROBE", probe)
    directory, why = mps.start_daemon(0, hopper_only=True)
    assert directory is None and expected in why
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ and not mps_running()
    started, stopped = fake.read_text().splitlines()
    assert started.startswith("start ") and stopped == "quit " + started.split(" ", 1)[1]
    assert not os.path.exists(started.split(" ", 1)[1])


def test_a_daemon_that_does_not_start_says_why(fake, monkeypatch):
    monkeypatch.setenv("FAKE_MPS_FAIL", "An instance of this daemon is already running")
    directory, why = mps.start_daemon(0)
    assert directory is None and "exited 1" in why and "already running" in why
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ


def test_wanted_only_where_gpu_workers_decode_a_jpeg_store_in_one_process(fake, tmp_path, monkeypatch):
    jpeg, raw = _store(tmp_path / "jpeg", "jpeg"), _store(tmp_path / "raw", "raw")

    def want(**kw):
        cfg = TrainConfig(**({"data": str(jpeg), "out": str(tmp_path / "run"), "device": "cuda", "decode": "mixed"} | kw))
        return mps.wanted(cfg)

    assert want() == (True, None)
    assert want(mps="off") == (False, None)
    assert want(device="cpu") == (False, None)
    assert want(decode="cpu") == (False, None)
    assert want(data=str(raw)) == (False, None)
    assert want(data=str(tmp_path / "photos")) == (False, None)   # an image folder not prepared yet
    assert want(data=str(tmp_path / "photos"), out=str(tmp_path / "r"))[0] is False
    _store(tmp_path / "r2" / "data", "jpeg")                        # ... prepared into the run by an earlier start
    assert want(data=str(tmp_path / "photos"), out=str(tmp_path / "r2")) == (True, None)
    from alexnet.data import procs                                  # --decode auto: where it picks GPU workers
    monkeypatch.setattr(procs, "usable_cores", lambda: 16)
    monkeypatch.setattr(mps, "installed", lambda module: False)
    assert want(decode="auto") == (False, None)                     # no nvImageCodec
    monkeypatch.setattr(mps, "installed", lambda module: True)
    assert want(decode="auto") == (True, None)
    assert want(decode="auto", gpu_decoder="torchvision") == (False, None)
    monkeypatch.setattr(procs, "usable_cores", lambda: 32)
    assert want(decode="auto") == (False, None)                     # enough cores to decode
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert want() == (False, None)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr(mps, "CONTROL", "no-such-mps-control")
    ok, why = want()
    assert not ok and "no-such-mps-control is not on PATH" in why
    assert want(device="auto") == (False, None)                     # perhaps no GPU at all: nothing to say


def test_start_for_run_logs_what_it_did(fake, tmp_path, monkeypatch):
    cfg = TrainConfig(data=str(_store(tmp_path / "jpeg", "jpeg")), out=str(tmp_path / "run"), device="cuda:0",
                      decode="mixed")
    lines = []
    monkeypatch.setattr(mps, "PROBE", "import sys; sys.exit('cuInit returned CUresult 100')")
    assert mps.start_for_run(cfg, lines.append) is None
    assert lines[-1].startswith("MPS: not started: a CUDA client did not start under it: cuInit returned CUresult 100")
    monkeypatch.setattr(mps, "PROBE", "print(9)")
    directory = mps.start_for_run(cfg, lines.append)
    try:
        assert directory is not None and lines[-1].startswith("MPS: started NVIDIA's MPS daemon for this run")
        assert mps.start_for_run(cfg, lines.append) is None and len(lines) == 2   # one runs already: nothing to do
    finally:
        mps.stop_daemon(directory)
    assert not os.path.exists(directory)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or shutil.which(mps.CONTROL) is None,
                    reason="needs CUDA and NVIDIA's MPS control program")
def test_a_real_daemon_serves_a_cuda_client_and_goes_with_its_owner(monkeypatch):
    for name in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    owner = subprocess.Popen(["sleep", "120"])
    try:
        directory, why = mps.start_daemon(0, owner=owner.pid, hopper_only=False)
        assert why == "" and directory is not None
        client = subprocess.run([sys.executable, "-c", textwrap.dedent("""
            import torch
            print(torch.ones(1 << 20, device="cuda").sum().item())
        """)], capture_output=True, text=True, timeout=120)
        servers = subprocess.run([mps.CONTROL], input="get_server_list\n", capture_output=True, text=True, timeout=30)
        logs = {p.name: p.read_text()[-2000:] for p in Path(directory, "log").glob("*.log")}
        seen = f"client: {client.returncode} {client.stdout!r} {client.stderr[-2000:]!r}; servers: {servers.stdout!r}; logs: {logs}"
        assert client.returncode == 0 and float(client.stdout.split()[-1]) == 1 << 20, seen
        assert servers.stdout.split() or "server" in logs.get("control.log", "").lower(), seen
    finally:
        owner.kill()
        owner.wait()
    assert _wait_gone(directory, 60), "the daemon's directory outlived its owner"
