"""The 2012 network: two columns, five convolutional and three fully connected layers.

Layer by layer, for a 224x224 input (per column in brackets; PAPER.md, Architecture):

    conv1  96 (48+48)  11x11x3 stride 4, cuda-convnet overhang -> 96x55x55   ReLU, LRN, pool -> 27x27
    conv2 256 (128+128) 5x5x48 pad 2, own column            -> 256x27x27   ReLU, LRN, pool -> 13x13
    conv3 384 (192+192) 3x3x256 pad 1, both columns          -> 384x13x13   ReLU
    conv4 384 (192+192) 3x3x192 pad 1, own column            -> 384x13x13   ReLU
    conv5 256 (128+128) 3x3x192 pad 1, own column            -> 256x13x13   ReLU, pool -> 6x6
    fc6  4096 (2048+2048) from 9216, both columns                           ReLU, dropout
    fc7  4096 (2048+2048) from 4096, both columns                           ReLU, dropout
    fc8  1000 from 4096                                                     softmax (in the loss)

`impl` picks how the same function is computed: "auto" (default) runs the fast formulations of
`alexnet.fastconv` on CUDA (conv1 as a space-to-depth 3x3 convolution, the ReLU fused into the
response-normalisation kernel, pool1/pool2 through a Triton max-pool that keeps its argmax, the
grouped layers as measured fastest) and the plain layers
elsewhere; "reference" always runs the plain layers; "fast" forces the fast ones (tests).

On one device the columns are grouped convolutions (`groups=2` in conv2, conv4, conv5): output
channels [0, C/2) are the first column, [C/2, C) the second. conv1 and conv3 and the FC layers see
both columns; conv1's two halves read the same image. 60,965,224 parameters, 724,406,816
multiply-adds per image.

`columns=1` is the paper's one-GPU comparison: half the kernels in conv1-conv4 and one column, but
all 256 kernels in conv5 and full-size FC layers (its footnote): 59,798,312 parameters.

Two recipes (PAPER.md, "Two recipes"): `paper` is the text; `cuda-convnet` is the 2012 code
(LRN alpha divided by n and applied before the ReLU in conv1, an extra within-map normalisation
after conv2, init std 0.03 for conv3-5, biases at twice the learning rate without decay).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from alexnet import fastconv
from alexnet.errors import ConfigError
from alexnet.layers import (LRN_ALPHA, LRN_BETA, LRN_K, LRN_SIZE, Overhang, ResponseNorm,
                            WithinMapNorm, activation, lrn_scale)

RECIPES = ("paper", "cuda-convnet")
#: auto: the fast formulations (alexnet.fastconv) on CUDA, the plain layers elsewhere;
#: fast: the fast formulations on any device (tests); reference: always the plain layers.
IMPLS = ("auto", "fast", "reference")
POOLING = {"overlapping": (3, 2), "non-overlapping": (2, 2)}


@dataclass(frozen=True)
class AlexNet2012Config:
    num_classes: int = 1000
    recipe: str = "paper"            # paper | cuda-convnet
    activation: str = "relu"         # relu | tanh (Figure 1's comparison, on the big net)
    response_norm: bool = True       # section 3.3; off for the ablation
    pooling: str = "overlapping"     # overlapping (3/2) | non-overlapping (2/2), section 3.4
    dropout: float = 0.5             # fc6 and fc7, section 4.2
    columns: int = 2                 # 2: the paper's net; 1: its one-GPU comparison
    unit_bias: float = 1.0           # the bias of conv2/4/5 and fc6/7 (Caffe later used 0.1)
    impl: str = "auto"               # auto: the fast formulations on CUDA (alexnet.fastconv); reference: plain

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {self.recipe!r}: {', '.join(RECIPES)}")
        if self.activation not in ("relu", "tanh"):
            raise ConfigError(f"unknown activation {self.activation!r}: relu, tanh")
        if self.pooling not in POOLING:
            raise ConfigError(f"unknown pooling {self.pooling!r}: {', '.join(POOLING)}")
        if self.columns not in (1, 2):
            raise ConfigError(f"columns must be 1 or 2, not {self.columns}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), not {self.dropout}")
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be positive, not {self.num_classes}")
        if self.impl not in IMPLS:
            raise ConfigError(f"unknown impl {self.impl!r}: {', '.join(IMPLS)}")


class AlexNet2012(nn.Module):
    """The paper's network. `forward` takes mean-subtracted images, (N, 3, 224, 224) or 227."""

    def __init__(self, config: AlexNet2012Config | None = None, **options):
        super().__init__()
        cfg = config or AlexNet2012Config(**options)
        self.config = cfg
        g = cfg.columns  # groups in the column-private layers
        # Kernels per layer: one column halves conv1-conv4 but keeps conv5 and the FC layers whole.
        c1, c2, c3, c4 = (96, 256, 384, 384) if g == 2 else (48, 128, 192, 192)
        c5 = 256
        code = cfg.recipe == "cuda-convnet"
        scale = lrn_scale(LRN_ALPHA, LRN_SIZE, "cuda-convnet" if code else "paper")
        pool_k, pool_s = POOLING[cfg.pooling]

        def norm():
            return ResponseNorm(LRN_SIZE, scale, LRN_BETA, LRN_K, groups=g) if cfg.response_norm else nn.Identity()

        self.pad1 = Overhang(11, 4)
        self.conv1 = nn.Conv2d(3, c1, 11, stride=4)                       # 55x55
        self.act1 = activation(cfg.activation)
        self.norm1 = norm()
        self.pool1 = nn.MaxPool2d(pool_k, pool_s)                          # 27x27
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2, groups=g)             # 27x27
        self.act2 = activation(cfg.activation)
        self.norm2 = norm()
        # The 2012 code adds a within-map normalisation after conv2 (layers-145 `cnorm2`).
        self.mapnorm2 = WithinMapNorm(5, 1e-3 / 25, 0.75, 1.0) if code and cfg.response_norm else nn.Identity()
        self.pool2 = nn.MaxPool2d(pool_k, pool_s)                          # 13x13
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)                       # 13x13, both columns
        self.act3 = activation(cfg.activation)
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1, groups=g)             # 13x13
        self.act4 = activation(cfg.activation)
        self.conv5 = nn.Conv2d(c4, c5, 3, padding=1, groups=g)             # 13x13
        self.act5 = activation(cfg.activation)
        self.pool5 = nn.MaxPool2d(pool_k, pool_s)                          # 6x6
        self.fc6 = nn.Linear(c5 * 6 * 6, 4096)
        self.act6 = activation(cfg.activation)
        self.drop6 = nn.Dropout(cfg.dropout)
        self.fc7 = nn.Linear(4096, 4096)
        self.act7 = activation(cfg.activation)
        self.drop7 = nn.Dropout(cfg.dropout)
        self.fc8 = nn.Linear(4096, cfg.num_classes)
        self.reset_parameters()

    #: Per-model override of alexnet.fastconv.DEFAULTS (not saved: it changes no number computed).
    fast_options: dict | None = None

    def _fast(self, x: torch.Tensor) -> dict | None:
        """The fast formulations' options for this input, or None for the plain layers."""
        impl = self.config.impl
        if impl == "reference" or (impl == "auto" and not x.is_cuda):
            return None
        return self.fast_options if self.fast_options is not None else fastconv.DEFAULTS

    def _act_norm(self, act: nn.Module, norm: nn.Module, x: torch.Tensor, fast: dict | None) -> torch.Tensor:
        """norm(act(x)); on the fast path the ReLU is fused into the normalisation kernel."""
        if fast is None or not isinstance(norm, ResponseNorm) or norm.impl != "auto":
            return norm(act(x))
        fuse = bool(fast.get("relu_lrn", True)) and self.config.activation == "relu"
        if not fuse:
            x = act(x)
        return fastconv.relu_response_norm(x, norm.size, norm.scale, norm.beta, norm.k, norm.groups, relu=fuse)

    def _grouped(self, layer: nn.Conv2d, x: torch.Tensor, fast: dict | None, name: str) -> torch.Tensor:
        if fast is None or layer.groups == 1:
            return layer(x)
        return fastconv.grouped_conv(x, layer.weight, layer.bias, layer.padding[0], layer.groups,
                                     fast.get(name, "grouped"))

    def _pool(self, pool: nn.MaxPool2d, x: torch.Tensor, fast: dict | None) -> torch.Tensor:
        if fast is None or fast.get("pool", "torch") != "triton":
            return pool(x)
        return fastconv.max_pool(x, pool.kernel_size, pool.stride)

    # The 2012 code's conv1 order: conv, LRN, pool, ReLU (LRN sees pre-ReLU values).
    def _stage1(self, x: torch.Tensor, fast: dict | None = None) -> torch.Tensor:
        if fast is not None and fast.get("conv1") == "s2d":
            x = fastconv.space_to_depth_conv(x, self.conv1.weight, self.conv1.bias, self.conv1.stride[0])
        else:
            x = self.conv1(self.pad1(x))
        if self.config.recipe == "cuda-convnet":
            if fast is not None and isinstance(self.norm1, ResponseNorm) and self.norm1.impl == "auto":
                n = self.norm1
                x = fastconv.relu_response_norm(x, n.size, n.scale, n.beta, n.k, n.groups, relu=False)
                return self.act1(self._pool(self.pool1, x, fast))
            return self.act1(self._pool(self.pool1, self.norm1(x), fast))
        return self._pool(self.pool1, self._act_norm(self.act1, self.norm1, x, fast), fast)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The convolutional part: (N, 3, 224, 224) -> (N, 256, 6, 6)."""
        fast = self._fast(x)
        x = self._stage1(x, fast)                                          # (N, 96, 27, 27)
        x = self._grouped(self.conv2, x, fast, "conv2")
        x = self._pool(self.pool2, self.mapnorm2(self._act_norm(self.act2, self.norm2, x, fast)), fast)  # 13x13
        x = self.act3(self.conv3(x))                                       # (N, 384, 13, 13)
        x = self.act4(self._grouped(self.conv4, x, fast, "conv4"))         # (N, 384, 13, 13)
        return self.pool5(self.act5(self._grouped(self.conv5, x, fast, "conv5")))  # (N, 256, 6, 6)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer (fc7 after ReLU, before dropout): Figure 4's 4096-d code."""
        x = torch.flatten(self.features(x), 1)                             # (N, 9216)
        x = self.drop6(self.act6(self.fc6(x)))                             # (N, 4096)
        return self.act7(self.fc7(x))                                      # (N, 4096)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8(self.drop7(self.hidden(x)))                        # (N, classes)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Section 5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7, else 0.

        The 2012 code draws conv3-conv5 with std 0.03.
        """
        wide = {"conv3", "conv4", "conv5"} if self.config.recipe == "cuda-convnet" else set()
        unit = {"conv2", "conv4", "conv5", "fc6", "fc7"}
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
            layer = getattr(self, name)
            layer.weight.normal_(0.0, 0.03 if name in wide else 0.01)
            layer.bias.fill_(self.config.unit_bias if name in unit else 0.0)
