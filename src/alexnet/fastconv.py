"""Faster formulations of the 2012 network's layers: exactly the same functions, shapes that suit
GPUs better. Each has a reference it is tested against (tests/test_fastconv.py).

conv1 as space-to-depth
    conv1 is 11x11, stride 4, on 3 channels: a poor shape for tensor cores (3 input channels are
    padded to 8 or more, and the reduction is 363 long). Cut the (overhang-padded) image into 4x4
    blocks and stack each block's 4*4*3 = 48 values as channels: the image becomes 48 x 57 x 57,
    and the 11x11/4 kernel becomes a 3x3/1 kernel on those blocks (the 12th row and column of
    taps are zero). Output o reads input rows 4o .. 4o+10 = blocks o, o+1, o+2. Same products,
    plus multiplications by zero taps (432 vs 363 per output), on a dense 3x3 48-channel shape.

max-pooling (pool1, pool2)
    `max_pool` runs the Triton kernels of alexnet.kernels.max_pool through a custom operator: the
    forward keeps each window's argmax (int8), the backward gathers (compiled, torch's own
    backward recomputes every window's argmax from the input). Same function as F.max_pool2d.

grouped convolutions (conv2, conv4, conv5, two columns)
    "grouped": `groups=2` (the reference); "blockdiag": one dense convolution with a weight that
    is zero off the two diagonal blocks (twice the multiply-adds, one dense kernel; the zero
    blocks' gradients are computed and dropped); "split": the two columns as two convolutions on
    the channel halves, outputs concatenated.

ReLU + response normalisation
    `relu_response_norm` calls the fused Triton kernel (alexnet.kernels) through a torch custom
    operator, so torch.compile treats it as one opaque op with a registered backward instead of
    tracing into the Triton launch code; elsewhere (CPU, no Triton) it is the reference.

`DEFAULTS` is what `AlexNet2012(impl="auto")` uses on CUDA; the values were chosen by measurement
(docs/notes-speed.md). A model's `fast_options` attribute, when set, overrides them per model.
"""

import torch
import torch.nn.functional as F

try:  # the fused kernel needs Triton; where it does not import, the reference runs instead
    import triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False

__all__ = ["DEFAULTS", "CONV1_MODES", "GROUPED_MODES", "POOL_MODES", "space_to_depth_conv", "blockdiag_weight",
           "grouped_conv", "relu_response_norm", "max_pool", "parse_options"]

CONV1_MODES = ("direct", "s2d")
GROUPED_MODES = ("grouped", "blockdiag", "split")
POOL_MODES = ("torch", "triton")

#: The fast path's choices (chosen by measurement on an H100, docs/notes-speed.md).
DEFAULTS: dict[str, object] = {
    "conv1": "s2d",
    "conv2": "blockdiag",
    "conv4": "grouped",
    "conv5": "grouped",
    "relu_lrn": True,     # the ReLU before each response normalisation fused into its kernel
    "pool": "triton",     # pool1 and pool2: the Triton max-pool that keeps its argmax (alexnet.kernels.max_pool)
}


def parse_options(text: str | None) -> dict[str, object]:
    """'conv1=s2d,conv2=blockdiag,relu_lrn=0' -> a full options dict (DEFAULTS updated)."""
    out = dict(DEFAULTS)
    if not text:
        return out
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, _, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if key not in DEFAULTS:
            raise ValueError(f"unknown fast option {key!r}: {', '.join(DEFAULTS)}")
        if key == "relu_lrn":
            out[key] = value.lower() in ("1", "true", "on", "yes")
        elif key == "conv1":
            if value not in CONV1_MODES:
                raise ValueError(f"conv1 mode {value!r}: {', '.join(CONV1_MODES)}")
            out[key] = value
        elif key == "pool":
            if value not in POOL_MODES:
                raise ValueError(f"pool mode {value!r}: {', '.join(POOL_MODES)}")
            out[key] = value
        else:
            if value not in GROUPED_MODES:
                raise ValueError(f"{key} mode {value!r}: {', '.join(GROUPED_MODES)}")
            out[key] = value
    return out


