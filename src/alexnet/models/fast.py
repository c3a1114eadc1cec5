"""Faster forms of the paper's layers: the same functions, the same parameter names and shapes (so a
checkpoint loads into either form), shapes that suit GPUs better. Chosen when a model is built
(`choices`), never in `forward`; each is tested against its reference in `alexnet.layers` / torch.

conv1 as space-to-depth (`SpaceToDepthConv2d`)
    conv1 is 11x11, stride 4, on 3 channels: a poor shape for tensor cores (3 input channels are
    padded to 8 or more, and the reduction is 363 long). Cut the (overhang-padded) image into 4x4
    blocks and stack each block's 4*4*3 = 48 values as channels: the image becomes 48 x 57 x 57 and
    the 11x11/4 kernel a 3x3/1 kernel on those blocks (its 12th row and column of taps are zero).
    Output o reads input rows 4o .. 4o+10 = blocks o, o+1, o+2. Same products, plus multiplications
    by zero taps (432 vs 363 per output), on a dense 3x3 48-channel shape.

grouped convolutions (conv2, conv4, conv5 of the whole network)
    "grouped": `groups=2` (the reference); "blockdiag" (`BlockDiagonalConv2d`): one dense
    convolution with a weight that is zero off the two diagonal blocks (twice the multiply-adds,
    one dense kernel; the zero blocks' gradients are computed and dropped); "split"
    (`SplitConv2d`): the two columns as two convolutions, outputs concatenated.

ReLU + response normalisation (`FusedResponseNorm`)
    the Triton kernel of `alexnet.kernels.ops`, the ReLU fused into it (its output never written).

max-pooling (`TritonMaxPool2d`)
    Triton kernels that keep each window's argmax (int8) so the backward gathers instead of
    recomputing every window (`alexnet.kernels.max_pool`).

`DEFAULTS` were chosen by measurement (docs/notes-speed.md); a model's `fast` option string
("conv2=grouped,pool=torch") overrides them and is saved in its config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.errors import ConfigError
from alexnet.kernels import ops
from alexnet.layers import OverhangConv2d, ResponseNorm, activation

__all__ = ["DEFAULTS", "CONV1_MODES", "GROUPED_MODES", "POOL_MODES", "parse_choices", "format_choices",
           "SpaceToDepthConv2d", "BlockDiagonalConv2d", "SplitConv2d", "FusedResponseNorm", "TritonMaxPool2d",
           "space_to_depth_conv", "blockdiag_weight", "conv_layer", "norm_layer", "pool_layer"]

CONV1_MODES = ("direct", "s2d")
GROUPED_MODES = ("grouped", "blockdiag", "split")
POOL_MODES = ("torch", "triton")
DEFAULTS: dict[str, object] = {"conv1": "s2d", "conv2": "blockdiag", "conv4": "grouped", "conv5": "grouped",
                               "relu_lrn": True, "pool": "triton"}
_MODES = {"conv1": CONV1_MODES, "conv2": GROUPED_MODES, "conv4": GROUPED_MODES, "conv5": GROUPED_MODES,
          "pool": POOL_MODES}


def parse_choices(text: str | None) -> dict[str, object]:
    """'conv1=s2d,conv2=blockdiag,relu_lrn=0' -> the full choices (DEFAULTS updated)."""
    out = dict(DEFAULTS)
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, _, value = (s.strip() for s in part.partition("="))
        if key not in DEFAULTS:
            raise ConfigError(f"unknown fast option {key!r}: {', '.join(DEFAULTS)}")
        if key == "relu_lrn":
            if value.lower() not in ("1", "0", "true", "false", "on", "off", "yes", "no"):
                raise ConfigError(f"relu_lrn={value!r}: 1 or 0")
            out[key] = value.lower() in ("1", "true", "on", "yes")
        elif value not in _MODES[key]:
            raise ConfigError(f"{key} mode {value!r}: {', '.join(_MODES[key])}")
        else:
            out[key] = value
    return out


def format_choices(choices: dict[str, object]) -> str:
    """The canonical text of a full set of choices (what a model's config records)."""
    return ",".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in choices.items())


