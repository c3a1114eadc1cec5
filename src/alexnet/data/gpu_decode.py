"""Decoding the store's JPEGs on the GPU, in a GPU worker (``Feeder(decode="cuda" or "mixed")``).

A GPU worker is a loader worker process (:mod:`alexnet.data.feeder_worker`) that owns a decoder on
the training process's GPU: it reads a batch's JPEG bytes into its slot of the ring, decodes them
as one list on its own stream, and copies the pixels back into the slot, so the training process
receives the batch like any other (one copy to the GPU) and spends no interpreter time on it. The
copy back costs PCIe bandwidth (50 MB per batch of 256), not the training process's time. Decoders:

* ``nvimgcodec``: NVIDIA nvImageCodec on the GPU's hardware JPEG engines (A100, H100, H200 have
  them), which leaves the SMs to training; images the engines cannot take fall back to its CUDA
  decoder. Optional: ``pip install nvidia-nvimgcodec-cu13 nvidia-nvjpeg`` (the ``gpu-decode`` extra).
* ``torchvision``: ``torchvision.io.decode_jpeg(list, device=...)`` (nvJPEG on the SMs).

``gpu_decoder="auto"`` takes nvImageCodec when it is installed (on a GPU without JPEG engines it
uses its CUDA decoder, like torchvision's), else torchvision. On a CPU device (the tests' stand-in
for a GPU) the GPU worker decodes with torchvision on the CPU, so its pixels are the CPU workers'.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings

import torch

from alexnet.data.procs import local_processes
from alexnet.errors import DataError

__all__ = ["GPU_DECODERS", "GPU_WORKERS_WITH_MPS", "GPU_WORKERS_LARGE_BATCH", "LARGE_BATCH", "START_MPS", "Decoded",
           "GpuDecoding", "default_gpu_workers", "gpu_decoder", "measured_gpu", "mps_running", "nvimgcodec_available",
           "resolve_decode", "resolve_gpu_decoder"]

GPU_DECODERS = ("auto", "nvimgcodec", "torchvision")


@contextlib.contextmanager
def quiet_stderr():
    """File descriptor 2 sent to /dev/null meanwhile (what C code prints there too)."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@functools.cache
def _nvimgcodec():
    """The nvImageCodec module, or None when it is not installed (or does not load). Its import
    prints, from C and in red, that its JPEG 2000 and TIFF libraries are missing: formats a store
    never holds, so that is silenced (errors while decoding are still raised and reported)."""
    try:
        with quiet_stderr():
            from nvidia import nvimgcodec
    except Exception:  # ImportError, or a shared library that does not load
        return None
    return nvimgcodec


def nvimgcodec_available() -> bool:
    return _nvimgcodec() is not None


def resolve_gpu_decoder(name: str, device) -> str:
    """The decoder ``name`` stands for on ``device``: "auto" is nvImageCodec on a CUDA device where it
    is installed, else torchvision (which also stands in on a CPU device)."""
    if name not in GPU_DECODERS:
        raise ValueError(f"unknown GPU decoder {name!r}: {', '.join(GPU_DECODERS)}")
    if name != "auto":
        return name
    return "nvimgcodec" if torch.device(device).type == "cuda" and nvimgcodec_available() else "torchvision"


