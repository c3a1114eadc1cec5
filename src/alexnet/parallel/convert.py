"""Checkpoints between the two forms of the paper's network: the whole (grouped) `AlexNet2012` and
its two columns. Column i holds output channels `chunk(2, dim=0)[i]` of every layer the table in
`alexnet.models.spec` splits (conv1-conv5, fc6, fc7); fc8 is whole on column 0. So a state dict, or
anything shaped like one (PaperSGD's velocities by parameter name), converts either way exactly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from alexnet.errors import CheckpointError
from alexnet.models.spec import layer_table

__all__ = ["SPLIT_LAYERS", "COLUMN0_LAYERS", "split_state_dict", "merge_state_dicts", "named_optimizer_state",
           "load_named_optimizer_state", "strip_prefixes"]

SPLIT_LAYERS = tuple(s.name for s in layer_table() if s.split)
COLUMN0_LAYERS = tuple(s.name for s in layer_table() if not s.split)
_PREFIXES = ("_orig_mod.", "module.")


def strip_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without the `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes."""
    out = {}
    for key, value in sd.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _layer(key: str) -> str:
    return key.split(".", 1)[0]


def split_state_dict(grouped_sd: Mapping[str, torch.Tensor]) -> tuple[OrderedDict, OrderedDict]:
    """A grouped `AlexNet2012` state dict -> (column 0's, column 1's), keys unchanged; the halves are
    copies."""
    sd = strip_prefixes(grouped_sd)
    unknown = sorted(k for k in sd if _layer(k) not in SPLIT_LAYERS + COLUMN0_LAYERS)
    if unknown:
        raise CheckpointError(f"not an alexnet2012 state dict: unexpected keys {', '.join(unknown[:5])}")
    sd0, sd1 = OrderedDict(), OrderedDict()
    for key, value in sd.items():
        if _layer(key) in SPLIT_LAYERS:
            if value.shape[0] % 2:
                raise CheckpointError(f"{key}: {value.shape[0]} output channels do not split into two columns")
            a, b = value.chunk(2, dim=0)
            sd0[key], sd1[key] = a.clone(), b.clone()
        else:
            sd0[key] = value.clone()
    return sd0, sd1


def merge_state_dicts(sd0: Mapping[str, torch.Tensor], sd1: Mapping[str, torch.Tensor]) -> OrderedDict:
    """Two column state dicts -> the grouped `AlexNet2012` state dict (on sd0's devices)."""
    sd0, sd1 = strip_prefixes(sd0), strip_prefixes(sd1)
    extra = sorted(k for k in sd1 if _layer(k) not in SPLIT_LAYERS)
    if extra:
        raise CheckpointError(f"column 1 holds no {', '.join(extra[:5])}: pass column 0's state dict first")
    missing = sorted((set(sd0) ^ set(sd1)) - {k for k in sd0 if _layer(k) in COLUMN0_LAYERS})
    if missing:
        raise CheckpointError(f"the two column state dicts differ in {', '.join(missing[:5])}")
    out = OrderedDict()
    for key, value in sd0.items():
        if _layer(key) in SPLIT_LAYERS:
            out[key] = torch.cat([value, sd1[key].to(value.device)], dim=0)
        elif _layer(key) in COLUMN0_LAYERS:
            out[key] = value.clone()
        else:
            raise CheckpointError(f"not a column state dict: unexpected key {key}")
    return out


def named_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, key: str = "velocity") -> OrderedDict:
    """`{parameter name: optimizer.state[p][key]}` for `module`'s parameters that have it (PaperSGD's
    velocity): shaped like a state dict, so split_state_dict / merge_state_dicts convert it."""
    return OrderedDict((name, optimizer.state[p][key]) for name, p in module.named_parameters()
                       if key in optimizer.state.get(p, {}))


@torch.no_grad()
def load_named_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer,
                               named: Mapping[str, torch.Tensor], key: str = "velocity") -> None:
    """The inverse of `named_optimizer_state`: set `optimizer.state[p][key]` from a by-name dict."""
    params = dict(module.named_parameters())
    unknown = sorted(set(named) - set(params))
    if unknown:
        raise CheckpointError(f"optimizer state for unknown parameters {', '.join(unknown[:5])}")
    for name, value in named.items():
        p = params[name]
        if value.shape != p.shape:
            raise CheckpointError(f"{name}: optimizer state of shape {tuple(value.shape)}, parameter {tuple(p.shape)}")
        optimizer.state[p][key] = value.detach().to(p.device, p.dtype).clone()