# ------------------------------------------------------------------------------------------ conv1


def _outputs(size: int, kernel: int, stride: int) -> int:
    """cuda-convnet's output count: 1 + ceil((size - kernel) / stride) (the last window overhangs)."""
    return 1 + -(-(size - kernel) // stride)


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None


def space_to_depth_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        stride: int) -> torch.Tensor:
    """`conv2d(pad(x, overhang), weight, bias, stride)` with cuda-convnet's right/bottom overhang,
    computed as a stride-1 convolution over stride x stride blocks (module docstring).

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


class SpaceToDepthConv2d(OverhangConv2d):
    """OverhangConv2d computed as a space-to-depth 3x3 convolution (stride 1, same parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return space_to_depth_conv(x, self.weight, self.bias, self.stride[0])


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


class BlockDiagonalConv2d(nn.Conv2d):
    """A grouped convolution computed as one dense convolution with a block-diagonal weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, blockdiag_weight(self.weight, self.groups), self.bias, self.stride, self.padding)


class SplitConv2d(nn.Conv2d):
    """A grouped convolution computed as one convolution per group, outputs concatenated."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.groups
        bs = self.bias.chunk(g, 0) if self.bias is not None else [None] * g
        fmt = torch.channels_last if (x.is_contiguous(memory_format=torch.channels_last)
                                      and not x.is_contiguous()) else torch.contiguous_format
        outs = [F.conv2d(xi.contiguous(memory_format=fmt), wi, bi, self.stride, self.padding)
                for xi, wi, bi in zip(x.chunk(g, 1), self.weight.chunk(g, 0), bs)]
        return torch.cat(outs, 1)


# ------------------------------------------------------------------ normalisation and pooling


class FusedResponseNorm(ResponseNorm):
    """ResponseNorm through the Triton kernel (the ReLU fused into it when relu=True)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.relu_response_norm(x, self.size, self.scale, self.beta, self.k, self.groups, relu=self.relu)


class TritonMaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d (no padding, floor mode) through the argmax-keeping Triton kernels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.max_pool(x, self.kernel_size, self.stride)


# ------------------------------------------------------------------- choosing, at build time


def conv_layer(name: str, inputs: int, outputs: int, size: int, stride: int, pad: int | str, groups: int,
               choices: dict | None) -> nn.Conv2d:
    """A convolution of the paper's net in the form `choices` (None: the reference) asks for.
    pad="overhang": cuda-convnet's right/bottom overhang (conv1)."""
    if pad == "overhang":
        fast = choices is not None and choices["conv1"] == "s2d"
        return (SpaceToDepthConv2d if fast else OverhangConv2d)(inputs, outputs, size, stride=stride)
    mode = choices.get(name, "grouped") if choices is not None and groups > 1 else "grouped"
    kind = {"grouped": nn.Conv2d, "blockdiag": BlockDiagonalConv2d, "split": SplitConv2d}[mode]
    return kind(inputs, outputs, size, stride=stride, padding=pad, groups=groups)


def norm_layer(act: str | None, size: int, scale: float, beta: float, k: float, groups: int,
               choices: dict | None) -> nn.Module:
    """act (relu | tanh | None) followed by response normalisation, in one module where it can be."""
    fused = choices is not None
    norm = FusedResponseNorm if fused else ResponseNorm
    if act == "relu" and (not fused or choices["relu_lrn"]):
        return norm(size, scale, beta, k, groups, relu=True)
    layer = norm(size, scale, beta, k, groups, relu=False)
    return layer if act is None else nn.Sequential(activation(act), layer)


def pool_layer(kernel: int, stride: int, choices: dict | None) -> nn.MaxPool2d:
    fast = choices is not None and choices["pool"] == "triton"
    return (TritonMaxPool2d if fast else nn.MaxPool2d)(kernel, stride)
