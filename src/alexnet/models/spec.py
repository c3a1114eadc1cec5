"""The paper's network as data (PAPER.md, Architecture): every layer with parameters, its kernels,
shape, where its input comes from and its initialisation. `AlexNet2012` builds from this table both
the whole network (the two columns as channel groups, on one device) and each column alone (one
GPU's share), so a change here reaches both forms.

    layer  kernels (whole net)  shape              input                       init
    conv1   96 (48 + 48)        11x11, stride 4    the image (both columns)    N(0, 0.01), bias 0
    conv2  256 (128 + 128)      5x5, pad 2         own column                  N(0, 0.01), bias 1
    conv3  384 (192 + 192)      3x3, pad 1         BOTH columns  <- exchange   N(0, 0.01), bias 0
    conv4  384 (192 + 192)      3x3, pad 1         own column                  N(0, 0.01), bias 1
    conv5  256 (128 + 128)      3x3, pad 1         own column                  N(0, 0.01), bias 1
    fc6   4096 (2048 + 2048)    from 256x6x6       BOTH columns  <- exchange   N(0, 0.01), bias 1
    fc7   4096 (2048 + 2048)    from 4096          BOTH columns  <- exchange   N(0, 0.01), bias 1
    fc8   classes               from 4096          BOTH columns  <- exchange   N(0, 0.01), bias 0

fc8 is held whole by the first column (the 2012 code computed it on the first GPU). The 2012 code
(`recipe="cuda-convnet"`) draws conv3-conv5 with std 0.03. The paper's one-GPU comparison
(`columns=1`) halves conv1-conv4 and keeps conv5, fc6 and fc7 whole (its footnote).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LayerSpec", "layer_table", "STAGES", "EXCHANGES"]


@dataclass(frozen=True)
class LayerSpec:
    name: str
    kind: str              # conv | fc
    kernels: int           # outputs of the whole network (both columns together)
    inputs: int            # inputs of the whole network's layer (channels, or features for fc)
    size: int = 0          # kernel side (conv)
    stride: int = 1
    pad: int = 0           # zeros on every side; conv1 uses cuda-convnet's overhang instead
    reads: str = "own"     # image | own (this column's maps) | both (both columns': an exchange)
    init_std: float = 0.01
    init_bias: float = 0.0
    split: bool = True     # False: held whole by the first column (fc8)


#: The forward pass in stages; the columns exchange activations between consecutive stages.
STAGES = ("stem", "trunk", "fc6_block", "fc7_block", "head")
#: The layer that reads both columns at the start of each stage after the first.
EXCHANGES = ("conv3", "fc6", "fc7", "fc8")


def layer_table(columns: int = 2, recipe: str = "paper", unit_bias: float = 1.0,
                num_classes: int = 1000) -> tuple[LayerSpec, ...]:
    """The layers of the two-column network (columns=2) or of the paper's one-column comparison."""
    half = columns == 1                            # one column: half the kernels in conv1-conv4
    c1, c2, c3, c4 = (48, 128, 192, 192) if half else (96, 256, 384, 384)
    c5, f = 256, 4096
    deep = 0.03 if recipe == "cuda-convnet" else 0.01
    return (
        LayerSpec("conv1", "conv", c1, 3, size=11, stride=4, reads="image"),
        LayerSpec("conv2", "conv", c2, c1, size=5, pad=2, init_bias=unit_bias),
        LayerSpec("conv3", "conv", c3, c2, size=3, pad=1, reads="both", init_std=deep),
        LayerSpec("conv4", "conv", c4, c3, size=3, pad=1, init_std=deep, init_bias=unit_bias),
        LayerSpec("conv5", "conv", c5, c4, size=3, pad=1, init_std=deep, init_bias=unit_bias),
        LayerSpec("fc6", "fc", f, c5 * 6 * 6, reads="both", init_bias=unit_bias),
        LayerSpec("fc7", "fc", f, f, reads="both", init_bias=unit_bias),
        LayerSpec("fc8", "fc", num_classes, f, reads="both", split=False),
    )
