"""The paper's update (section 5) in one pass over each parameter, as a Triton kernel:

    v <- momentum v - weight_decay eps w - eps g
    w <- w + v

`alexnet.optim.foreach_update`, the reference, does it in four foreach passes (v scaled; w, then g, added
into v; v added into w), which read or write each element's four bytes 11 times; this kernel reads
w, g and v once and writes v and w once: 5 times. The update is memory-bound, so for the paper's
60,965,224 float32 parameters that is about 1.2 GB of memory traffic a step instead of 2.7.

The arithmetic is the foreach passes' own, in their order: v * momentum rounded, then two fused
multiply-adds (torch's foreach add with ``alpha`` computes ``v + alpha * x`` in one), then w + v. The
scalars are the ones torch passes to those kernels (momentum, -weight_decay * eps and -eps, each made
a float32). So on CUDA the kernel gives the foreach passes' bits (the GPU tests compare them); on the CPU,
under Triton's interpreter, within a rounding.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from alexnet.runtime import device_guard

__all__ = ["CONFIG", "fusable", "update_"]

#: Launch parameters: elements per program and warps.
CONFIG = {"block": 4096, "warps": 8}


@triton.jit
def _paper_update(w_ptr, g_ptr, v_ptr, n, momentum, decay, step, DECAY: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n
    w = tl.load(w_ptr + offs, mask=mask)
    g = tl.load(g_ptr + offs, mask=mask)
    v = tl.load(v_ptr + offs, mask=mask)
    v = v * momentum
    if DECAY:                    # without decay the reference skips the pass (and so a zero's sign)
        v = tl.fma(w, decay, v)  # + (-weight_decay eps) w
    v = tl.fma(g, step, v)       # + (-eps) g
    tl.store(v_ptr + offs, v, mask=mask)
    tl.store(w_ptr + offs, w + v, mask=mask)


def update_(w: torch.Tensor, g: torch.Tensor, v: torch.Tensor, eps: float, momentum: float,
            weight_decay: float) -> None:
    """The paper's update of one parameter ``w`` in place, with its gradient ``g`` and velocity ``v``
    (also updated in place). The three are float32 with the same strides, dense in memory (contiguous or
    channels_last): the kernel runs over their storage as one flat array (`fusable` says whether)."""
    n = w.numel()
    if n == 0:
        return
    block = CONFIG["block"]
    with device_guard(w):
        _paper_update[(triton.cdiv(n, block),)](w, g, v, n, momentum, -weight_decay * eps, -eps,
                                               DECAY=bool(weight_decay), BLOCK=block, num_warps=CONFIG["warps"])


def fusable(w: torch.Tensor, g: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether `update_` can take these three: float32, one device, the same shape and strides, and
    dense (so that element i of each is the same flat offset)."""
    if not (w.dtype == g.dtype == v.dtype == torch.float32):
        return False
    if not (w.device == g.device == v.device and w.shape == g.shape == v.shape):
        return False
    if not (w.stride() == g.stride() == v.stride()):
        return False
    dims = w.dim()
    return w.is_contiguous() or (dims == 4 and w.is_contiguous(memory_format=torch.channels_last))
