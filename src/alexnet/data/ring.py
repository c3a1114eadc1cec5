"""A ring of batch slots in memory shared by the training process and its loader workers.

One anonymous shared file (``memfd_create``; not limited by the size of /dev/shm, and gone when
the last process holding it exits) holds ``slots`` equal slots. A slot holds one (local) batch::

    images   uint8 (B, S, S, 3)   decoded pixels, HWC (absent when the GPU decodes)
    labels   int64 (B,)
    lengths  int64 (B,)           JPEG byte counts (GPU decoding)
    blob     uint8 (blob,)        JPEG bytes back to back (GPU decoding)

each part starting on a page. Workers attach by the file descriptor, which multiprocessing
passes along when it starts them. In the training process the whole ring is page-locked once
(``cudaHostRegister``) so that a slot goes to the GPU in one asynchronous copy, no staging.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from multiprocessing import reduction

import torch

__all__ = ["SlotLayout", "Ring", "RingHandle"]

PAGE = 4096


def _up(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


@dataclass(frozen=True)
class SlotLayout:
    batch: int          # most images in a slot (the local batch)
    size: int           # S
    pixels: bool        # slots hold decoded images
    blob: int = 0       # bytes for JPEG data (GPU decoding)

    @property
    def labels_at(self) -> int:
        return _up(self.batch * self.size * self.size * 3) if self.pixels else 0

    @property
    def lengths_at(self) -> int:
        return self.labels_at + _up(self.batch * 8)

    @property
    def blob_at(self) -> int:
        return self.lengths_at + _up(self.batch * 8)

    @property
    def slot_bytes(self) -> int:
        return _up(self.blob_at + self.blob)


class RingHandle:
    """What a worker needs to map the ring; pickling it passes the file descriptor along."""

    def __init__(self, fd: int, slots: int, layout: SlotLayout):
        self.fd, self.slots, self.layout = fd, slots, layout

    def __reduce__(self):
        return _rebuild_handle, (reduction.DupFd(self.fd), self.slots, self.layout)


def _rebuild_handle(dup, slots, layout) -> RingHandle:
    return RingHandle(dup.detach(), slots, layout)


def _shared_fd(nbytes: int) -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("alexnet-batch-ring", os.MFD_CLOEXEC)
    else:  # no memfd (macOS): an unlinked temporary file
        import tempfile

        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    os.ftruncate(fd, nbytes)
    return fd


class Ring:
    """The slots, as tensors over the shared memory (in either process)."""

    def __init__(self, slots: int, layout: SlotLayout, fd: int | None = None):
        self.slots, self.layout = slots, layout
        self.nbytes = slots * layout.slot_bytes
        self.owner = fd is None
        self.fd = _shared_fd(self.nbytes) if fd is None else fd
        self._mm = mmap.mmap(self.fd, self.nbytes)
        self.base = torch.frombuffer(self._mm, dtype=torch.uint8)
        self.registered = False

    @classmethod
    def attach(cls, handle: RingHandle) -> "Ring":
        return cls(handle.slots, handle.layout, handle.fd)

    def handle(self) -> RingHandle:
        return RingHandle(self.fd, self.slots, self.layout)

    def _part(self, slot: int, at: int, nbytes: int) -> torch.Tensor:
        start = slot * self.layout.slot_bytes + at
        return self.base[start : start + nbytes]

    def images(self, slot: int, n: int) -> torch.Tensor:
        """uint8 (n, S, S, 3) of a slot."""
        S = self.layout.size
        return self._part(slot, 0, n * S * S * 3).view(n, S, S, 3)

    def labels(self, slot: int, n: int) -> torch.Tensor:
        return self._part(slot, self.layout.labels_at, n * 8).view(torch.int64)

    def lengths(self, slot: int, n: int) -> torch.Tensor:
        return self._part(slot, self.layout.lengths_at, n * 8).view(torch.int64)

    def blob(self, slot: int) -> torch.Tensor:
        return self._part(slot, self.layout.blob_at, self.layout.blob)

    def register_cuda(self) -> bool:
        """Page-lock the ring for asynchronous copies to the GPU; False if the driver refuses."""
        cudart = torch.cuda.cudart()
        err = cudart.cudaHostRegister(self.base.data_ptr(), self.nbytes, 1)  # 1: cudaHostRegisterPortable
        self.registered = int(err) == 0
        if not self.registered:
            _clear_cuda_error()
        return self.registered

    def close(self) -> None:
        """Unregister (the caller has waited for the copies out of it) and let go of the memory.

        The mapping is not closed here: tensors over it keep the mmap object alive (torch holds a
        reference), and it is unmapped when the last of them goes; closing it explicitly would
        leave such a tensor pointing at nothing."""
        if self.registered:
            torch.cuda.cudart().cudaHostUnregister(self.base.data_ptr())
            self.registered = False
        self.base = None
        self._mm = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _clear_cuda_error() -> None:
    """Reset the CUDA runtime's last error after a refused registration, which torch would otherwise
    report at its next kernel launch; through the libcudart that torch loaded."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libcudart" in line}
        for path in paths:
            ctypes.CDLL(path).cudaGetLastError()
    except OSError:
        pass
