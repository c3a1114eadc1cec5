"""torchvision's `alexnet`, the single-column variant most people train today.

It is torchvision's own class, so its parameter names are exactly torchvision's and a torchvision
state_dict loads unchanged. Source: torchvision/models/alexnet.py, after the one-GPU column of
cuda-convnet2 (64-192-384-256-256, 2014) without response normalisation, with conv1 padded by 2 on
every side, an adaptive average pool to 6x6 and dropout before fc6 and fc7. 61,100,840 parameters,
714,188,480 multiply-adds per 224x224 image.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchvision.models import AlexNet

from alexnet.errors import ConfigError


@dataclass(frozen=True)
class TorchvisionAlexNetConfig:
    num_classes: int = 1000
    dropout: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), not {self.dropout}")


class TorchvisionAlexNet(AlexNet):
    def __init__(self, config: TorchvisionAlexNetConfig | None = None, **options):
        cfg = config or TorchvisionAlexNetConfig(**options)
        super().__init__(num_classes=cfg.num_classes, dropout=cfg.dropout)
        self.config = cfg

    def hidden(self, x):
        """The last hidden layer (fc7 after ReLU): the 4096-d code."""
        x = self.avgpool(self.features(x)).flatten(1)
        return self.classifier[:6](x)