# ``decode="auto"``: GPU workers beside the CPU workers ("mixed") where that was measured to be faster
# than CPU decoding alone: a Hopper GPU, one training process per machine with fewer than
# AUTO_MIXED_BELOW_CORES cores, nvImageCodec installed. On an H200 with 16 cores (docs/RESULTS.md, sixth session) one GPU worker gave
# 1-12% more images/s end to end than CPU decoding at batch 256 and 2% more at 128, and three GPU workers
# under NVIDIA MPS 10-13% more again; with 32 cores CPU decoding alone kept one H200 at 94% of its step.
AUTO_MIXED_BELOW_CORES = 24
# Without MPS, one GPU worker was measured no faster at 128 images per process (+2% in the sixth
# session, 0% / -7% in the seventh): below this batch auto keeps CPU decoding unless MPS runs (with it,
# 3 GPU workers gave +12% at 128). Measured again with the one-pass update at ImageNet size (eleventh
# session): without MPS, CPU decoding 79-88% of the step at 128 and one GPU worker 86%, within that
# spread, so the rule stands; with MPS 94.5-96.2%, which is why `alexnet train` starts MPS itself
# (alexnet.data.mps, --mps auto) where GPU workers decode.
AUTO_MIXED_MIN_BATCH_WITHOUT_MPS = 256
# Several training processes on one machine (DDP on the two-H200 machine, 32 cores, eighth session):
# under MPS, 3 GPU + 11 CPU workers per process gave 74,617-76,200 images/s at 256 per GPU against
# 60,819-66,268 for CPU decoding (+15-25%), but 57,094-58,255 against 65,385-66,120 at 128 (-12%), where
# CPU decoding already keeps up. So mixed under DDP needs MPS and this batch per process.
AUTO_MIXED_MIN_BATCH_DDP = 256
GPU_WORKERS_WITH_MPS = 3  # GPU workers by default where the MPS daemon runs, else 1
# One more at this batch (per process) or more, for one training process on the machine: at 256 on a
# 16-core H200 at ImageNet size the CPU workers' share fell behind the step with 3 (eighteenth session,
# one machine, in alternation: 4 GPU + 10 CPU workers 44,346-44,995 images/s, 90.8-92.1% of the resident
# step, against 41,235-44,954 with 3 + 11, 84.4-92.0%; 5 + 9: 87.1%), while at 128, where CPU decoding
# keeps up, the fourth decoder's kernels cost the step (97.2% against 99.6%). Under DDP: 3 (4 not measured).
GPU_WORKERS_LARGE_BATCH, LARGE_BATCH = 4, 256
START_MPS = "nvidia-cuda-mps-control -d"  # how the logs tell a user to start the MPS daemon
# The end of `auto`'s reason where GPU workers wait for MPS ({} : " per process" under DDP, else "").
# (Both cases are ones where the default is GPU_WORKERS_WITH_MPS: DDP, or one process below LARGE_BATCH.)
_WITH_MPS = f"with MPS running ({START_MPS}) {GPU_WORKERS_WITH_MPS} GPU workers{{}} join the CPU workers"
# The GPU workers' stream priority (CUDA: lower is more urgent; 0 is the default, torch maps -1 to its
# high priority). Beside a GPU-saturating neighbour the decoder's small kernels wait behind it; -1 was
# measured and did not change that (RESULTS.md, seventh session), so the default stays: nvImageCodec runs
# its hardware decoder's kernels on a stream of its own. Nor did putting the training process below
# normal as an MPS client (CUDA_MPS_CLIENT_PRIORITY=1, eighth session). Nor two decoders per GPU worker
# on streams of their own (two batches in flight inside nvImageCodec), nor holding training to 90% of the
# SMs under MPS (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=90: the step loses 6%; ninth session), nor holding the
# GPU workers to 12-50% of them (the step's kernels took as long; fourteenth session, commit 77e1882).
# Nor copying each decoded image into the ring without stacking the batch on the GPU first (dfaade9:
# 40,904-41,069 images/s against 40,664-41,422 on one H100 at 256, twentieth session).
DECODE_STREAM_PRIORITY = 0


