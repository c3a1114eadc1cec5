"""Max-pooling (no padding, floor mode: the paper's 3x3 windows at stride 2) for channels_last
tensors as two Triton kernels, with the window's argmax kept as one int8 per output.

Why: compiled, the backward of `max_pool2d` recomputes each window's argmax from the saved input
for every window an input pixel belongs to (up to 4 at 3/2: 36 loads per element); measured at
0.73 ms for the 256 x 96 x 55 x 55 pool of conv1 (docs/notes-speed.md), about five times what
its bytes need. Here the forward writes the argmax (0 .. K*K-1, int8) beside the maximum, and the
backward gathers: each input pixel reads the argmax and gradient of the at most ceil(K/S)^2
windows that contain it, and sums those whose argmax is that pixel. No atomics, deterministic.

Semantics are torch's (`F.max_pool2d(x, K, S)`): windows scanned row by row, the first maximum
wins ties, NaN propagates (a NaN is taken, a later NaN replaces it); the gradient goes to the
argmax only. Arithmetic in float32; inputs float32, float16 or bfloat16.
"""

import torch
import triton
import triton.language as tl

from alexnet.runtime import device_guard

__all__ = ["pool_forward", "pool_backward", "CONFIG"]

CONFIG = {"fwd_block": 1024, "fwd_warps": 4, "bwd_block": 1024, "bwd_warps": 4}
_INT32_MAX = 2**31 - 1


@triton.jit
def _pool_fwd(x_ptr, y_ptr, idx_ptr, total, C, H, W, OH, OW,
              K: tl.constexpr, S: tl.constexpr, I64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if I64:
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    else:
        offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    c = offs % C
    t = offs // C
    ow = t % OW
    t = t // OW
    oh = t % OH
    n = t // OH
    base = ((n * H + oh * S) * W + ow * S) * C + c
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    arg = tl.full([BLOCK], 0, tl.int32)
    for i in tl.static_range(K):
        for j in tl.static_range(K):
            v = tl.load(x_ptr + base + (i * W + j) * C, mask=mask, other=float("-inf")).to(tl.float32)
            take = (v > best) | (v != v)
            best = tl.where(take, v, best)
            arg = tl.where(take, i * K + j, arg)
    tl.store(y_ptr + offs, best.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(idx_ptr + offs, arg.to(tl.int8), mask=mask)


@triton.jit
def _pool_bwd(g_ptr, idx_ptr, dx_ptr, total, C, H, W, OH, OW,
              K: tl.constexpr, S: tl.constexpr, NW: tl.constexpr, I64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if I64:
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    else:
        offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    c = offs % C
    t = offs // C
    w = t % W
    t = t // W
    h = t % H
    n = t // H
    acc = tl.full([BLOCK], 0.0, tl.float32)
    # windows containing row h: oh in [h // S - (NW - 1), h // S], ascending (torch's order)
    for a in tl.static_range(NW):
        oh = h // S - (NW - 1) + a
        i = h - oh * S
        for b in tl.static_range(NW):
            ow = w // S - (NW - 1) + b
            j = w - ow * S
            valid = mask & (oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW) & (i < K) & (j < K)
            o = ((n * OH + oh) * OW + ow) * C + c
            arg = tl.load(idx_ptr + o, mask=valid, other=-1).to(tl.int32)
            g = tl.load(g_ptr + o, mask=valid, other=0.0).to(tl.float32)
            acc += tl.where(valid & (arg == i * K + j), g, 0.0)
    tl.store(dx_ptr + offs, acc.to(dx_ptr.dtype.element_ty), mask=mask)


def _out_size(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


def pool_forward(x: torch.Tensor, kernel: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, argmax) of a channels_last (N, C, H, W) tensor: y like x, argmax int8 (0 .. K*K-1)."""
    if not x.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    oh, ow = _out_size(h, kernel, stride), _out_size(w, kernel, stride)
    y = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    idx = torch.empty((n, c, oh, ow), dtype=torch.int8, device=x.device, memory_format=torch.channels_last)
    total = y.numel()
    if total == 0:
        return y, idx
    block = CONFIG["fwd_block"]
    with device_guard(x):
        _pool_fwd[(triton.cdiv(total, block),)](
            x, y, idx, total, c, h, w, oh, ow, K=kernel, S=stride, I64=x.numel() + block > _INT32_MAX,
            BLOCK=block, num_warps=CONFIG["fwd_warps"])
    return y, idx


def pool_backward(g: torch.Tensor, idx: torch.Tensor, h: int, w: int, kernel: int, stride: int) -> torch.Tensor:
    """The input gradient (N, C, h, w), channels_last, of pool_forward given its output gradient g."""
    g = g.contiguous(memory_format=torch.channels_last)
    idx = idx.contiguous(memory_format=torch.channels_last)
    n, c, oh, ow = g.shape
    dx = torch.empty((n, c, h, w), dtype=g.dtype, device=g.device, memory_format=torch.channels_last)
    total = dx.numel()
    if total == 0:
        return dx
    block = CONFIG["bwd_block"]
    with device_guard(g):
        _pool_bwd[(triton.cdiv(total, block),)](
            g, idx, dx, total, c, h, w, oh, ow, K=kernel, S=stride, NW=-(-kernel // stride),
            I64=total + block > _INT32_MAX, BLOCK=block, num_warps=CONFIG["bwd_warps"])
    return dx
