"""The paper's two-GPU model parallelism: one column of `alexnet2012` per device.

Krizhevsky et al. put half of the kernels of every layer on each of two GTX 580s; the GPUs talked
only where a layer reads both columns (PAPER.md, Architecture; `alexnet.models.spec.EXCHANGES`):

    stem       conv1, conv2 on each column's own maps      (both columns read the whole image)
    trunk      conv3 reads BOTH columns' pool2 maps        <- exchange 128x13x13 per image and column
    fc6_block  reads both columns' pool5 maps              <- exchange 128x6x6 = 4608
    fc7_block  reads both columns' fc6 outputs             <- exchange 2048
    head       fc8 on column 0 only                        <- column 1 sends its 2048 fc7 outputs

Each column is `AlexNet2012(config, column=i)`: the same module class, layer table and fast layers
as the whole network, half of every layer. Between stages the halves are concatenated (column 0's
first), which is exactly the whole network's tensor, so both forms compute one function;
`alexnet.parallel.convert` maps their checkpoints either way. Dropout draws per column (the same
distribution as the whole network's mask, not the same draws).

* `TwoDeviceAlexNet`: both columns in one process, column i on `devices[i]`; the exchanges are
  `.to(device)` copies, which PyTorch orders against both devices' streams; autograd sends the
  gradients back the same way. On one GPU twice the columns run on two CUDA streams.
* `DistributedColumnAlexNet`: one column per process (`torchrun --nproc-per-node 2`); the exchanges
  are all-gathers (backward: reduce-scatters) and a gather into fc8 on rank 0.

`compile_stages()` on either compiles each column's stages separately (the exchanges stay outside).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as td
import torch.nn.functional as F
from torch import nn

from alexnet.errors import ConfigError
from alexnet.models.alexnet2012 import AlexNet2012, AlexNet2012Config
from alexnet.models.spec import STAGES
from alexnet.parallel.collectives import all_gather_cat, gather_cat
from alexnet.parallel.convert import SPLIT_LAYERS, merge_state_dicts, split_state_dict

__all__ = ["TwoDeviceAlexNet", "DistributedColumnAlexNet", "column_devices"]


def _config(config: AlexNet2012Config | None, options: dict) -> AlexNet2012Config:
    if config is not None and options:
        raise ConfigError("give a config or options, not both")
    cfg = config or AlexNet2012Config(**options)
    if cfg.columns != 2:
        raise ConfigError("the column-parallel network needs columns=2 (the one-column net has no second device)")
    return cfg


def column_devices(devices: Sequence | None = None) -> tuple[torch.device, torch.device]:
    """Two GPUs when there are two, one GPU twice (two streams) with one, else the CPU twice."""
    if devices is None:
        if torch.cuda.is_available():
            devices = ("cuda:0", "cuda:1") if torch.cuda.device_count() >= 2 else ("cuda:0", "cuda:0")
        else:
            devices = ("cpu", "cpu")
    devs = tuple(torch.device(d) for d in devices)
    if len(devs) != 2:
        raise ConfigError(f"two devices, one per column, not {len(devs)}")
    return devs


class _Stages:
    """The per-stage callables of a column: its bound methods, or compiled versions of them."""

    def __init__(self, column: AlexNet2012):
        self.fns = {s: getattr(column, s) for s in STAGES if s != "head" or column.column == 0}

    def compile(self, **options) -> None:
        self.fns = {s: torch.compile(f, **options) for s, f in self.fns.items()}


class TwoDeviceAlexNet(nn.Module):
    """The 2012 network with column i on `devices[i]`, in one process; logits come back on devices[0].

        model = TwoDeviceAlexNet.from_grouped(grouped, ("cuda:0", "cuda:1"))   # or TwoDeviceAlexNet(cfg)
        opt = PaperSGD(param_groups(model, recipe, lr))        # parameters on both devices
        loss = F.cross_entropy(model(x), y.to(model.devices[0])); loss.backward(); opt.step()

    `state_dict()` has keys `columns.0.conv1.weight`, ...; `grouped_state_dict()` gives the
    single-device form, and `load_state_dict` takes either.
    """

    def __init__(self, config: AlexNet2012Config | None = None, devices: Sequence | None = None, **options):
        super().__init__()
        cfg = _config(config, options).resolved()
        devs = column_devices(devices)
        self.config = cfg
        self.columns = nn.ModuleList([AlexNet2012(cfg, column=i).to(d) for i, d in enumerate(devs)])
        self._stages = [_Stages(c) for c in self.columns]
        self._streams = [torch.cuda.Stream(device=d) for d in devs] if devs[0] == devs[1] and devs[0].type == "cuda" \
            else None

    @classmethod
    def from_grouped(cls, model: AlexNet2012, devices: Sequence | None = None) -> "TwoDeviceAlexNet":
        """A two-column copy of a grouped `AlexNet2012` (weights split; train/eval mode kept)."""
        out = cls(model.config, devices)
        out.load_grouped_state_dict(model.state_dict())
        return out.train(model.training)

    @property
    def devices(self) -> tuple[torch.device, torch.device]:
        return tuple(c.conv1.weight.device for c in self.columns)

    def compile_stages(self, **options) -> "TwoDeviceAlexNet":
        for s in self._stages:
            s.compile(**options)
        return self

    def grouped_state_dict(self) -> OrderedDict:
        return merge_state_dicts(self.columns[0].state_dict(), self.columns[1].state_dict())

    def load_grouped_state_dict(self, sd: Mapping[str, torch.Tensor]) -> None:
        for column, half in zip(self.columns, split_state_dict(sd)):
            column.load_state_dict(half)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Either this module's own state dict (`columns.i.*`) or a grouped `AlexNet2012` one."""
        if any(k.startswith("columns.") for k in state_dict):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.load_grouped_state_dict(state_dict)
        return nn.modules.module._IncompatibleKeys([], [])

    def _run(self, stage: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """One stage on every column that has it: on its own device, or its own stream of one GPU."""
        fns = [s.fns[stage] for s in self._stages if stage in s.fns]
        if self._streams is None:
            return [f(x) for f, x in zip(fns, inputs)]
        current = torch.cuda.current_stream(self.devices[0])
        outs = []
        for stream, f, x in zip(self._streams, fns, inputs):
            stream.wait_stream(current)
            with torch.cuda.stream(stream):
                x.record_stream(stream)
                outs.append(f(x))
        for stream, y in zip(self._streams, outs):
            current.wait_stream(stream)
            y.record_stream(current)
        return outs

    def _exchange(self, halves: list[torch.Tensor], to_all: bool) -> list[torch.Tensor]:
        """Both columns' tensors concatenated (column 0's first) on every column's device, or only on
        column 0's (into fc8)."""
        devices = self.devices if to_all else self.devices[:1]
        return [torch.cat([h.to(d, non_blocking=True) for h in halves], dim=1) for d in devices]

    def _stages_upto(self, x: torch.Tensor, last: str) -> list[torch.Tensor]:
        h = [x.to(d, non_blocking=True) for d in self.devices]
        for i, stage in enumerate(STAGES[:STAGES.index(last) + 1]):
            if i:
                h = self._exchange(h, to_all=stage != "head")
            h = self._run(stage, h)
        return h

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """fc7 after ReLU, before dropout, both columns concatenated on devices[0]: (N, 4096)."""
        return self._exchange(self._stages_upto(x, "fc7_block"), to_all=False)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._stages_upto(x, "head")[0]


class DistributedColumnAlexNet(AlexNet2012):
    """Column `rank` of the 2012 network in a process group of two (`torchrun --nproc-per-node 2`).

    This process holds only its column (and so only its gradients and optimizer state);
    `state_dict()` is `split_state_dict(grouped)[rank]`. Both ranks must feed the SAME images (each
    column's conv1 sees the whole image: no DistributedSampler); labels are read on rank 0 only.
    Every call is collective: both ranks run forward and backward the same number of times.

        model = DistributedColumnAlexNet(cfg).to(device)
        out = model(x)                  # rank 0: logits (N, classes); rank 1: a 0-dim placeholder
        loss = model.loss(out, y)       # rank 0: cross-entropy; rank 1: the placeholder
        opt.zero_grad(); loss.backward(); opt.step()     # on both ranks (rank 0's loss is the run's)

    On rank 1, `loss.backward()` starts at the placeholder: its backward receives rank 1's fc7
    gradient from rank 0 (a scatter), then runs the same reduce-scatters as rank 0.
    """

    def __init__(self, config: AlexNet2012Config | None = None, group=None, **options):
        if not td.is_available() or not td.is_initialized():
            raise ConfigError("DistributedColumnAlexNet needs an initialised process group (torchrun)")
        world = td.get_world_size(group)
        if world != 2:
            raise ConfigError(f"the column-parallel network needs a process group of 2, not {world}")
        super().__init__(_config(config, options), column=td.get_rank(group))
        self.group = group
        self._stages = _Stages(self)

    @property
    def rank(self) -> int:
        return self.column

    @property
    def is_root(self) -> bool:
        """True on the rank that holds fc8 and computes the loss."""
        return self.column == 0

    def _root(self) -> int:
        return td.get_global_rank(self.group, 0) if self.group is not None else 0

    def compile_stages(self, **options) -> "DistributedColumnAlexNet":
        self._stages.compile(**options)
        return self

    def hidden_half(self, x: torch.Tensor) -> torch.Tensor:
        """This column's fc7 half, after ReLU, before dropout: (N, 2048)."""
        f = self._stages.fns
        h = f["stem"](x)
        for stage in ("trunk", "fc6_block", "fc7_block"):
            h = f[stage](all_gather_cat(h, self.group))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both = gather_cat(self.hidden_half(x), self.group)                    # into fc8
        return self._stages.fns["head"](both) if self.is_root else both

    def loss(self, out: torch.Tensor, target: torch.Tensor, criterion=F.cross_entropy) -> torch.Tensor:
        """Rank 0: criterion(logits, target). Rank 1: the placeholder itself, to call backward on."""
        return criterion(out, target) if self.is_root else out

    def load_grouped_state_dict(self, sd: Mapping[str, torch.Tensor]) -> None:
        """Load this rank's half of a grouped checkpoint (every rank reads the whole file)."""
        self.load_state_dict(split_state_dict(sd)[self.column])

    def gather_grouped(self, mine: Mapping[str, torch.Tensor]) -> OrderedDict | None:
        """Collective: this rank's state-dict-shaped halves -> the grouped dict on rank 0, None on 1."""
        other = OrderedDict()
        for key, value in mine.items():            # both ranks hold the split layers, in this order
            if key.split(".", 1)[0] not in SPLIT_LAYERS:
                continue
            value = value.detach().contiguous()
            parts = [torch.empty_like(value) for _ in range(2)] if self.is_root else None
            td.gather(value, parts, dst=self._root(), group=self.group)
            if self.is_root:
                other[key] = parts[1]
        return merge_state_dicts(mine, other) if self.is_root else None

    def grouped_state_dict(self) -> OrderedDict | None:
        """Collective: the grouped state dict on rank 0 (on rank 0's device), None on rank 1."""
        return self.gather_grouped(self.state_dict())