def mps_running() -> bool:
    """Whether NVIDIA's Multi-Process Service daemon is running for this process's CUDA clients (its
    control pipe exists). Without it the GPU time-slices the GPU workers' kernels with training's
    (each process is its own CUDA context); with it they run side by side."""
    return os.path.exists(os.path.join(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"), "control"))


def default_gpu_workers(batch: int | None = None) -> int:
    """GPU workers per training process by default: 1 without NVIDIA MPS; with it 3, or 4 for one
    training process on the machine at ``batch`` (per process) of LARGE_BATCH or more."""
    if not mps_running():
        return 1
    large = local_processes() == 1 and batch is not None and batch >= LARGE_BATCH
    return GPU_WORKERS_LARGE_BATCH if large else GPU_WORKERS_WITH_MPS


MEASURED_CAPABILITY_MAJOR = 9  # Hopper: where GPU workers were measured


def measured_gpu(device) -> bool:
    """Whether ``device`` is of the family whose JPEG engines were measured here: Hopper (H100, H200;
    compute capability 9.x). Elsewhere nvImageCodec may have no engines and decode on the SMs."""
    return torch.cuda.get_device_capability(device)[0] == MEASURED_CAPABILITY_MAJOR


def resolve_decode(device, encoding: str, gpu_decoder: str = "auto", batch: int | None = None) -> tuple[str, str]:
    """What ``decode="auto"`` means here: ("mixed" or "cpu", why). Mixed only for a JPEG store on a
    Hopper GPU (:func:`measured_gpu`) with nvImageCodec's hardware decoder, and then: for one training
    process on this machine, fewer than AUTO_MIXED_BELOW_CORES cores and, unless NVIDIA MPS runs, a
    ``batch`` (per process; None: not known) of at least AUTO_MIXED_MIN_BATCH_WITHOUT_MPS; for several
    (DDP), MPS running and a batch of at least AUTO_MIXED_MIN_BATCH_DDP. Where it was measured to beat
    CPU decoding alone."""
    from alexnet.data.procs import usable_cores

    device = torch.device(device)
    if encoding != "jpeg" or device.type != "cuda":
        return "cpu", "auto: nothing to decode on a GPU" if encoding != "jpeg" else "auto: not on a GPU"
    if resolve_gpu_decoder(gpu_decoder, device) != "nvimgcodec":
        return "cpu", "auto: nvImageCodec is not installed (pip install alexnet[gpu-decode])"
    if not measured_gpu(device):
        return "cpu", "auto: GPU decoding measured on H100/H200 only"
    local = local_processes()
    if local > 1:
        if batch is not None and batch < AUTO_MIXED_MIN_BATCH_DDP:
            return "cpu", f"auto: {local} training processes on this machine at batch {batch} each, where CPU decoding keeps up"
        if not mps_running():
            return "cpu", (f"auto: {local} training processes on this machine without NVIDIA MPS; "
                           + _WITH_MPS.format(" per process"))
        return "mixed", f"auto: {local} training processes on this machine, NVIDIA MPS running"
    cores = usable_cores()
    if cores >= AUTO_MIXED_BELOW_CORES:
        return "cpu", f"auto: {cores} cores decode enough"
    if batch is not None and batch < AUTO_MIXED_MIN_BATCH_WITHOUT_MPS and not mps_running():
        return "cpu", (f"auto: batch {batch} without NVIDIA MPS, where a GPU worker was measured no faster; "
                       + _WITH_MPS.format(""))
    return "mixed", f"auto: {cores} cores, nvImageCodec installed"


class NvImageCodec:
    """nvImageCodec's decoder for one device: the hardware JPEG engines first, its CUDA decoder for
    what they refuse. ``__call__(parts, stream)`` -> list of (S,S,3) uint8 tensors (None: undecodable)
    and the objects that own their memory (keep them until the stream has used the tensors).
    ``backends``: nvImageCodec ``BackendKind`` names, tried in order (benchmarks try them one by one)."""

    name = "nvimgcodec"

    def __init__(self, device: torch.device, threads: int = 4, backends=("HW_GPU_ONLY", "GPU_ONLY")):
        nv = _nvimgcodec()
        if nv is None:
            raise RuntimeError("nvImageCodec is not installed: pip install nvidia-nvimgcodec-cu13 nvidia-nvjpeg")
        index = device.index if device.index is not None else torch.cuda.current_device()
        self._nv = nv
        # Its CPU threads (0: one per core) prepare the engines' work; the loader's workers need the cores.
        self.decoder = nv.Decoder(device_id=index, max_num_cpu_threads=threads,
                                  backends=[nv.Backend(getattr(nv.BackendKind, b)) for b in backends])
        self.params = nv.DecodeParams(apply_exif_orientation=False, color_spec=nv.ColorSpec.SRGB,
                                      allow_any_depth=False)

    def __call__(self, parts: list[torch.Tensor], stream):
        nv = self._nv
        images = self.decoder.decode([nv.CodeStream(p.numpy()) for p in parts], params=self.params,
                                     cuda_stream=stream.cuda_stream)
        # from_dlpack hands the current stream (the feeder's) to the producer, which orders them.
        return [None if im is None else torch.from_dlpack(im) for im in images], images


class TorchvisionNvjpeg:
    """``torchvision.io.decode_jpeg`` on the device (nvJPEG on the SMs)."""

    name = "torchvision"

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, parts: list[torch.Tensor], stream):
        from torchvision.io import ImageReadMode, decode_jpeg

        from alexnet.data.decode import TV_CODEC_DEPRECATION

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=TV_CODEC_DEPRECATION, category=DeprecationWarning)
            images = decode_jpeg(parts, mode=ImageReadMode.RGB, device=self.device)
        return [im.permute(1, 2, 0) for im in images], None


