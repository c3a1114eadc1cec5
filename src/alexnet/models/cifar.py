"""Networks for 32x32 images (CIFAR-10), for the paper's small experiments.

`cifar-fig1`: the four-layer network of Figure 1 (ReLU against tanh). The paper says only "a
four-layer convolutional neural network"; this reconstruction follows the same author's
cuda-convnet `layers-18pct` CIFAR-10 net (three 5x5 convolutions with 32, 32, 64 kernels, max then
average pooling 3/2, one fully connected layer) with its response normalisation removed, since the
figure's nets had no regularisation.

`cifar-alexnet`: the 2012 network in miniature, for the ablations: five convolutions and three
fully connected layers with the same connectivity (conv2/4/5 within a column, conv3 and the FC
layers across columns), response normalisation after conv1 and conv2, overlapping max-pooling,
dropout in fc6 and fc7, one or two columns. Widths are a third of the original's in the
convolutions (64-128-192-192-128) and an eighth in the FC layers (512); `columns=1` halves conv1-4
like the paper's one-GPU comparison. Our design, documented as such.

Both take a mean-subtracted image in 0-255 scale (as the paper's net does) of any size from 16 up;
the FC input size is computed for `input_size` at construction. They first multiply the input by
1/64 (a fixed constant, no parameter), so that fan-in scaled initialisation and the paper's learning
rate of 0.01 train stably at this size: with raw 0-255 inputs the first layer's gradients are ~60x
its weights' scale and training diverges. The ImageNet network keeps the paper's raw inputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from alexnet.errors import ConfigError
from alexnet.layers import LRN_ALPHA, LRN_BETA, LRN_K, LRN_SIZE, activation
from alexnet.models import fast
from alexnet.models.alexnet2012 import POOLING

INPUT_SCALE = 1 / 64


def _check(cfg) -> None:
    if cfg.activation not in ("relu", "tanh"):
        raise ConfigError(f"unknown activation {cfg.activation!r}: relu, tanh")
    if cfg.input_size < 16:
        raise ConfigError(f"input_size must be at least 16, not {cfg.input_size}")
    if cfg.num_classes < 1:
        raise ConfigError(f"num_classes must be positive, not {cfg.num_classes}")


def _flat_features(features: nn.Module, input_size: int) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, 3, input_size, input_size)).numel()


@dataclass(frozen=True)
class CifarFig1Config:
    num_classes: int = 10
    activation: str = "relu"
    input_size: int = 28

    def __post_init__(self):
        _check(self)


class CifarFig1(nn.Module):
    def __init__(self, config: CifarFig1Config | None = None, **options):
        super().__init__()
        cfg = config or CifarFig1Config(**options)
        self.config = cfg
        self.conv1 = nn.Conv2d(3, 32, 5, padding=2)
        self.act1 = activation(cfg.activation)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 32, 5, padding=2)
        self.act2 = activation(cfg.activation)
        self.pool2 = nn.AvgPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(32, 64, 5, padding=2)
        self.act3 = activation(cfg.activation)
        self.pool3 = nn.AvgPool2d(3, 2, ceil_mode=True)
        self.fc4 = nn.Linear(_flat_features(self.features, cfg.input_size), cfg.num_classes)
        self.reset_parameters()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x * INPUT_SCALE)))  # (N, 32, 14, 14) for 28x28
        x = self.pool2(self.act2(self.conv2(x)))      # (N, 32, 7, 7)
        return self.pool3(self.act3(self.conv3(x)))   # (N, 64, 4, 4)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc4(self.hidden(x))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # The same fan-in scaled normal for both activations, so the comparison is of the units alone.
        for m in (self.conv1, self.conv2, self.conv3):
            m.weight.normal_(0.0, (1.0 / m.weight[0].numel()) ** 0.5)
            m.bias.zero_()
        self.fc4.weight.normal_(0.0, 0.01)
        self.fc4.bias.zero_()


@dataclass(frozen=True)
class CifarAlexNetConfig:
    num_classes: int = 10
    activation: str = "relu"
    response_norm: bool = True
    pooling: str = "overlapping"
    dropout: float = 0.5
    columns: int = 2
    input_size: int = 28
    unit_bias: float = 0.1
    impl: str = "auto"               # auto | fast | reference: the response normalisation's form

    def __post_init__(self):
        _check(self)
        if self.impl not in ("auto", "fast", "reference"):
            raise ConfigError(f"unknown impl {self.impl!r}: auto, fast, reference")
        if self.pooling not in POOLING:
            raise ConfigError(f"unknown pooling {self.pooling!r}: {', '.join(POOLING)}")
        if self.columns not in (1, 2):
            raise ConfigError(f"columns must be 1 or 2, not {self.columns}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), not {self.dropout}")


class CifarAlexNet(nn.Module):
    def __init__(self, config: CifarAlexNetConfig | None = None, **options):
        super().__init__()
        cfg = config or CifarAlexNetConfig(**options)
        if cfg.impl == "auto":
            cfg = dataclasses.replace(cfg, impl="fast" if torch.cuda.is_available() else "reference")
        self.config = cfg
        g = cfg.columns
        c1, c2, c3, c4 = (64, 128, 192, 192) if g == 2 else (32, 64, 96, 96)
        c5 = 128
        pool_k, pool_s = POOLING[cfg.pooling]

        choices = fast.parse_choices("") if cfg.impl == "fast" else None

        def norm():  # the activation before it, fused with it where the form allows (act1/act2: identity)
            if not cfg.response_norm:
                return activation(cfg.activation)
            return fast.norm_layer(cfg.activation, LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K, g, choices)

        self.conv1 = nn.Conv2d(3, c1, 5, padding=2)
        self.act1 = nn.Identity()
        self.norm1 = norm()
        self.pool1 = nn.MaxPool2d(pool_k, pool_s, ceil_mode=True)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2, groups=g)
        self.act2 = nn.Identity()
        self.norm2 = norm()
        self.pool2 = nn.MaxPool2d(pool_k, pool_s, ceil_mode=True)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.act3 = activation(cfg.activation)
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1, groups=g)
        self.act4 = activation(cfg.activation)
        self.conv5 = nn.Conv2d(c4, c5, 3, padding=1, groups=g)
        self.act5 = activation(cfg.activation)
        self.pool5 = nn.MaxPool2d(pool_k, pool_s, ceil_mode=True)
        self.fc6 = nn.Linear(_flat_features(self.features, cfg.input_size), 512)
        self.act6 = activation(cfg.activation)
        self.drop6 = nn.Dropout(cfg.dropout)
        self.fc7 = nn.Linear(512, 512)
        self.act7 = activation(cfg.activation)
        self.drop7 = nn.Dropout(cfg.dropout)
        self.fc8 = nn.Linear(512, cfg.num_classes)
        self.reset_parameters()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.norm1(self.act1(self.conv1(x * INPUT_SCALE))))  # (N, 64, 14, 14) for 28x28
        x = self.pool2(self.norm2(self.act2(self.conv2(x))))   # (N, 128, 7, 7)
        x = self.act3(self.conv3(x))                           # (N, 192, 7, 7)
        x = self.act4(self.conv4(x))                           # (N, 192, 7, 7)
        return self.pool5(self.act5(self.conv5(x)))            # (N, 128, 3, 3)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        x = self.drop6(self.act6(self.fc6(x)))
        return self.act7(self.fc7(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8(self.drop7(self.hidden(x)))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # The paper's N(0, 0.01) is tuned for 224x224 inputs; at this width it trains slowly, so
        # hidden layers use a fan-in scaled (He) normal and fc8 the paper's 0.01. The paper's
        # positive biases in conv2/4/5 and fc6/7, at `unit_bias`.
        unit = {"conv2", "conv4", "conv5", "fc6", "fc7"}
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
            m = getattr(self, name)
            std = 0.01 if name == "fc8" else (2.0 / m.weight[0].numel()) ** 0.5
            m.weight.normal_(0.0, std)
            m.bias.fill_(self.config.unit_bias if name in unit else 0.0)
