"""The 2012 network: two columns, five convolutional and three fully connected layers, built from the
paper's table in `alexnet.models.spec`. For a 224x224 input (per column in brackets):

    conv1  96 (48+48)   11x11/4, overhang -> 55x55   ReLU, LRN, max-pool 3/2 -> 27x27
    conv2 256 (128+128) 5x5, own column   -> 27x27   ReLU, LRN, max-pool 3/2 -> 13x13
    conv3 384 (192+192) 3x3, both columns -> 13x13   ReLU
    conv4 384 (192+192) 3x3, own column   -> 13x13   ReLU
    conv5 256 (128+128) 3x3, own column   -> 13x13   ReLU, max-pool 3/2 -> 6x6
    fc6  4096 (2048+2048) from both columns           ReLU, dropout 0.5
    fc7  4096 (2048+2048) from both columns           ReLU, dropout 0.5
    fc8  classes from both columns                    softmax (in the loss)

`AlexNet2012(config)` is the whole network on one device: the columns are channel groups (`groups=2`
in conv2, conv4, conv5; channels [0, C/2) are the first column). `AlexNet2012(config, column=i)` is
column i alone, half of every layer (fc8 whole on column 0, none on column 1): what one GPU held.
Both run the same stages (`spec.STAGES`); between two stages the columns exchange activations, which
on one device is nothing at all: the grouped tensor is both columns' tensors concatenated.
`alexnet.parallel.columns` drives the columns stage by stage on two devices or two processes.

`impl` picks the formulation when the model is built and records it in `config`: "reference" (the
torch formulas of `alexnet.layers` everywhere), "fast" (`alexnet.models.fast`: the same functions,
faster on a GPU; its choices in `config.fast`), "auto" (fast where torch sees CUDA). 60,965,224
parameters and 724,406,816 multiply-adds per image; `columns=1` is the paper's one-GPU comparison
(59,798,312 parameters).

Two recipes (PAPER.md, "Two recipes"): `paper` is the text; `cuda-convnet` is the 2012 code (LRN
alpha divided by n and applied before the ReLU in conv1, a within-map normalisation after conv2,
init std 0.03 for conv3-5, biases at twice the learning rate without decay).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from alexnet.errors import ConfigError
from alexnet.layers import LRN_ALPHA, LRN_BETA, LRN_K, LRN_SIZE, WithinMapNorm, activation, lrn_scale
from alexnet.models import fast
from alexnet.models.spec import LayerSpec, layer_table

RECIPES = ("paper", "cuda-convnet")
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
    impl: str = "auto"               # auto | fast | reference: the formulation (resolved when built)
    fast: str = ""                   # impl=fast: choices of alexnet.models.fast ("conv2=grouped,...")

    def __post_init__(self):
        for name, value, valid in (("recipe", self.recipe, RECIPES), ("activation", self.activation, ("relu", "tanh")),
                                   ("pooling", self.pooling, tuple(POOLING)), ("impl", self.impl, IMPLS)):
            if value not in valid:
                raise ConfigError(f"unknown {name} {value!r}: {', '.join(valid)}")
        if self.columns not in (1, 2):
            raise ConfigError(f"columns must be 1 or 2, not {self.columns}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), not {self.dropout}")
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be positive, not {self.num_classes}")
        fast.parse_choices(self.fast)

    def resolved(self) -> "AlexNet2012Config":
        """impl 'auto' made definite for this machine, and the fast choices written out in full."""
        impl = self.impl if self.impl != "auto" else ("fast" if torch.cuda.is_available() else "reference")
        choices = fast.format_choices(fast.parse_choices(self.fast)) if impl == "fast" else ""
        return dataclasses.replace(self, impl=impl, fast=choices)

    def layers(self) -> tuple[LayerSpec, ...]:
        return layer_table(self.columns, self.recipe, self.unit_bias, self.num_classes)


class AlexNet2012(nn.Module):
    """The paper's network (column=None), or one of its two columns. `forward` takes mean-subtracted
    images (N, 3, 224, 224) (227 works too) and returns logits."""

    def __init__(self, config: AlexNet2012Config | None = None, column: int | None = None, **options):
        super().__init__()
        cfg = (config or AlexNet2012Config(**options)).resolved()
        if column is not None and (cfg.columns != 2 or column not in (0, 1)):
            raise ConfigError(f"column {column}: the two-column network has columns 0 and 1")
        self.config, self.column = cfg, column
        choices = fast.parse_choices(cfg.fast) if cfg.impl == "fast" else None
        self.specs = {s.name: s for s in cfg.layers() if column in (None, 0) or s.split}
        code = cfg.recipe == "cuda-convnet"
        groups = cfg.columns if column is None else 1          # a window never crosses columns
        scale = lrn_scale(LRN_ALPHA, LRN_SIZE, "cuda-convnet" if code else "paper")
        pool_k, pool_s = POOLING[cfg.pooling]
        act = cfg.activation

        def layer(name):
            return self._layer(self.specs[name], choices)

        def norm(before):
            if not cfg.response_norm:
                return activation(before) if before else nn.Identity()
            return fast.norm_layer(before, LRN_SIZE, scale, LRN_BETA, LRN_K, groups, choices)

        # The 2012 code's conv1: conv, LRN, pool, ReLU (its LRN sees pre-ReLU values); the paper's:
        # conv, ReLU, LRN, pool. Pooling commutes with the ReLU, so only the LRN's input differs.
        self.conv1, self.norm1 = layer("conv1"), norm(None if code else act)
        self.pool1, self.act1 = fast.pool_layer(pool_k, pool_s, choices), activation(act) if code else nn.Identity()
        self.conv2, self.norm2 = layer("conv2"), norm(act)
        # The 2012 code adds a within-map normalisation after conv2 (layers-145 `cnorm2`).
        self.mapnorm2 = WithinMapNorm(5, 1e-3 / 25, 0.75, 1.0) if code and cfg.response_norm else nn.Identity()
        self.pool2 = fast.pool_layer(pool_k, pool_s, choices)
        self.conv3, self.act3 = layer("conv3"), activation(act)
        self.conv4, self.act4 = layer("conv4"), activation(act)
        self.conv5, self.act5, self.pool5 = layer("conv5"), activation(act), nn.MaxPool2d(pool_k, pool_s)
        self.fc6, self.act6, self.drop6 = layer("fc6"), activation(act), nn.Dropout(cfg.dropout)
        self.fc7, self.act7, self.drop7 = layer("fc7"), activation(act), nn.Dropout(cfg.dropout)
        self.fc8 = layer("fc8") if "fc8" in self.specs else None
        self.reset_parameters()

    def _layer(self, s: LayerSpec, choices: dict | None) -> nn.Module:
        """One layer of the table: the whole layer, or this column's half of its outputs, reading
        this column's half of the previous layer ('own') or both columns ('both')."""
        part = self.column is not None
        outputs = s.kernels // 2 if part and s.split else s.kernels
        inputs = s.inputs // 2 if part and s.reads == "own" else s.inputs
        if s.kind == "fc":
            return nn.Linear(inputs, outputs)
        groups = self.config.columns if not part and s.reads == "own" else 1
        pad = "overhang" if s.reads == "image" else s.pad
        return fast.conv_layer(s.name, inputs, outputs, s.size, s.stride, pad, groups, choices)

    # The stages; the columns exchange activations between consecutive ones (shapes: whole network).
    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 and conv2, each column on its own maps."""
        x = self.conv1(x)                                     # (N, 96, 55, 55)
        x = self.act1(self.pool1(self.norm1(x)))              # (N, 96, 27, 27)
        x = self.conv2(x)                                     # (N, 256, 27, 27)
        return self.pool2(self.mapnorm2(self.norm2(x)))       # (N, 256, 13, 13)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """conv3 (reads both columns), conv4 and conv5 (own column)."""
        x = self.act3(self.conv3(x))                          # (N, 384, 13, 13)
        x = self.act4(self.conv4(x))                          # (N, 384, 13, 13)
        x = self.pool5(self.act5(self.conv5(x)))              # (N, 256, 6, 6)
        return torch.flatten(x, 1)                            # (N, 9216)

    def fc6_block(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop6(self.act6(self.fc6(x)))             # (N, 4096)

    def fc7_block(self, x: torch.Tensor) -> torch.Tensor:
        return self.act7(self.fc7(x))                         # (N, 4096), before dropout: Figure 4's code

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8(self.drop7(x))                        # (N, classes)

    # The two parts data parallelism may overlap: the classifier's gradients (96% of the parameters)
    # are ready first, and their all-reduce can run while the convolutions' backward pass does.
    def convolutions(self, x: torch.Tensor) -> torch.Tensor:
        """conv1-conv5 and the last pooling, flattened: (N, 9216)."""
        return self.trunk(self.stem(x))

    def classifier(self, x: torch.Tensor) -> torch.Tensor:
        """fc6-fc8 on the flattened features: the logits. forward(x) = classifier(convolutions(x))."""
        return self.head(self.fc7_block(self.fc6_block(x)))

    def classifier_parameters(self) -> list[nn.Parameter]:
        """The parameters `classifier` uses (fc6-fc8)."""
        return [p for m in (self.fc6, self.fc7, self.fc8) if m is not None for p in m.parameters()]

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer (fc7 after ReLU, before dropout): Figure 4's 4096-d code."""
        return self.fc7_block(self.fc6_block(self.trunk(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.column is not None:
            raise TypeError("a single column runs stage by stage (alexnet.parallel.columns), not whole")
        return self.head(self.hidden(x))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Section 5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7, else 0 (the
        table in alexnet.models.spec, where the 2012 code's 0.03 for conv3-conv5 is too)."""
        for s in self.specs.values():
            layer = getattr(self, s.name)
            layer.weight.normal_(0.0, s.init_std)
            layer.bias.fill_(s.init_bias)