def gpu_decoder(name: str, device) -> "NvImageCodec | TorchvisionNvjpeg":
    """The decoder ``name`` (one of GPU_DECODERS) for ``device``. On a CPU device (the tests' stand-in
    for the GPU path) torchvision decodes on the CPU."""
    device = torch.device(device)
    if device.type != "cuda" or resolve_gpu_decoder(name, device) == "torchvision":
        return TorchvisionNvjpeg(device)
    try:
        return NvImageCodec(device)
    except Exception as e:
        if name == "nvimgcodec":
            raise RuntimeError(f"nvImageCodec does not start on {device}: {e}") from None
    return TorchvisionNvjpeg(device)


def _bad_image(parts: list[torch.Tensor], rows, size: int, path, error: BaseException | None = None) -> DataError:
    """The first image of a batch that does not decode, found on the CPU (only after a failure)."""
    from alexnet.data.decode import decode_store_jpeg

    for part, row in zip(parts, rows):
        try:
            decode_store_jpeg(part, size, path, int(row))
        except DataError as e:
            return e
    why = "" if error is None else f" ({type(error).__name__}: {' '.join(str(error).split())[:200]})"
    return DataError(path, f"images {int(min(rows))}..{int(max(rows))}: the GPU decoder rejects the batch{why}, "
                           "though each image decodes on the CPU; use decode='cpu'")


class GpuDecoding:
    """In a GPU worker: the pixels of a slot whose JPEG bytes are in its blob, decoded on ``device``
    and written into the slot's images."""

    def __init__(self, ring, source: dict, device, decoder: str):
        self.device = torch.device(device)  # with its index: the Feeder names the training process's GPU
        self.path, self.size = source["path"], source["size"]
        self.cuda = self.device.type == "cuda"
        self.stream = None
        if self.cuda:
            torch.cuda.set_device(self.device)
            self.stream = torch.cuda.Stream(self.device, priority=DECODE_STREAM_PRIORITY)
            # The ring page-locked here too: the pixels go back with one asynchronous copy.
            self.registered = ring.register_cuda()
        self.decoder = gpu_decoder(decoder, self.device)

    def submit(self, ring, slot: int, rows) -> "Decoded":
        """Start decoding the JPEG bytes in ``slot``'s blob into its images; returns at once on a GPU
        (the pixels are in the slot once ``Decoded.wait()`` returns), after the work on the CPU stand-in.
        A batch that does not decode raises a DataError naming the image."""
        n, S = len(rows), self.size
        lengths = ring.lengths(slot, n)
        parts = list(ring.blob(slot)[: int(lengths.sum())].split(lengths.tolist()))
        with torch.cuda.stream(self.stream) if self.cuda else contextlib.nullcontext():
            try:
                images, owners = self.decoder(parts, self.stream)
            except Exception as e:
                raise _bad_image(parts, rows, S, self.path, e) from None
            if any(im is None for im in images):
                raise _bad_image(parts, rows, S, self.path)
            for im, row in zip(images, rows):
                if tuple(im.shape) != (S, S, 3):
                    raise DataError(self.path, f"image {int(row)} is {tuple(im.shape)} (HWC), expected "
                                               f"({S}, {S}, 3); prepare the data again")
            dst = ring.images(slot, n)  # (n,S,S,3) in the shared ring
            if not self.cuda:
                torch.stack(images, out=dst)
                return Decoded(None, None)
            stacked = torch.stack(images)
            dst.copy_(stacked, non_blocking=self.registered)
            # Waited on without spinning (CUDA's default spins a core, which the CPU workers need).
            done = torch.cuda.Event(blocking=True)
            done.record(self.stream)
        return Decoded(done, (owners, images, stacked))  # the decoder's buffers live until the copy is done


class Decoded:
    """A batch being decoded (and copied back) on the GPU: ``ready()`` without waiting, ``wait()``."""

    __slots__ = ("event", "keep")

    def __init__(self, event, keep):
        self.event, self.keep = event, keep

    def ready(self) -> bool:
        return self.event is None or self.event.query()

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()
        self.event = self.keep = None
