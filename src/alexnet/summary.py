"""Per-layer accounting: output shape, neurons, parameters and multiply-adds per image."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from alexnet.layers import LocallyConnected, ResponseNorm, WithinMapNorm

# Leaf layers worth a row; activations, dropout and padding change no shape that matters.
_SHOWN = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, ResponseNorm,
          WithinMapNorm, nn.LocalResponseNorm, LocallyConnected)


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: list[int]   # per image: (C, H, W) or (features,)
    neurons: int
    params: int
    macs: int


def layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-adds per image of a convolution, locally connected or fully connected layer (others 0)."""
    if isinstance(module, LocallyConnected):
        return output[0].numel() * module.in_channels // module.groups * module.kernel ** 2
    if isinstance(module, nn.Conv2d):
        per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return output[0].numel() * per_output
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


def summarize(model: nn.Module, input_size: int) -> list[LayerRow]:
    """Run one image through `model` and account for each shown layer, in execution order."""
    rows: list[LayerRow] = []
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, _SHOWN):
            def hook(mod, _inputs, out, name=name):
                rows.append(LayerRow(
                    name=name, kind=type(mod).__name__, output_shape=list(out.shape[1:]),
                    neurons=out[0].numel(), params=sum(p.numel() for p in mod.parameters(recurse=False)),
                    macs=layer_macs(mod, out)))
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return rows


def info(model: nn.Module, arch: str, input_size: int) -> dict:
    """The `alexnet info --json` object."""
    rows = summarize(model, input_size)
    return {
        "arch": arch,
        "options": asdict(model.config),
        "input_shape": [3, input_size, input_size],
        "params": sum(p.numel() for p in model.parameters()),
        "macs": sum(r.macs for r in rows),
        "layers": [asdict(r) for r in rows],
    }


def format_table(report: dict) -> str:
    head = f"{'layer':<13} {'kind':<16} {'output':>14} {'neurons':>11} {'params':>12} {'mult-adds':>14}"
    lines = [f"{report['arch']}  input {'x'.join(map(str, report['input_shape']))}", head, "-" * len(head)]
    for r in report["layers"]:
        shape = "x".join(map(str, r["output_shape"]))
        lines.append(f"{r['name']:<13} {r['kind']:<16} {shape:>14} {r['neurons']:>11,} {r['params']:>12,} {r['macs']:>14,}")
    lines.append("-" * len(head))
    lines.append(f"{'total':<13} {'':<16} {'':>14} {'':>11} {report['params']:>12,} {report['macs']:>14,}")
    return "\n".join(lines)
