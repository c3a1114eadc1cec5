"""The CIFAR-10 nets behind the paper's "13% without normalisation, 11% with" (section 3.3).

They are cuda-convnet's example configurations `layers-conv-local-13pct.cfg` and
`layers-conv-local-11pct.cfg`, with `layer-params-conv-local-*.cfg` (the 2012 SVN tree, e.g. the
repository mbrukman/cuda-convnet, folder `example-layers/`). Layer by layer, for a 24x24 input:

| layer | 11pct | 13pct | output (11pct) |
|---|---|---|---|
| conv1 | 64 filters 5x5, pad 2, ReLU, initW 1e-4 | same | 64x24x24 |
| pool1 | max 3/2 | same | 64x12x12 |
| rnorm1 | cross-map, size 9, scale 0.001, pow 0.75 | - | 64x12x12 |
| conv2 | 64 filters 5x5, pad 2, ReLU, initW 0.01 | same | 64x12x12 |
| rnorm2 | cross-map, size 9 (before the pool here) | - | 64x12x12 |
| pool2 | max 3/2 | same | 64x6x6 |
| local3 | unshared 3x3, pad 1, 64 filters, ReLU, initW 0.04 | 32 filters | 64x6x6 |
| local4 | unshared 3x3, pad 1, 32 filters, ReLU, initW 0.04 | same | 32x6x6 |
| fc10 | 10 outputs, no neuron, initW 0.01 | `neuron=ident` (the same) | 10 |

followed by softmax and the log loss. Facts of the source, as implemented here:

- Output sizes: cuda-convnet's pooling gives `ceil((size - sizeX) / stride) + 1` outputs over windows
  clipped at the edge (24 -> 12 -> 6), which is `nn.MaxPool2d(3, 2, ceil_mode=True)`; conv and local
  layers `1 + ceil((2*pad + size - filter) / stride)`.
- Cross-map normalisation (`cmrnorm`): cuda-convnet divides `scale` by `size` and adds 1, over the 9
  channels centred on each (zeros past the edges): b = a / (1 + 0.001/9 * sum a^2)^0.75, which is
  `torch.nn.LocalResponseNorm(9, alpha=0.001, beta=0.75, k=1)`; here `ResponseNorm(9, 0.001/9, 0.75, 1)`,
  run by the Triton kernel of `alexnet.kernels` on CUDA (`FusedResponseNorm`, the same function).
- Initialisation: weights N(0, initW) (initW is a standard deviation), all biases 0 (`initB` is not
  set). Conv biases are shared per filter; the local layers have one bias per filter and position.
- Inputs: cuda-convnet's CIFAR data provider (`convdata.py`, `CroppedCIFARDataProvider`) feeds the
  raw pixel values as floats, 0-255, minus the mean image: no division by 255 or by a standard
  deviation. These nets take exactly that: (N, 3, 24, 24), 0-255 scale minus the mean. (The mean it
  subtracts is the centre 24x24 of the mean image, whatever the crop: see
  `alexnet.experiments.cifar_normalisation`.)

`LAYER_PARAMS` holds the layer-parameter files (epsW, epsB, momW, momB, wc per layer); the training
recipe is in `alexnet.experiments.cifar_normalisation`.

Options beyond the files: `response_norm=False` on the 11pct net removes its two normalisation
layers and nothing else (also registered as `cuda-convnet-11pct-no-norm`: the clean test of the
paper's claim, since the 13pct file differs in more than normalisation). `replicas=R` computes R
independent copies of the net in one module (grouped convolutions, grouped normalisation windows,
grouped local and fully connected layers): input (N, 3R, 24, 24), copy r reading channels 3r..3r+2,
output (N, 10R). Each copy is exactly the single net (the groups share nothing); it lets several
seeds train in the same kernels. `init_seeds` gives each copy its own initialisation, equal to that of
a single net built with that seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.errors import ConfigError
from alexnet.layers import LocallyConnected
from alexnet.models.fast import FusedResponseNorm

#: cuda-convnet's `cmrnorm` layers of the 11pct file: size 9, scale 0.001 (divided by size), pow 0.75.
NORM_SIZE, NORM_SCALE, NORM_POW = 9, 0.001, 0.75


@dataclass(frozen=True)
class LayerParams:
    """One section of a layer-parameter file: learning rates, momenta, weight decay (weights only)."""

    eps_w: float
    eps_b: float
    mom_w: float
    mom_b: float
    wc: float


def _params(wc: dict[str, float]) -> dict[str, LayerParams]:
    return {name: LayerParams(0.001, 0.002, 0.9, 0.9, w) for name, w in wc.items()}


#: layer-params-conv-local-11pct.cfg and -13pct.cfg: the same rates everywhere, decay differs.
LAYER_PARAMS = {
    "11pct": _params({"conv1": 0.0, "conv2": 0.0, "local3": 0.004, "local4": 0.004, "fc10": 0.01}),
    "13pct": _params({"conv1": 0.0, "conv2": 0.0, "local3": 0.004, "local4": 0.004, "fc10": 0.004}),
}

#: initW of each weight layer (both files).
INIT_STD = {"conv1": 1e-4, "conv2": 0.01, "local3": 0.04, "local4": 0.04, "fc10": 0.01}


def _check(cfg) -> None:
    if cfg.replicas < 1:
        raise ConfigError(f"replicas must be at least 1, not {cfg.replicas}")
    if cfg.input_size < 8:
        raise ConfigError(f"input_size must be at least 8, not {cfg.input_size}")
    if cfg.num_classes < 1:
        raise ConfigError(f"num_classes must be positive, not {cfg.num_classes}")
    if cfg.init_seeds is not None and len(cfg.init_seeds) != cfg.replicas:
        raise ConfigError(f"init_seeds needs one seed per replica ({cfg.replicas}), got {list(cfg.init_seeds)}")


@dataclass(frozen=True)
class _CudaConvnetConfig:
    """What both layer files' nets take; `LAYERS` (a subclass's) names the file."""

    num_classes: int = 10
    input_size: int = 24
    replicas: int = 1
    init_seeds: tuple[int, ...] | None = None

    def __post_init__(self):
        _check(self)


@dataclass(frozen=True)
class CudaConvnet11pctConfig(_CudaConvnetConfig):
    LAYERS: ClassVar[str] = "11pct"
    response_norm: bool = True


@dataclass(frozen=True)
class CudaConvnet11pctNoNormConfig(CudaConvnet11pctConfig):
    response_norm: bool = False


@dataclass(frozen=True)
class CudaConvnet13pctConfig(_CudaConvnetConfig):
    LAYERS: ClassVar[str] = "13pct"


class GroupedLinear(nn.Linear):
    """`groups` independent fully connected layers of in_features -> out_features / groups each,
    over the `groups` consecutive blocks of an (N, groups * in_features) input. One group is
    `nn.Linear`; the weight is (out_features, in_features), group g's rows are its own block."""

    def __init__(self, in_features: int, out_features: int, groups: int = 1):
        super().__init__(in_features, out_features)
        if out_features % groups:
            raise ValueError(f"{out_features} outputs do not split into {groups} groups")
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:
            return F.linear(x, self.weight, self.bias)
        n, g = x.shape[0], self.groups
        w = self.weight.view(g, -1, self.in_features).transpose(1, 2)             # (G, I, O)
        out = torch.bmm(x.view(n, g, self.in_features).transpose(0, 1), w)       # (G, N, O)
        return out.transpose(0, 1).reshape(n, self.out_features) + self.bias

    def extra_repr(self) -> str:
        return super().extra_repr() + f", groups={self.groups}"


