"""NVIDIA's Multi-Process Service (MPS) daemon, started by a run for itself (``--mps auto``).

The loader's GPU workers (:mod:`alexnet.data.gpu_decode`) are processes of their own, each with its own
CUDA context; without MPS the GPU time-slices their decoding kernels with the training step's, so the two
take turns. Under MPS they run side by side, and ``--decode auto`` then uses 3 GPU workers at any batch (4
for one process at 256 images or more).
On one 16-core H200 at ImageNet size (docs/RESULTS.md, eleventh session), batch 128: 94.5-96.2% of the
GPU-resident step with MPS, 79-88% without it.

The CUDA driver connects to an MPS daemon when CUDA is first initialised in a process, so
:func:`start_for_run` runs before the training process touches CUDA. It starts a daemon with a pipe
directory of its own (``$TMPDIR/alexnet-mps-*``, nothing shared with other users' or runs' daemons)
where GPU workers would decode: one training process, a JPEG store, CUDA, and for ``--decode auto``
nvImageCodec installed, fewer than AUTO_MIXED_BELOW_CORES cores and a Hopper GPU (where it was measured).
A probe process then checks that a CUDA client starts under it (it can fail where another MPS server
holds the GPU, or the GPU is in an exclusive compute mode); if not, the daemon is stopped and the run goes
on without it, saying why. A watcher process, in a session of its own, stops the daemon and removes its
directory when the training process has ended, however it ended (a daemon must outlive its clients).
Under torchrun every process would need the same daemon before any of them starts: start it yourself
there (``nvidia-cuda-mps-control -d``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from alexnet.data import format as F
from alexnet.data.gpu_decode import AUTO_MIXED_BELOW_CORES, MEASURED_CAPABILITY_MAJOR, mps_running
from alexnet.runtime import installed

__all__ = ["CONTROL", "start_daemon", "start_for_run", "wanted"]

CONTROL = "nvidia-cuda-mps-control"
PROBE_TIMEOUT_S = 60
GRACE_S = 2.0  # after the training process ends, for its worker processes to end too
# A CUDA client in a process of its own: context on device argv[1], 1 MiB allocated; prints the device's
# compute capability major, or the failing call and its CUresult.
PROBE = r"""
import ctypes, sys
cuda = ctypes.CDLL("libcuda.so.1")
dev, ctx, ptr, major = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64(), ctypes.c_int()
for name, call in (("cuInit", lambda: cuda.cuInit(0)),
                   ("cuDeviceGet", lambda: cuda.cuDeviceGet(ctypes.byref(dev), int(sys.argv[1]))),
                   ("cuDevicePrimaryCtxRetain", lambda: cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev)),
                   ("cuCtxSetCurrent", lambda: cuda.cuCtxSetCurrent(ctx)),
                   ("cuMemAlloc", lambda: cuda.cuMemAlloc_v2(ctypes.byref(ptr), 1 << 20)),
                   ("cuDeviceGetAttribute", lambda: cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev))):
    status = call()
    if status != 0:
        sys.exit(f"{name} returned CUresult {status}")
print(major.value)
"""
# Waits for the process argv[1] to end (gone, or a zombie its parent has not reaped yet), then stops the
# daemon of pipe directory argv[3] (control program argv[2]) and removes that directory.
WATCH = r"""
import os, shutil, subprocess, sys, time
pid, control, directory, grace = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
def ended():
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
while not ended():
    time.sleep(0.5)
time.sleep(grace)
env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=directory, CUDA_MPS_LOG_DIRECTORY=os.path.join(directory, "log"))
try:
    subprocess.run([control], input=b"quit\n", env=env, timeout=60, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
finally:
    shutil.rmtree(directory, ignore_errors=True)
"""


def _env(directory: str) -> dict:
    """This process's environment with the daemon of pipe ``directory`` (its logs in ``directory``/log)."""
    return dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=directory, CUDA_MPS_LOG_DIRECTORY=os.path.join(directory, "log"))


def _train_encoding(cfg) -> str | None:
    """The train split's encoding of the run's store where it is already prepared (the store given, or the
    run directory's copy of an image folder), else None."""
    for where in (cfg.data, Path(cfg.out) / "data"):
        meta = F.read_json(Path(where) / F.META) if where is not None else None
        if meta is not None:
            return meta.get("splits", {}).get("train", {}).get("encoding")
    return None


