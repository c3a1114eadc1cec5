"""Cross-channel response normalisation (paper section 3.3) as Triton kernels, optionally fused
with the ReLU that precedes it in the paper's order (conv -> ReLU -> LRN -> max-pool).

    d[c] = k + scale * sum_{c' in window(c)} a[c']^2        window(c) = [c - size//2, c + (size-1)//2]
    b[c] = a[c] * d[c]^-beta                                  (zero beyond the channel edges)
    da[c] = g[c] * d[c]^-beta - 2 * scale * beta * a[c] * sum_{c': c in window(c')} g[c'] a[c'] d[c']^(-beta-1)

With ``relu=True`` the input is the pre-activation x and a = max(x, 0); the ReLU output is never
written, and the gradient returned is da * (x > 0). With ``groups=G`` the channels split into G
equal runs (the two-column network's columns) and no window crosses from one run into the next.

Layouts: NCHW contiguous and channels_last (NHWC contiguous). Any other strides are first made
contiguous in the closer of the two. Arithmetic is float32 inside; inputs and outputs are float32,
float16 or bfloat16 and the output keeps the input's dtype. Only the input is saved for backward;
d is recomputed there from it.

Kernels:
- ``_lrn_fwd_flat``: one program per BLOCK consecutive elements of the flat tensor; the channel of
  element i is (i // S) % C with S the channel stride (1 for NHWC, H*W for NCHW), and the window is
  `size` shifted loads (neighbours come from L1/L2, the tensor is read from DRAM once).
- ``_lrn_bwd_flat``: the same per-element scheme for the backward: 2*size-1 shifted loads of x,
  size of g, and size powers per element (each d[c'] is recomputed by every element that needs it).
- ``_lrn_bwd_tile``: NHWC only. A program holds BLOCK_P pixels x all channels (C padded to a power
  of two), computes t = g*a*d^(-beta-1) once per element, parks it in a small per-program scratch
  buffer that stays in L2, and after a barrier sums the shifted t's. One power per element instead
  of `size`. Persistent grid, so the scratch is a few MB however large the batch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from alexnet.runtime import device_guard

__all__ = ["CONFIG", "lrn_forward", "lrn_backward", "interpreting"]

#: Launch parameters; benchmarks/lrn_kernel.py sweeps them. "bwd_nhwc" picks the channels_last
#: backward: "tile" (one power per element, scratch buffer) or "flat" (size powers per element).
#: Defaults: the best of the sweep on an H100 (docs/notes-kernels.md).
CONFIG = {
    "fwd_block": 1024,
    "fwd_warps": 8,
    "bwd_block": 1024,
    "bwd_warps": 8,
    "bwd_nhwc": "tile",
    "tile_elems": 512,
    "tile_warps": 8,
    "tile_progs_per_sm": 16,
}

_INT32_MAX = 2**31 - 1


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return _lrn_fwd_flat.__class__.__name__ == "InterpretedFunction"


@triton.jit
def _log2(d, FAST: tl.constexpr):
    # libdevice's log2f is ~20 FMAs; lg2.approx is one MUFU op with ~2^-22 absolute error, and
    # d >= k makes that a relative error of about 1e-7 in d^-beta. The interpreter lacks libdevice.
    if FAST:
        return libdevice.fast_log2f(d)
    else:
        return tl.log2(d)


@triton.jit
def _lrn_fwd_flat(x_ptr, y_ptr, numel, scale, beta, k,
                  C: tl.constexpr, S: tl.constexpr, LO: tl.constexpr, HI: tl.constexpr,
                  RELU: tl.constexpr, I64: tl.constexpr, FAST: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if I64:
        i = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    else:
        i = pid * BLOCK + tl.arange(0, BLOCK)
    inb = i < numel
    c = (i // S) % C
    a0 = tl.load(x_ptr + i, mask=inb, other=0.0).to(tl.float32)
    if RELU:
        a0 = tl.maximum(a0, 0.0)
    s = a0 * a0
    for m in tl.static_range(-LO, HI + 1):
        if m != 0:
            ok = inb & (c + m >= 0) & (c + m < C)
            v = tl.load(x_ptr + i + m * S, mask=ok, other=0.0).to(tl.float32)
            if RELU:
                v = tl.maximum(v, 0.0)
            s += v * v
    d = k + scale * s
    y = a0 * tl.exp2(-beta * _log2(d, FAST))
    tl.store(y_ptr + i, y.to(y_ptr.dtype.element_ty), mask=inb)


@triton.jit
def _lrn_bwd_flat(x_ptr, g_ptr, dx_ptr, numel, scale, beta, k,
                  C: tl.constexpr, S: tl.constexpr, LO: tl.constexpr, HI: tl.constexpr,
                  RELU: tl.constexpr, I64: tl.constexpr, FAST: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if I64:
        i = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    else:
        i = pid * BLOCK + tl.arange(0, BLOCK)
    inb = i < numel
    c = (i // S) % C
    R: tl.constexpr = LO + HI
    # a at channel offsets -R..R (zero beyond the edges): every d[c'] the sum needs is built from them.
    vals = ()
    for m in tl.static_range(-R, R + 1):
        ok = inb & (c + m >= 0) & (c + m < C)
        v = tl.load(x_ptr + i + m * S, mask=ok, other=0.0).to(tl.float32)
        if RELU:
            v = tl.maximum(v, 0.0)
        vals = vals + (v,)
    acc = tl.full([BLOCK], 0.0, tl.float32)
    center = tl.full([BLOCK], 0.0, tl.float32)
    for o in tl.static_range(-HI, LO + 1):
        # c' = c + o has c in its window; d[c'] sums a^2 over c' - LO .. c' + HI.
        s = tl.full([BLOCK], 0.0, tl.float32)
        for j in tl.static_range(-LO, HI + 1):
            v = vals[o + j + R]
            s += v * v
        d = k + scale * s
        ok = inb & (c + o >= 0) & (c + o < C)
        g = tl.load(g_ptr + i + o * S, mask=ok, other=0.0).to(tl.float32)
        p = tl.exp2((-beta - 1.0) * _log2(d, FAST))
        acc += g * vals[o + R] * p
        if o == 0:
            center = g * p * d
    a0 = vals[R]
    dx = center - (2.0 * scale * beta) * a0 * acc
    if RELU:
        dx = tl.where(a0 > 0.0, dx, 0.0)
    tl.store(dx_ptr + i, dx.to(dx_ptr.dtype.element_ty), mask=inb)


@triton.jit
def _lrn_bwd_tile(x_ptr, g_ptr, dx_ptr, t_ptr, P, scale, beta, k,
                  C: tl.constexpr, CP: tl.constexpr, CG: tl.constexpr,
                  LO: tl.constexpr, HI: tl.constexpr,
                  RELU: tl.constexpr, I64: tl.constexpr, FAST: tl.constexpr, BLOCK_P: tl.constexpr):
    # channels_last: element (pixel p, channel c) is at p * C + c; windows stay inside each group
    # of CG channels.
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    rows = tl.arange(0, BLOCK_P)
    cols = tl.arange(0, CP)
    cin = cols < C
    cg = cols % CG
    t_tile = t_ptr + pid * (BLOCK_P * CP) + rows[:, None] * CP + cols[None, :]
    ntiles = (P + BLOCK_P - 1) // BLOCK_P
    for tile in range(pid, ntiles, nprog):
        if I64:
            p = tile.to(tl.int64) * BLOCK_P + rows
        else:
            p = tile * BLOCK_P + rows
        pm = (p < P)[:, None]
        off = (p * C)[:, None] + cols[None, :]
        m0 = pm & cin[None, :]
        a0 = tl.load(x_ptr + off, mask=m0, other=0.0).to(tl.float32)
        if RELU:
            a0 = tl.maximum(a0, 0.0)
        s = a0 * a0
        for j in tl.static_range(-LO, HI + 1):
            if j != 0:
                ok = pm & (cin & (cg + j >= 0) & (cg + j < CG))[None, :]
                v = tl.load(x_ptr + off + j, mask=ok, other=0.0).to(tl.float32)
                if RELU:
                    v = tl.maximum(v, 0.0)
                s += v * v
        d = k + scale * s
        g = tl.load(g_ptr + off, mask=m0, other=0.0).to(tl.float32)
        p1 = tl.exp2((-beta - 1.0) * _log2(d, FAST))
        t = tl.where(m0, g * a0 * p1, 0.0)
        tl.debug_barrier()  # the previous tile's reads of the scratch are done
        tl.store(t_tile, t)
        tl.debug_barrier()  # every t of this tile is written
        acc = t
        for o in tl.static_range(-HI, LO + 1):
            if o != 0:
                ok = (cin & (cg + o >= 0) & (cg + o < CG))[None, :]
                acc += tl.load(t_tile + o, mask=ok, other=0.0)
        dx = g * p1 * d - (2.0 * scale * beta) * a0 * acc
        if RELU:
            dx = tl.where(a0 > 0.0, dx, 0.0)
        tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=m0)


# --------------------------------------------------------------------------------------------
# Host side


def _window(size: int) -> tuple[int, int]:
    """Channels before and after c in its window, as torch's local_response_norm pads them."""
    return size // 2, (size - 1) // 2


