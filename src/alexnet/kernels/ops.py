"""The Triton kernels as torch operators: one custom op per kernel with its backward registered, so
autograd and torch.compile treat each as a single opaque operation (compile does not trace into the
launch code). Where a kernel cannot run (no Triton, a CPU tensor, float64), the reference formula of
`alexnet.layers` computes the same function.

* `relu_response_norm(x, ...)`: response_norm(relu(x)) (or of x, relu=False) with the window kept
  inside each of `groups` channel groups; the ReLU output is never written.
* `max_pool(x, kernel, stride)`: F.max_pool2d without padding; the forward keeps each window's
  argmax (int8), the backward gathers from it instead of recomputing every window.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from alexnet.kernels import HAVE_TRITON
from alexnet.layers import response_norm

__all__ = ["relu_response_norm", "max_pool", "reference_response_norm_backward", "on_kernel_device"]

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: Under Triton's interpreter (TRITON_INTERPRET=1 when the kernels are imported; the test suite does
#: this in a child process) the kernels also run on CPU tensors.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def on_kernel_device(x: torch.Tensor) -> bool:
    """Whether a Triton kernel can run on ``x``'s device: CUDA, or the CPU under Triton's interpreter."""
    return HAVE_TRITON and (x.is_cuda or (INTERPRET and x.device.type == "cpu"))


def _on_kernel(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.dtype in _KERNEL_DTYPES and on_kernel_device(x)


def _fmt(x: torch.Tensor) -> torch.memory_format:
    return torch.contiguous_format if x.is_contiguous() else torch.channels_last


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x dense in NCHW or NHWC (the kernel's two layouts): the closer one."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    sn, sc, sh, sw = x.stride()
    if sc == 1 or sc < min(sh, sw):
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


# ------------------------------------------------------------------------- ReLU + normalisation


@torch.library.custom_op("alexnet::relu_lrn", mutates_args=())
def _relu_lrn(x: torch.Tensor, size: int, scale: float, beta: float, k: float, relu: bool,
              groups: int) -> torch.Tensor:
    if not _on_kernel(x):
        y = response_norm(torch.relu(x) if relu else x, size, scale, beta, k, groups)
        return y.contiguous(memory_format=_fmt(x))
    from alexnet.kernels import response_norm as kernel

    return kernel.lrn_forward(x, size, scale, beta, k, relu, groups)


@_relu_lrn.register_fake
def _(x, size, scale, beta, k, relu, groups):
    return torch.empty_like(x)


@torch.library.custom_op("alexnet::relu_lrn_backward", mutates_args=())
def _relu_lrn_backward(x: torch.Tensor, g: torch.Tensor, size: int, scale: float, beta: float,
                       k: float, relu: bool, groups: int) -> torch.Tensor:
    if not _on_kernel(x):
        dx = reference_response_norm_backward(x, g, size, scale, beta, k, relu, groups)
        return dx.contiguous(memory_format=_fmt(x))
    from alexnet.kernels import response_norm as kernel

    return kernel.lrn_backward(x, g, size, scale, beta, k, relu, groups)


@_relu_lrn_backward.register_fake
def _(x, g, size, scale, beta, k, relu, groups):
    return torch.empty_like(x)


def _window_sum(t: torch.Tensor, before: int, after: int, groups: int) -> torch.Tensor:
    """sum over c' in [c - before, c + after] of t[c'], zero beyond the edges of each channel group."""
    parts = []
    for part in (t.chunk(groups, 1) if groups > 1 else (t,)):
        c = part.shape[1]
        padded = F.pad(part.unsqueeze(1), (0, 0, 0, 0, before, after)).squeeze(1)
        acc = padded[:, 0:c]
        for i in range(1, before + after + 1):
            acc = acc + padded[:, i:i + c]
        parts.append(acc)
    return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


def reference_response_norm_backward(x, g, size, scale, beta, k, relu, groups):
    """The gradient of response_norm(relu(x)) in torch ops, the kernel's formula (module docstring of
    alexnet.kernels.response_norm): da = g d^-b - 2 s b a * sum_{c': c in window(c')} g a d^(-b-1)."""
    lo, hi = size // 2, (size - 1) // 2
    a = torch.relu(x) if relu else x
    g = g.to(a.dtype)
    d = k + scale * _window_sum(a * a, lo, hi, groups)
    t = _window_sum(g * a * d.pow(-beta - 1), hi, lo, groups)
    da = g * d.pow(-beta) - 2 * scale * beta * a * t
    return da * (x > 0) if relu else da


def _lrn_setup(ctx, inputs, output):
    x, *params = inputs
    ctx.save_for_backward(x)        # only the input: the denominator is recomputed in the backward
    ctx.params = params


def _lrn_backward(ctx, g):
    (x,) = ctx.saved_tensors
    return (_relu_lrn_backward(x, g, *ctx.params),) + (None,) * len(ctx.params)


_relu_lrn.register_autograd(_lrn_backward, setup_context=_lrn_setup)


def relu_response_norm(x: torch.Tensor, size: int, scale: float, beta: float, k: float,
                       groups: int = 1, relu: bool = True) -> torch.Tensor:
    """response_norm(relu(x) if relu else x, ...) of alexnet.layers; on CUDA the fused Triton kernel
    (the output keeps x's dtype and dense layout, so under autocast it stays bf16)."""
    if x.dim() == 4 and x.shape[1] % groups:
        raise ValueError(f"{x.shape[1]} channels do not split into {groups} equal groups")
    if _on_kernel(x):
        return _relu_lrn(_dense(x), int(size), float(scale), float(beta), float(k), bool(relu), int(groups))
    return response_norm(torch.relu(x) if relu else x, size, scale, beta, k, groups)


# ------------------------------------------------------------------------------------ max-pool


def _window_argmax(flat_idx: torch.Tensor, w: int, kernel: int, stride: int) -> torch.Tensor:
    """torch's flat (h * W + w) argmax of each window -> its position in the window, i * K + j."""
    oh, ow = flat_idx.shape[-2:]
    rows = torch.arange(oh, device=flat_idx.device).view(-1, 1) * stride
    cols = torch.arange(ow, device=flat_idx.device).view(1, -1) * stride
    return ((flat_idx // w - rows) * kernel + (flat_idx % w - cols)).to(torch.int8)


def _channels_last_copy(t: torch.Tensor) -> torch.Tensor:
    """t with exactly the strides torch.empty(..., memory_format=channels_last) gives."""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=torch.channels_last).copy_(t)


@torch.library.custom_op("alexnet::max_pool", mutates_args=())
def _max_pool(x: torch.Tensor, kernel: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not _on_kernel(x):
        y, flat = F.max_pool2d(x, kernel, stride, return_indices=True)
        return _channels_last_copy(y), _channels_last_copy(_window_argmax(flat, x.shape[-1], kernel, stride))
    from alexnet.kernels import max_pool as kernel_mod

    return kernel_mod.pool_forward(x, kernel, stride)


@_max_pool.register_fake
def _(x, kernel, stride):
    n, c, h, w = x.shape
    oh, ow = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    y = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    return y, torch.empty((n, c, oh, ow), dtype=torch.int8, device=x.device, memory_format=torch.channels_last)


@torch.library.custom_op("alexnet::max_pool_backward", mutates_args=())
def _max_pool_backward(g: torch.Tensor, idx: torch.Tensor, h: int, w: int, kernel: int,
                       stride: int) -> torch.Tensor:
    if not _on_kernel(g):
        n, c, oh, ow = g.shape
        dx = g.new_zeros((n, c, h, w))
        for i in range(kernel):
            for j in range(kernel):
                hit = (idx == i * kernel + j).to(g.dtype)
                dx[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride] += g * hit
        return _channels_last_copy(dx)
    from alexnet.kernels import max_pool as kernel_mod

    return kernel_mod.pool_backward(g, idx, h, w, kernel, stride)


@_max_pool_backward.register_fake
def _(g, idx, h, w, kernel, stride):
    n, c = g.shape[:2]
    return torch.empty((n, c, h, w), dtype=g.dtype, device=g.device, memory_format=torch.channels_last)


def _pool_setup(ctx, inputs, output):
    x, kernel, stride = inputs
    ctx.save_for_backward(output[1])
    ctx.geometry = (x.shape[-2], x.shape[-1], kernel, stride)


def _pool_backward(ctx, gy, gidx):
    (idx,) = ctx.saved_tensors
    return _max_pool_backward(gy, idx, *ctx.geometry), None, None


_max_pool.register_autograd(_pool_backward, setup_context=_pool_setup)


def max_pool(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """F.max_pool2d(x, kernel, stride) (no padding, floor mode); on CUDA for channels_last input the
    Triton kernels, which keep the argmax."""
    if _on_kernel(x) and x.is_contiguous(memory_format=torch.channels_last):
        return _max_pool(x, int(kernel), int(stride))[0]
    return F.max_pool2d(x, kernel, stride)
