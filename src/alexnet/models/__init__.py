"""The networks, by name. `build_model("alexnet2012", recipe="cuda-convnet")`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from alexnet.errors import ConfigError
from alexnet.models.alexnet2012 import AlexNet2012, AlexNet2012Config
from alexnet.models.cifar import CifarAlexNet, CifarAlexNetConfig, CifarFig1, CifarFig1Config
from alexnet.models.cuda_convnet import (CudaConvnet, CudaConvnet11pctConfig, CudaConvnet11pctNoNormConfig,
                                         CudaConvnet13pctConfig)
from alexnet.models.torchvision_alexnet import TorchvisionAlexNet, TorchvisionAlexNetConfig


@dataclass(frozen=True)
class Arch:
    model: type[nn.Module]
    config: type
    image_size: int   # the stored (prepared) image side
    crop: int         # the network's input side
    source: str


ARCHS: dict[str, Arch] = {
    "alexnet2012": Arch(AlexNet2012, AlexNet2012Config, 256, 224,
                        "Krizhevsky et al. 2012 and cuda-convnet layers-145 (two columns)"),
    "torchvision": Arch(TorchvisionAlexNet, TorchvisionAlexNetConfig, 256, 224,
                        "torchvision.models.alexnet (one column, no LRN)"),
    "cifar-fig1": Arch(CifarFig1, CifarFig1Config, 32, 28,
                       "Figure 1's four-layer CIFAR-10 net, reconstructed after cuda-convnet layers-18pct"),
    "cifar-alexnet": Arch(CifarAlexNet, CifarAlexNetConfig, 32, 28,
                          "the 2012 network in miniature for 32x32 images (our design)"),
    "cuda-convnet-11pct": Arch(CudaConvnet, CudaConvnet11pctConfig, 32, 24,
                               "cuda-convnet layers-conv-local-11pct: the paper's 11% CIFAR-10 net (with norm)"),
    "cuda-convnet-13pct": Arch(CudaConvnet, CudaConvnet13pctConfig, 32, 24,
                               "cuda-convnet layers-conv-local-13pct: the paper's 13% CIFAR-10 net (no norm)"),
    "cuda-convnet-11pct-no-norm": Arch(CudaConvnet, CudaConvnet11pctNoNormConfig, 32, 24,
                                       "the 11pct net with its two normalisation layers removed"),
}


def get_arch(name: str) -> Arch:
    if name not in ARCHS:
        raise ConfigError(f"unknown architecture {name!r}; valid: {', '.join(ARCHS)}")
    return ARCHS[name]


def arch_options(name: str) -> dict[str, Any]:
    """The options an architecture takes, with their defaults."""
    return {f.name: f.default for f in dataclasses.fields(get_arch(name).config)}


def make_config(name: str, **options):
    arch = get_arch(name)
    valid = arch_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for {name}; valid: {', '.join(valid)}")
    return arch.config(**options)


def build_model(name: str, **options) -> nn.Module:
    """Build a network by name. Unknown names or options raise ConfigError listing the valid ones."""
    return get_arch(name).model(make_config(name, **options))


def model_options(model: nn.Module) -> dict[str, Any]:
    """The options a model was built with (saved in checkpoints)."""
    return dataclasses.asdict(model.config)


__all__ = ["ARCHS", "Arch", "AlexNet2012", "CifarAlexNet", "CifarFig1", "TorchvisionAlexNet",
           "arch_options", "build_model", "get_arch", "make_config", "model_options"]
