"""What a run needs to know about the machine: the device, the precision, the hardware and code
version it ran on, and files written so that a kill at any moment leaves the old or the new one."""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import os
import platform
import signal
import subprocess
from pathlib import Path

import torch

from alexnet.errors import AlexnetError, ConfigError

__all__ = ["installed", "resolve_device", "amp_dtype", "device_guard", "apply_memory_cap", "hardware", "git_commit", "atomic_write_bytes",
           "atomic_write_text", "DiskFull", "remove_stale_temporaries", "StopSignals", "wait_for_gpu"]

PRECISIONS = ("auto", "bf16", "fp32")
# The host sleeps while it waits for the GPU (a blocking CUDA event) instead of spinning a core, CUDA's
# default, which the loader's worker processes need: the training loop waits for a step's loss every ten
# steps (alexnet.checks).
BLOCKING_WAITS = True


def wait_for_gpu(device) -> None:
    """Return once the work queued so far on ``device``'s current stream is done, sleeping (not
    spinning) meanwhile; a ``.item()`` after it then finds its value ready. Nothing on a CPU."""
    device = torch.device(device)
    if BLOCKING_WAITS and device.type == "cuda":
        done = torch.cuda.Event(blocking=True)
        done.record(torch.cuda.current_stream(device))
        done.synchronize()


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # its parent package is missing
        return False


def resolve_device(name: str = "auto") -> torch.device:
    """auto: CUDA when torch sees a GPU, else the CPU; cpu; cuda; cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"unknown device {name!r}: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} given, but torch sees no CUDA device")
    return torch.device(name)


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision setting: auto is bf16 on CUDA and fp32 (None) elsewhere."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: {', '.join(PRECISIONS)}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def device_guard(t: torch.Tensor):
    """Make `t`'s GPU the current device for the block. Triton (and anything else that launches on
    "the current device") would otherwise launch on the current device's stream, unordered with the
    work on `t`'s own GPU: the fault that broke the two-GPU columns."""
    if t.device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(t.device)


def apply_memory_cap(cap_gb: float | None, devices) -> list[dict]:
    """Cap the caching allocator on each CUDA device in `devices` at `cap_gb` GiB (the fraction
    cap / total of each device); returns what was set. Devices that are not CUDA are skipped."""
    if cap_gb is None:
        return []
    if cap_gb <= 0:
        raise ConfigError(f"memory cap must be positive, not {cap_gb} GB")
    out = []
    for dev in dict.fromkeys(torch.device(d) for d in devices):
        if dev.type != "cuda":
            continue
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).total_memory
        fraction = min(1.0, cap_gb * 2**30 / total)
        torch.cuda.set_per_process_memory_fraction(fraction, index)
        out.append({"device": f"cuda:{index}", "cap_bytes": int(cap_gb * 2**30), "total_bytes": total,
                    "fraction": fraction})
    return out


def hardware() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["gpu_count"] = torch.cuda.device_count()
    return info


def git_commit() -> str | None:
    """The commit of the code that runs (with '+dirty' when the tree has changes), or None outside a
    git checkout (an installed wheel)."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


class DiskFull(AlexnetError):
    """No space left for a file; the partial file has been removed and the old one kept."""


TMP_MARK = ".tmp-"


def atomic_write_bytes(path: str | Path, data: bytes | None = None, *, writer=None) -> Path:
    """Write `data` (or call `writer(file)`) to a temporary file beside `path`, flush it to disk,
    then rename it over `path`: a kill at any moment leaves the old file or the new one. A full disk
    removes the temporary file and raises DiskFull naming the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_MARK}{path.name}.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if writer is not None:
                writer(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if _is_disk_full(e):
            raise DiskFull(f"{path}: the disk is full; nothing was written and the previous file is kept. "
                           "Free some space and run again.") from None
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def _is_disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch.save reports a failed write as a RuntimeError from its C++ writer
    text = str(e)
    return isinstance(e, RuntimeError) and ("No space left" in text or "enforce fail" in text
                                            or "unexpected pos" in text or "write failed" in text)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove temporary files that a killed writer left in `folder` (never a finished file)."""
    removed = []
    for p in Path(folder).glob(f"{TMP_MARK}*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class StopSignals:
    """Within the block, SIGTERM and SIGINT set `signal` (the name) instead of ending the process, so
    that the work can stop at its next safe point and save. Outside the main thread it does nothing."""

    def __init__(self):
        self.signal: str | None = None
        self._old = {}

    def __enter__(self) -> "StopSignals":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, _frame) -> None:
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