class CudaConvnet(nn.Module):
    """cuda-convnet's `conv-local` CIFAR-10 net (11pct or 13pct file, by the config's class)."""

    def __init__(self, config=None, **options):
        super().__init__()
        cfg = config or CudaConvnet11pctConfig(**options)
        self.config = cfg
        self.layers = cfg.LAYERS
        self.layer_params = LAYER_PARAMS[cfg.LAYERS]
        r = cfg.replicas
        norm = cfg.LAYERS == "11pct" and cfg.response_norm
        width3 = 64 if cfg.LAYERS == "11pct" else 32
        s1 = cfg.input_size                        # conv1 keeps the size (5x5, pad 2)
        s2 = 1 + -(-(s1 - 3) // 2)                 # pool1 (24 -> 12)
        s3 = 1 + -(-(s2 - 3) // 2)                 # pool2 (12 -> 6)

        def rnorm():     # the Triton kernel on CUDA (one pass each way), the torch formula elsewhere
            return FusedResponseNorm(NORM_SIZE, NORM_SCALE / NORM_SIZE, NORM_POW, 1.0, groups=r) if norm else nn.Identity()

        self.conv1 = nn.Conv2d(3 * r, 64 * r, 5, padding=2, groups=r)
        self.act1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.rnorm1 = rnorm()
        self.conv2 = nn.Conv2d(64 * r, 64 * r, 5, padding=2, groups=r)
        self.act2 = nn.ReLU(inplace=True)
        self.rnorm2 = rnorm()
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.local3 = LocallyConnected(64 * r, width3 * r, s3, 3, padding=1, groups=r)
        self.act3 = nn.ReLU(inplace=True)
        self.local4 = LocallyConnected(width3 * r, 32 * r, s3, 3, padding=1, groups=r)
        self.act4 = nn.ReLU(inplace=True)
        self.fc10 = GroupedLinear(32 * s3 * s3, cfg.num_classes * r, groups=r)
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x)))      # (N, 64R, 12, 12) for 24x24
        x = self.rnorm1(x)                            # 11pct: normalised after the pool
        x = self.rnorm2(self.act2(self.conv2(x)))     # (N, 64R, 12, 12); 11pct: before the pool
        x = self.pool2(x)                             # (N, 64R, 6, 6)
        x = self.act3(self.local3(x))                 # (N, 64R or 32R, 6, 6)
        x = self.act4(self.local4(x))                 # (N, 32R, 6, 6)
        return self.fc10(torch.flatten(x, 1))         # (N, 10R): logits, softmax in the loss

    def weight_layers(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in INIT_STD}

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """N(0, initW) weights and zero biases; replica r from its own `init_seeds[r]` when given
        (drawn layer by layer, so a replica equals a single net built with that seed)."""
        seeds = self.config.init_seeds
        r = self.config.replicas
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds] if seeds is not None else [None] * r
        for name, layer in self.weight_layers().items():
            layer.bias.zero_()
            for i, gen in enumerate(gens):
                part = replica_slice(layer.weight, name, i, r)
                part.copy_(torch.randn(part.shape, generator=gen) * INIT_STD[name])


def replica_slice(weight: torch.Tensor, layer: str, index: int, replicas: int) -> torch.Tensor:
    """The view of `weight` (of layer `layer`) that belongs to replica `index` of `replicas`."""
    if layer.startswith("local"):
        return weight[:, index]                    # (positions, replicas, inputs, filters)
    rows = weight.shape[0] // replicas             # conv: (R*F, C, k, k); fc: (R*O, I)
    return weight[index * rows:(index + 1) * rows]