def wanted(cfg) -> tuple[bool, str | None]:
    """Whether this run should start a daemon, and why not where a user would want to know (None: the
    run has no GPU workers to help, or a daemon already serves it)."""
    from alexnet.data.procs import local_processes, usable_cores

    if cfg.mps == "off" or cfg.device == "cpu" or cfg.decode == "cpu" or mps_running():
        return False, None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or local_processes() > 1:
        return False, None  # gpu_decode's `auto` tells torchrun users to start it
    if _train_encoding(cfg) != "jpeg":
        return False, None
    if cfg.decode == "auto":
        if cfg.gpu_decoder == "torchvision" or not installed("nvidia.nvimgcodec"):
            return False, None
        if usable_cores() >= AUTO_MIXED_BELOW_CORES:
            return False, None
    import torch

    if torch.cuda.is_initialized():
        return False, "CUDA is already initialised in this process, and the driver connects to MPS only then"
    if shutil.which(CONTROL) is None:  # said only where CUDA was asked for: auto may be a machine without a GPU
        return False, None if cfg.device == "auto" else f"{CONTROL} is not on PATH (it comes with NVIDIA's driver)"
    return True, None


def start_daemon(device_index: int = 0, owner: int | None = None, hopper_only: bool = False) -> tuple[str | None, str]:
    """Start a daemon with a pipe directory of its own and check a CUDA client under it. Returns
    (directory, "") and sets CUDA_MPS_PIPE_DIRECTORY / CUDA_MPS_LOG_DIRECTORY in this process (its
    children inherit them), or (None, why not). The daemon is stopped when the process ``owner`` (default:
    this one) has ended. ``hopper_only``: stop it again on a GPU other than compute capability 9.x."""
    directory = tempfile.mkdtemp(prefix="alexnet-mps-")
    env = _env(directory)
    os.makedirs(env["CUDA_MPS_LOG_DIRECTORY"])
    try:
        started = subprocess.run([CONTROL, "-d"], env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        shutil.rmtree(directory, ignore_errors=True)
        return None, f"{CONTROL} -d failed: {e}"
    if started.returncode != 0:
        shutil.rmtree(directory, ignore_errors=True)
        return None, f"{CONTROL} -d exited {started.returncode}: {(started.stderr or started.stdout).strip()[-200:]}"
    # From here on the watcher stops the daemon, whether the probe passes or not.
    subprocess.Popen([sys.executable, "-c", WATCH, str(owner or os.getpid()), CONTROL, directory, str(GRACE_S)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)
    why = _probe(env, device_index, hopper_only)
    if why:
        stop_daemon(directory)
        return None, why
    os.environ.update(CUDA_MPS_PIPE_DIRECTORY=directory, CUDA_MPS_LOG_DIRECTORY=env["CUDA_MPS_LOG_DIRECTORY"])
    return directory, ""


def _probe(env: dict, device_index: int, hopper_only: bool) -> str:
    """"" where a CUDA client starts under the daemon (on a Hopper GPU where ``hopper_only``), else why not."""
    try:
        probe = subprocess.run([sys.executable, "-c", PROBE, str(device_index)], env=env, capture_output=True,
                               text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"a CUDA client did not start under it within {PROBE_TIMEOUT_S} s (another MPS server on the GPU?)"
    if probe.returncode != 0:
        return f"a CUDA client did not start under it: {(probe.stderr or probe.stdout).strip()[-200:]}"
    if hopper_only and probe.stdout.strip() != str(MEASURED_CAPABILITY_MAJOR):
        return "GPU workers were measured on H100/H200 only"
    return ""


def stop_daemon(directory: str) -> None:
    """Stop the daemon of pipe ``directory`` now and remove the directory (its watcher then finds nothing)."""
    try:
        subprocess.run([CONTROL], input="quit\n", env=_env(directory), text=True, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        pass
    shutil.rmtree(directory, ignore_errors=True)


def start_for_run(cfg, log=print) -> str | None:
    """Start a daemon for this run where :func:`wanted`; logs what it did. Returns its pipe directory."""
    want, why = wanted(cfg)
    if want:
        index = int(cfg.device.split(":")[1]) if cfg.device.startswith("cuda:") else 0
        directory, why = start_daemon(index, hopper_only=cfg.decode == "auto")
        if directory is not None:
            log(f"MPS: started NVIDIA's MPS daemon for this run (pipe directory {directory}; stopped when this "
                "process ends; --mps off: not), so the GPU workers decode beside the training step instead of "
                "taking turns with it")
            return directory
    if why:
        log(f"MPS: not started: {why}")  # the loader's line says what that costs and how to start one
    return None