def _layout(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """x dense in NCHW or NHWC (copied into the closer one if neither); True when NHWC."""
    if x.is_contiguous():
        return x, False
    if x.is_contiguous(memory_format=torch.channels_last):
        return x, True
    sn, sc, sh, sw = x.stride()
    if sc == 1 or sc < min(sh, sw):  # channels vary fastest: closer to channels_last
        return x.contiguous(memory_format=torch.channels_last), True
    return x.contiguous(), False


def _like(t: torch.Tensor, nhwc: bool) -> torch.Tensor:
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    return t if t.is_contiguous(memory_format=fmt) else t.contiguous(memory_format=fmt)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # interpreter: a couple of persistent programs still exercises the tile loop


def _out(out: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    if out is None:
        return torch.empty_like(x)
    if out.shape != x.shape or out.dtype != x.dtype or out.stride() != x.stride():
        raise ValueError("out must match the (dense) input in shape, dtype and strides")
    return out


def _group(c: int, groups: int) -> int:
    if groups < 1 or c % groups:
        raise ValueError(f"{c} channels do not split into {groups} equal groups")
    return c // groups


def lrn_forward(x: torch.Tensor, size: int, scale: float, beta: float, k: float,
                relu: bool = False, groups: int = 1, nhwc: bool | None = None,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """Forward kernel launch (no autograd). x is made dense in the closer layout; the result, or
    `out` when given (same shape, dtype and strides as that dense x), has x's layout and dtype."""
    if nhwc is None:
        x, nhwc = _layout(x)
    n, c, h, w = x.shape
    cg = _group(c, groups)
    y = _out(out, x)
    numel = x.numel()
    if numel == 0:
        return y
    lo, hi = _window(size)
    block = CONFIG["fwd_block"]
    grid = (triton.cdiv(numel, block),)
    # Groups are contiguous runs of channels, so the flat kernel sees C = channels per group.
    with device_guard(x):
        _lrn_fwd_flat[grid](x, y, numel, float(scale), float(beta), float(k),
                            C=cg, S=1 if nhwc else h * w, LO=lo, HI=hi, RELU=bool(relu),
                            I64=numel + block > _INT32_MAX, FAST=not interpreting(), BLOCK=block,
                            num_warps=CONFIG["fwd_warps"])
    return y


def lrn_backward(x: torch.Tensor, g: torch.Tensor, size: int, scale: float, beta: float, k: float,
                 relu: bool = False, groups: int = 1, nhwc: bool | None = None,
                 variant: str | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Backward kernel launch: the gradient with respect to the input (pre-ReLU, when relu) given
    the output gradient g, which is made dense like x. `variant` ("flat" or "tile"; tile is
    channels_last only) overrides CONFIG["bwd_nhwc"]."""
    if nhwc is None:
        x, nhwc = _layout(x)
    g = _like(g.to(x.dtype), nhwc)
    n, c, h, w = x.shape
    cg = _group(c, groups)
    dx = _out(out, x)
    numel = x.numel()
    if numel == 0:
        return dx
    lo, hi = _window(size)
    variant = variant or (CONFIG["bwd_nhwc"] if nhwc else "flat")
    if variant == "tile" and nhwc:
        cp = triton.next_power_of_2(c)
        block_p = max(1, CONFIG["tile_elems"] // cp)
        pixels = n * h * w
        ntiles = triton.cdiv(pixels, block_p)
        nprog = min(ntiles, _num_sms(x.device) * CONFIG["tile_progs_per_sm"])
        scratch = torch.empty(nprog * block_p * cp, device=x.device, dtype=torch.float32)
        with device_guard(x):
            _lrn_bwd_tile[(nprog,)](x, g, dx, scratch, pixels, float(scale), float(beta), float(k),
                                    C=c, CP=cp, CG=cg, LO=lo, HI=hi, RELU=bool(relu),
                                    I64=numel + block_p * cp > _INT32_MAX, FAST=not interpreting(),
                                    BLOCK_P=block_p, num_warps=CONFIG["tile_warps"])
        return dx
    block = CONFIG["bwd_block"]
    grid = (triton.cdiv(numel, block),)
    with device_guard(x):
        _lrn_bwd_flat[grid](x, g, dx, numel, float(scale), float(beta), float(k),
                            C=cg, S=1 if nhwc else h * w, LO=lo, HI=hi, RELU=bool(relu),
                            I64=numel + (2 * size + 1) * (1 if nhwc else h * w) + block > _INT32_MAX,
                            FAST=not interpreting(), BLOCK=block, num_warps=CONFIG["bwd_warps"])
    return dx