# ------------------------------------------------------------------------------------------ conv1


def _outputs(size: int, kernel: int, stride: int) -> int:
    """cuda-convnet's output count: 1 + ceil((size - kernel) / stride) (the last window overhangs)."""
    return 1 + -(-(size - kernel) // stride)


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    dev = x.device.type
    try:
        if torch.is_autocast_enabled(dev):
            return torch.get_autocast_dtype(dev)
    except (TypeError, AttributeError, RuntimeError):  # older signatures: no device argument
        if dev == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
    return None


def space_to_depth_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        stride: int) -> torch.Tensor:
    """`conv2d(pad(x, overhang), weight, bias, stride)` with cuda-convnet's right/bottom overhang,
    computed as a stride-1 convolution over stride x stride blocks (see the module docstring).

    x (N, C, H, W) with H, W >= the kernel; weight (O, C, kh, kw). Returns (N, O, Ho, Wo) with
    Ho = 1 + ceil((H - kh) / stride), channels_last in memory.
    """
    n, c, h, w = x.shape
    o, ci, kh, kw = weight.shape
    s = int(stride)
    if ci != c:
        raise ValueError(f"weight expects {ci} input channels, the input has {c}")
    if h < kh or w < kw:
        raise ValueError(f"input {h}x{w} is smaller than the {kh}x{kw} kernel")
    bh, bw = -(-kh // s), -(-kw // s)                  # kernel extent in blocks
    ho, wo = _outputs(h, kh, s), _outputs(w, kw, s)
    hp, wp = s * (ho + bh - 1), s * (wo + bw - 1)      # padded input: whole blocks, >= the overhang
    if not torch.compiler.is_compiling():             # (compiled: the cast fuses into the rearrangement)
        dtype = _autocast_dtype(x)
        if dtype is not None and x.dtype != dtype:
            x = x.to(dtype)                           # rearrange 2-byte values, not 4-byte ones
    # (N, H, W, C) -> (N, Hb, s, Wb, s, C) -> (N, Hb, Wb, s, s, C) -> channels (dy, dx, c)
    xs = F.pad(x, (0, wp - w, 0, hp - h)).permute(0, 2, 3, 1)
    xs = xs.reshape(n, hp // s, s, wp // s, s, c).permute(0, 1, 3, 2, 4, 5)
    xs = xs.reshape(n, hp // s, wp // s, s * s * c).permute(0, 3, 1, 2)   # NCHW view, NHWC memory
    # weight (O, C, bh*s, bw*s) -> (O, C, bh, s, bw, s) -> (O, s, s, C, bh, bw): the same channel order
    wpad = F.pad(weight, (0, bw * s - kw, 0, bh * s - kh))
    ws = wpad.reshape(o, c, bh, s, bw, s).permute(0, 3, 5, 1, 2, 4).reshape(o, s * s * c, bh, bw)
    return F.conv2d(xs, ws, bias)


# ---------------------------------------------------------------------------------- grouped convs


def blockdiag_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """(O, I/g, kh, kw) grouped weight -> (O, I, kh, kw) dense weight, zero off the diagonal blocks."""
    if groups == 1:
        return weight
    o, ig = weight.shape[:2]
    og = o // groups
    blocks = [F.pad(weight[i * og:(i + 1) * og], (0, 0, 0, 0, i * ig, (groups - 1 - i) * ig))
              for i in range(groups)]
    return torch.cat(blocks, 0)


def grouped_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int,
                 groups: int, mode: str = "grouped") -> torch.Tensor:
    """`conv2d(x, weight, bias, padding=padding, groups=groups)` (stride 1) in one of GROUPED_MODES."""
    if groups == 1 or mode == "grouped":
        return F.conv2d(x, weight, bias, padding=padding, groups=groups)
    if mode == "blockdiag":
        return F.conv2d(x, blockdiag_weight(weight, groups), bias, padding=padding)
    if mode == "split":
        xs, ws = x.chunk(groups, 1), weight.chunk(groups, 0)
        bs = bias.chunk(groups, 0) if bias is not None else [None] * groups
        fmt = torch.channels_last if (x.is_contiguous(memory_format=torch.channels_last)
                                      and not x.is_contiguous()) else torch.contiguous_format
        outs = [F.conv2d(xi.contiguous(memory_format=fmt), wi, bi, padding=padding)
                for xi, wi, bi in zip(xs, ws, bs)]
        return torch.cat(outs, 1)
    raise ValueError(f"unknown grouped-convolution mode {mode!r}: {', '.join(GROUPED_MODES)}")


# ------------------------------------------------------------------------- ReLU + normalisation


def _kernels():
    """alexnet.kernels.response_norm, or None where Triton does not import."""
    if not HAVE_TRITON:
        return None
    try:
        from alexnet.kernels import response_norm as rn
    except ImportError:
        return None
    return rn


@torch.library.custom_op("alexnet::relu_lrn", mutates_args=())
def _relu_lrn_op(x: torch.Tensor, size: int, scale: float, beta: float, k: float, relu: bool,
                 groups: int) -> torch.Tensor:
    rn = _kernels()
    if rn is None or not x.is_cuda:
        from alexnet.layers import response_norm

        return response_norm(torch.relu(x) if relu else x, size, scale, beta, k, groups).contiguous(
            memory_format=_fmt(x))
    return rn.lrn_forward(x, size, scale, beta, k, relu, groups)


@_relu_lrn_op.register_fake
def _(x, size, scale, beta, k, relu, groups):
    return torch.empty_like(x)


@torch.library.custom_op("alexnet::relu_lrn_backward", mutates_args=())
def _relu_lrn_backward_op(x: torch.Tensor, g: torch.Tensor, size: int, scale: float, beta: float,
                          k: float, relu: bool, groups: int) -> torch.Tensor:
    rn = _kernels()
    if rn is None or not x.is_cuda:
        return _reference_backward(x, g, size, scale, beta, k, relu, groups).contiguous(memory_format=_fmt(x))
    return rn.lrn_backward(x, g, size, scale, beta, k, relu, groups)


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


def _reference_backward(x, g, size, scale, beta, k, relu, groups):
    """The gradient of response_norm(relu(x)) in torch ops (the kernel's formula, module docstring of
    alexnet.kernels.response_norm): da = g d^-b - 2 s b a * sum_{c': c in window(c')} g a d^(-b-1)."""
    lo, hi = size // 2, (size - 1) // 2
    a = torch.relu(x) if relu else x
    g = g.to(a.dtype)
    d = k + scale * _window_sum(a * a, lo, hi, groups)
    t = _window_sum(g * a * d.pow(-beta - 1), hi, lo, groups)
    da = g * d.pow(-beta) - 2 * scale * beta * a * t
    return da * (x > 0) if relu else da


@_relu_lrn_backward_op.register_fake
def _(x, g, size, scale, beta, k, relu, groups):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    x, *params = inputs
    ctx.save_for_backward(x)
    ctx.params = params


def _backward(ctx, g):
    (x,) = ctx.saved_tensors
    dx = _relu_lrn_backward_op(x, g, *ctx.params)
    return (dx,) + (None,) * len(ctx.params)


_relu_lrn_op.register_autograd(_backward, setup_context=_setup_context)


def _fmt(x: torch.Tensor) -> torch.memory_format:
    if x.is_contiguous():
        return torch.contiguous_format
    return torch.channels_last


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x dense in NCHW or NHWC (the kernel's two layouts): the closer one, as the kernel picks it."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    sn, sc, sh, sw = x.stride()
    if sc == 1 or sc < min(sh, sw):
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


def relu_response_norm(x: torch.Tensor, size: int, scale: float, beta: float, k: float,
                       groups: int = 1, relu: bool = True) -> torch.Tensor:
    """response_norm(relu(x) if relu else x, ...) (alexnet.layers), through the fused kernel on
    CUDA as one custom operator that torch.compile does not trace into."""
    if x.is_cuda and HAVE_TRITON and x.dim() == 4 and x.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return _relu_lrn_op(_dense(x), int(size), float(scale), float(beta), float(k), bool(relu), int(groups))
    from alexnet.layers import response_norm

    return response_norm(torch.relu(x) if relu else x, size, scale, beta, k, groups)


# ------------------------------------------------------------------------------------ max-pool


def _pool_kernels():
    if not HAVE_TRITON:
        return None
    try:
        from alexnet.kernels import max_pool as mp
    except ImportError:
        return None
    return mp


def _window_argmax(flat_idx: torch.Tensor, w: int, kernel: int, stride: int) -> torch.Tensor:
    """torch's flat (h * W + w) argmax of each window -> its position in the window, i * K + j."""
    oh, ow = flat_idx.shape[-2:]
    rows = torch.arange(oh, device=flat_idx.device).view(-1, 1) * stride
    cols = torch.arange(ow, device=flat_idx.device).view(1, -1) * stride
    return ((flat_idx // w - rows) * kernel + (flat_idx % w - cols)).to(torch.int8)


@torch.library.custom_op("alexnet::max_pool", mutates_args=())
def _max_pool_op(x: torch.Tensor, kernel: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    mp = _pool_kernels()
    if mp is None or not x.is_cuda:
        y, flat = F.max_pool2d(x, kernel, stride, return_indices=True)
        return _channels_last_copy(y), _channels_last_copy(_window_argmax(flat, x.shape[-1], kernel, stride))
    return mp.pool_forward(x, kernel, stride)


def _channels_last_copy(t: torch.Tensor) -> torch.Tensor:
    """t with exactly the strides torch.empty(..., memory_format=channels_last) gives."""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=torch.channels_last).copy_(t)


@_max_pool_op.register_fake
def _(x, kernel, stride):
    n, c, h, w = x.shape
    oh, ow = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    y = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    return y, torch.empty((n, c, oh, ow), dtype=torch.int8, device=x.device, memory_format=torch.channels_last)


@torch.library.custom_op("alexnet::max_pool_backward", mutates_args=())
def _max_pool_backward_op(g: torch.Tensor, idx: torch.Tensor, h: int, w: int, kernel: int,
                          stride: int) -> torch.Tensor:
    mp = _pool_kernels()
    if mp is None or not g.is_cuda:
        n, c, oh, ow = g.shape
        dx = g.new_zeros((n, c, h, w))
        for i in range(kernel):
            for j in range(kernel):
                hit = (idx == i * kernel + j).to(g.dtype)
                dx[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride] += g * hit
        return _channels_last_copy(dx)
    return mp.pool_backward(g, idx, h, w, kernel, stride)


@_max_pool_backward_op.register_fake
def _(g, idx, h, w, kernel, stride):
    n, c = g.shape[:2]
    return torch.empty((n, c, h, w), dtype=g.dtype, device=g.device, memory_format=torch.channels_last)


def _pool_setup(ctx, inputs, output):
    x, kernel, stride = inputs
    ctx.save_for_backward(output[1])
    ctx.geometry = (x.shape[-2], x.shape[-1], kernel, stride)


def _pool_backward(ctx, gy, gidx):
    (idx,) = ctx.saved_tensors
    return _max_pool_backward_op(gy, idx, *ctx.geometry), None, None


_max_pool_op.register_autograd(_pool_backward, setup_context=_pool_setup)


def max_pool(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """F.max_pool2d(x, kernel, stride) (no padding, floor mode); on CUDA for channels_last input,
    the Triton kernels as one custom operator (see the module docstring)."""
    if (x.is_cuda and HAVE_TRITON and x.dim() == 4 and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
            and x.is_contiguous(memory_format=torch.channels_last)):
        return _max_pool_op(x, int(kernel), int(stride))[0]
    return F.max_pool2d(x, kernel, stride)
