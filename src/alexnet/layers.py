"""The paper's layers that torch does not spell the same way.

Response normalisation (paper section 3.3) across channels:

    b[c] = a[c] / (k + scale * sum_{c' in window(c)} a[c']^2) ** beta

with a window of `size` channels centred on c (zero beyond the edges). The paper's text writes
`scale = alpha = 1e-4`; the 2012 code divides alpha by the window (`scale = 1e-4 / 5`).
`torch.nn.LocalResponseNorm(size, alpha, ...)` always divides its alpha by size, so the paper's
text is `LocalResponseNorm(5, alpha=5e-4)` there and the code is `LocalResponseNorm(5, alpha=1e-4)`.
Here `scale` is the coefficient that multiplies the sum, whatever convention produced it.

In the two-column network each GPU normalised its own maps: the window never crosses from one
column into the other. On one device the columns are channel groups, so the normalisation takes
`groups` and keeps each window inside its group.

These are the references: plain torch formulas, on any device. `alexnet.models.fast` holds the
faster forms of the same functions (Triton kernels, other convolution shapes), tested against them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: The paper's constants (section 3.3).
LRN_SIZE = 5
LRN_ALPHA = 1e-4
LRN_BETA = 0.75
LRN_K = 2.0


def lrn_scale(alpha: float, size: int, convention: str) -> float:
    """The coefficient of the sum of squares under a convention: 'paper' or 'cuda-convnet'."""
    if convention == "paper":
        return alpha
    if convention == "cuda-convnet":
        return alpha / size
    raise ValueError(f"unknown response-normalisation convention {convention!r}: paper, cuda-convnet")


def response_norm(x: torch.Tensor, size: int, scale: float, beta: float, k: float,
                  groups: int = 1) -> torch.Tensor:
    """Reference cross-channel response normalisation of an (N, C, H, W) tensor, the window kept
    inside each of `groups` equal channel groups (the columns)."""
    if groups > 1:
        chunks = x.chunk(groups, dim=1)
        return torch.cat([response_norm(c, size, scale, beta, k) for c in chunks], dim=1)
    # The window sum as `size` shifted slices of the zero-padded squares: the same numbers as
    # torch's local_response_norm (which averages with avg_pool3d) at a fraction of its CPU time.
    c = x.shape[1]
    sq = F.pad((x * x).unsqueeze(1), (0, 0, 0, 0, size // 2, (size - 1) // 2)).squeeze(1)
    window = sq[:, 0:c]
    for i in range(1, size):
        window = window + sq[:, i:i + c]
    return x / (k + scale * window).pow(beta)


def within_map_norm(x: torch.Tensor, size: int, scale: float, beta: float, k: float) -> torch.Tensor:
    """cuda-convnet's `rnorm` layer: normalise by the squares in a size x size patch of the same map.

    b = a / (k + scale * sum_patch a^2) ** beta, zeros outside the map. cuda-convnet divides its
    configured scale (0.001 for `cnorm2`) by size**2, the patch area, and uses k = 1 unless a
    `minDiv` is given; `scale` here is the coefficient after that division.
    """
    mean_sq = F.avg_pool2d(x * x, size, stride=1, padding=size // 2, count_include_pad=True)
    return x / (k + scale * size * size * mean_sq).pow(beta)


class ResponseNorm(nn.Module):
    """Cross-channel response normalisation; `scale` multiplies the sum of squares (see module doc).

    `relu=True` normalises relu(x): the paper's ReLU and the normalisation after it as one layer
    (the fast form in `alexnet.models.fast` fuses the two into one kernel with the same parameters).
    """

    def __init__(self, size: int = LRN_SIZE, scale: float = LRN_ALPHA, beta: float = LRN_BETA,
                 k: float = LRN_K, groups: int = 1, relu: bool = False):
        super().__init__()
        self.size, self.scale, self.beta, self.k, self.groups, self.relu = size, scale, beta, k, groups, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return response_norm(torch.relu(x) if self.relu else x, self.size, self.scale, self.beta, self.k,
                             self.groups)

    def extra_repr(self) -> str:
        return (f"size={self.size}, scale={self.scale:g}, beta={self.beta}, k={self.k}, groups={self.groups}"
                f"{', relu first' if self.relu else ''}")


class WithinMapNorm(nn.Module):
    """cuda-convnet's within-map (`rnorm`) normalisation, used after conv2 in the 2012 code."""

    def __init__(self, size: int = 5, scale: float = 1e-3 / 25, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        self.size, self.scale, self.beta, self.k = size, scale, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return within_map_norm(x, self.size, self.scale, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"size={self.size}, scale={self.scale:g}, beta={self.beta}, k={self.k}"


class OverhangConv2d(nn.Conv2d):
    """A convolution with cuda-convnet's window overhang: zeros padded on the right and bottom only,
    as many as the last window needs.

    cuda-convnet's output size is 1 + ceil((size - filter) / stride); the windows that run past the
    image see zeros. A 224 input to conv1 (11x11, stride 4) gives 55 outputs and pads 3.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Plain ints: an exported graph gets constant pads for its fixed input size.
        kh, kw = self.kernel_size
        pad_h = overhang(int(x.shape[-2]), kh, self.stride[0])
        pad_w = overhang(int(x.shape[-1]), kw, self.stride[1])
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return super().forward(x)


def overhang(size: int, kernel: int, stride: int) -> int:
    """Zeros cuda-convnet's ceil-mode output size implies past the right/bottom edge."""
    outputs = 1 + -(-(size - kernel) // stride)
    return (outputs - 1) * stride + kernel - size


def activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "tanh":
        return nn.Tanh()
    raise ValueError(f"unknown activation {name!r}: relu, tanh")


class LocallyConnected(nn.Module):
    """cuda-convnet's `type=local`: a convolution whose filters are not shared between positions.

    Output position (i, j) of filter f has its own weights w[i, j, f] over the `kernel` x `kernel`
    window of all input channels (of its group) at rows `i*stride - padding ...`, zeros outside the
    image; and its own bias b[f, i, j] (cuda-convnet keeps `modules * filters` biases). The output
    side is cuda-convnet's `1 + ceil((2*padding + size - kernel) / stride)`. `groups` splits the
    channels into independent runs as in `nn.Conv2d` (used here to compute several independent
    networks at once).

    weight: (positions, groups, in_channels/groups * kernel**2, out_channels/groups), the rows of
    one filter ordered channel, kernel row, kernel column (F.unfold's order and cuda-convnet's
    `filterChannels x filterPixels`); positions row-major. Initialised N(0, init_std) (cuda-convnet's
    `initW` is the standard deviation of a normal), biases 0 (`initB` defaults to 0).

    One gather of the windows and one batched matrix product per call: no loop over positions.
    """

    def __init__(self, in_channels: int, out_channels: int, in_size: int, kernel: int, padding: int = 0,
                 stride: int = 1, groups: int = 1, init_std: float = 0.01):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{in_channels} inputs and {out_channels} outputs do not split into {groups} groups")
        self.in_channels, self.out_channels, self.in_size = in_channels, out_channels, in_size
        self.kernel, self.padding, self.stride, self.groups = kernel, padding, stride, groups
        self.out_size = 1 + -(-(2 * padding + in_size - kernel) // stride)
        # The ceil may let the last window overhang the padded image: pad those zeros too.
        self.overhang = (self.out_size - 1) * stride + kernel - (in_size + 2 * padding)
        fan_in = in_channels // groups * kernel * kernel
        self.weight = nn.Parameter(torch.empty(self.out_size ** 2, groups, fan_in, out_channels // groups))
        self.bias = nn.Parameter(torch.empty(out_channels, self.out_size, self.out_size))
        self.init_std = init_std
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self.weight.normal_(0.0, self.init_std, generator=generator)
        self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, g, s, k, p = x.shape[0], self.groups, self.out_size, self.kernel, self.padding
        # The windows as a view (Tensor.unfold: no copy, and one kernel for its backward; F.unfold
        # launches one im2col per image on CUDA), made dense once in the (position, group) order.
        x = F.pad(x, (p, p + self.overhang, p, p + self.overhang))
        win = x.unfold(2, k, self.stride).unfold(3, k, self.stride)                   # (N, C, S, S, k, k)
        cols = win.reshape(n, g, -1, s, s, k, k).permute(3, 4, 1, 0, 2, 5, 6).reshape(s * s * g, n, -1)
        out = torch.bmm(cols, self.weight.reshape(s * s * g, -1, self.weight.shape[-1]))  # (L*G, N, Fg)
        out = out.view(s, s, g, n, -1).permute(3, 2, 4, 0, 1)                        # (N, G, Fg, S, S)
        # The bias in the product's dtype (as a convolution's under autocast): bf16 stays bf16.
        return out.reshape(n, self.out_channels, s, s) + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, in_size={self.in_size}, kernel={self.kernel}, "
                f"padding={self.padding}, stride={self.stride}, groups={self.groups}, out_size={self.out_size}")
