"""The paper's two-GPU model parallelism: one column of `alexnet2012` per device.

Krizhevsky et al. put half of the kernels of every layer on each of two GTX 580s; the GPUs talked
only at certain layers (PAPER.md, Architecture):

    conv1  each column: 48 kernels over the whole image         (both columns read the same input)
    conv2  48 -> 128, own column only
    conv3  256 -> 192: reads BOTH columns' pool2 maps           <- exchange 128x13x13 per image
    conv4  192 -> 192, own column;  conv5  192 -> 128, own column
    fc6    9216 -> 2048: reads both columns' pool5 maps         <- exchange 128x6x6 = 4608
    fc7    4096 -> 2048: reads both columns' fc6 outputs        <- exchange 2048
    fc8    4096 -> 1000 on column 0 only                        <- column 1 sends its 2048 fc7 outputs

Column i owns output channels `chunk(2, dim=0)[i]` of conv1-conv5, fc6 and fc7 of the grouped
`AlexNet2012` (the single-device form, `groups=2`), so `split_state_dict` / `merge_state_dicts`
convert a checkpoint either way and the split network computes exactly the grouped one.

fc8 is kept whole on column 0 in both recipes. The 2012 code (`layers-145`) computed fc8 on the
first GPU; the paper's figure draws fc8 across both columns, but splitting its 1000 outputs would
only add one more exchange (the logits, for the softmax) for a layer that holds 7% of the
parameters. Column 0 therefore holds 32,531,112 parameters and column 1 28,434,112.

Response normalisation never crosses columns (each GPU normalised its own maps): in a column it is
a plain window over the column's own channels. Dropout: the grouped model draws one mask over the
4096 units of fc6/fc7; here each column draws its own mask over its 2048 units: the same
distribution, not the same draws, so equivalence tests run in eval mode or with `dropout=0`.

Two forms:

* `TwoDeviceAlexNet`: both columns in one process, column i on `devices[i]`. The exchanges are
  explicit `.to(other_device)` copies; autograd sends the gradients back the same way. When both
  devices are the same CUDA device, the two columns run on two CUDA streams; on CPU they run one
  after the other.
* `DistributedColumnAlexNet`: one column per process (`torchrun --nproc-per-node 2`); the exchanges
  are an autograd-aware all-gather into conv3, fc6 and fc7 (backward: reduce-scatter of the
  gradients) and a gather to rank 0 into fc8 (backward: scatter). Rank 0 returns the logits,
  rank 1 a 0-dim placeholder tied to the graph; see its docstring for the training step.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.errors import CheckpointError, ConfigError
from alexnet.layers import (LRN_ALPHA, LRN_BETA, LRN_K, LRN_SIZE, Overhang, ResponseNorm,
                            WithinMapNorm, activation, lrn_scale)
from alexnet.models.alexnet2012 import POOLING, AlexNet2012, AlexNet2012Config

#: Layers split by output channels between the columns, in the grouped model's order.
SPLIT_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
#: Layers held whole by column 0.
COLUMN0_LAYERS = ("fc8",)
#: The layers whose input is the concatenation of both columns (the exchange points).
EXCHANGE_LAYERS = ("conv3", "fc6", "fc7", "fc8")
_PREFIXES = ("_orig_mod.", "module.")


def _config(config: AlexNet2012Config | None, options: dict) -> AlexNet2012Config:
    if config is not None and options:
        raise ConfigError("give a config or options, not both")
    cfg = config or AlexNet2012Config(**options)
    if cfg.columns != 2:
        raise ConfigError("the column-parallel network needs columns=2 (the one-column net has no second device)")
    return cfg


class Column(nn.Module):
    """One column (one GPU) of the 2012 network: half the kernels of conv1-conv5, fc6 and fc7,
    and fc8 whole on column 0 only. Parameter names mirror `AlexNet2012`'s (`conv1.weight`, ...),
    with the shapes of `split_state_dict`'s halves.

    The stages, for a 224 input (shapes per image; the `both` inputs are the two columns' tensors
    concatenated along dimension 1, this column's first when index is 0):

        stem(x)        (3, 224, 224)          -> (128, 13, 13)   conv1, conv2 and their norms/pools
        middle(both)   (256, 13, 13)          -> (128, 6, 6)     conv3, conv4, conv5, pool5
        fc6_stage(both) (9216,)               -> (2048,)         fc6, ReLU, dropout
        fc7_stage(both) (4096,)               -> (2048,)         fc7, ReLU (dropout: `drop7`)
        fc8(both)      (4096,)                -> (classes,)      column 0 only
    """

    def __init__(self, config: AlexNet2012Config | None = None, index: int = 0, **options):
        super().__init__()
        cfg = _config(config, options)
        if index not in (0, 1):
            raise ConfigError(f"column index must be 0 or 1, not {index}")
        self.config, self.index = cfg, index
        code = cfg.recipe == "cuda-convnet"
        scale = lrn_scale(LRN_ALPHA, LRN_SIZE, "cuda-convnet" if code else "paper")
        pool_k, pool_s = POOLING[cfg.pooling]

        def norm():  # the column's own channels: no window crosses into the other column
            return ResponseNorm(LRN_SIZE, scale, LRN_BETA, LRN_K, groups=1) if cfg.response_norm else nn.Identity()

        self.pad1 = Overhang(11, 4)
        self.conv1 = nn.Conv2d(3, 48, 11, stride=4)
        self.act1 = activation(cfg.activation)
        self.norm1 = norm()
        self.pool1 = nn.MaxPool2d(pool_k, pool_s)
        self.conv2 = nn.Conv2d(48, 128, 5, padding=2)
        self.act2 = activation(cfg.activation)
        self.norm2 = norm()
        self.mapnorm2 = WithinMapNorm(5, 1e-3 / 25, 0.75, 1.0) if code and cfg.response_norm else nn.Identity()
        self.pool2 = nn.MaxPool2d(pool_k, pool_s)
        self.conv3 = nn.Conv2d(256, 192, 3, padding=1)      # both columns' conv2 maps
        self.act3 = activation(cfg.activation)
        self.conv4 = nn.Conv2d(192, 192, 3, padding=1)
        self.act4 = activation(cfg.activation)
        self.conv5 = nn.Conv2d(192, 128, 3, padding=1)
        self.act5 = activation(cfg.activation)
        self.pool5 = nn.MaxPool2d(pool_k, pool_s)
        self.fc6 = nn.Linear(256 * 6 * 6, 2048)             # both columns' pool5 maps
        self.act6 = activation(cfg.activation)
        self.drop6 = nn.Dropout(cfg.dropout)
        self.fc7 = nn.Linear(4096, 2048)                    # both columns' fc6 outputs
        self.act7 = activation(cfg.activation)
        self.drop7 = nn.Dropout(cfg.dropout)
        self.fc8 = nn.Linear(4096, cfg.num_classes) if index == 0 else None
        self.reset_parameters()

    @property
    def has_fc8(self) -> bool:
        return self.fc8 is not None

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 and conv2 with their normalisation and pooling: (N, 3, 224, 224) -> (N, 128, 13, 13)."""
        x = self.conv1(self.pad1(x))
        if self.config.recipe == "cuda-convnet":          # the 2012 code: conv, LRN, pool, ReLU
            x = self.act1(self.pool1(self.norm1(x)))
        else:
            x = self.pool1(self.norm1(self.act1(x)))
        return self.pool2(self.mapnorm2(self.norm2(self.act2(self.conv2(x)))))

    def middle(self, both: torch.Tensor) -> torch.Tensor:
        """conv3 (reading both columns) to pool5: (N, 256, 13, 13) -> (N, 128, 6, 6)."""
        x = self.act3(self.conv3(both))
        x = self.act4(self.conv4(x))
        return self.pool5(self.act5(self.conv5(x)))

    def fc6_stage(self, both: torch.Tensor) -> torch.Tensor:
        """(N, 9216) -> (N, 2048), after ReLU and dropout."""
        return self.drop6(self.act6(self.fc6(both)))

    def fc7_stage(self, both: torch.Tensor) -> torch.Tensor:
        """(N, 4096) -> (N, 2048), after ReLU, before dropout (Figure 4's code is this, concatenated)."""
        return self.act7(self.fc7(both))

    def forward(self, *_):  # a column is driven stage by stage
        raise TypeError("a Column is run by TwoDeviceAlexNet or DistributedColumnAlexNet, stage by stage")

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The grouped model's initialisation (same distributions, not the same draws)."""
        wide = {"conv3", "conv4", "conv5"} if self.config.recipe == "cuda-convnet" else set()
        unit = {"conv2", "conv4", "conv5", "fc6", "fc7"}
        for name in SPLIT_LAYERS + (COLUMN0_LAYERS if self.has_fc8 else ()):
            layer = getattr(self, name)
            layer.weight.normal_(0.0, 0.03 if name in wide else 0.01)
            layer.bias.fill_(self.config.unit_bias if name in unit else 0.0)


# --------------------------------------------------------------------------------------------
# Checkpoints: grouped <-> two columns


def _strip(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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
    """A grouped `AlexNet2012` state dict -> (column 0's, column 1's), keys unchanged.

    conv1-conv5, fc6 and fc7 are split by output channels (`chunk(2, dim=0)`); fc8 goes whole to
    column 0. The halves are copies (saving one does not save the other's storage). A `module.` or
    `_orig_mod.` prefix (DDP, torch.compile) is dropped.
    """
    sd = _strip(grouped_sd)
    known = set(SPLIT_LAYERS) | set(COLUMN0_LAYERS)
    unknown = sorted(k for k in sd if _layer(k) not in known)
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
    sd0, sd1 = _strip(sd0), _strip(sd1)
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
    velocity). Shaped like a state dict, so `split_state_dict` / `merge_state_dicts` convert it:
    e.g. `merge_state_dicts(named_optimizer_state(two.columns[0], opt), named_optimizer_state(two.columns[1], opt))`."""
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


# --------------------------------------------------------------------------------------------
# Both columns in one process


def _two_devices(devices: Sequence | None) -> tuple[torch.device, torch.device]:
    if devices is None:
        if torch.cuda.is_available():
            devices = ("cuda:0", "cuda:1") if torch.cuda.device_count() >= 2 else ("cuda:0", "cuda:0")
        else:
            devices = ("cpu", "cpu")
    devs = tuple(torch.device(d) for d in devices)
    if len(devs) != 2:
        raise ConfigError(f"two devices, one per column, not {len(devs)}")
    return devs


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """An explicit inter-column copy (asynchronous only into CUDA memory, where it is safe)."""
    return t.to(device, non_blocking=device.type == "cuda")


class TwoDeviceAlexNet(nn.Module):
    """The 2012 network with column i on `devices[i]`, in one process.

    `devices=None` picks ("cuda:0", "cuda:1") with two GPUs, one GPU twice (two CUDA streams)
    with one, else ("cpu", "cpu"). Inputs may live anywhere; the logits come back on devices[0].
    The only cross-device traffic is the input batch (both columns read the whole image) and the
    copies into conv3, fc6, fc7 and fc8; gradients return through the same copies.

    Training is the grouped model's loop unchanged:

        model = TwoDeviceAlexNet.from_grouped(grouped, ("cuda:0", "cuda:1"))   # or TwoDeviceAlexNet(cfg)
        opt = PaperSGD(param_groups(model, recipe, lr))    # parameters on both devices
        loss = F.cross_entropy(model(x), y.to(model.devices[0])); loss.backward(); opt.step()

    `state_dict()` has keys `columns.0.conv1.weight`, ...; `grouped_state_dict()` gives the
    single-device form, and `load_state_dict` takes either.
    """

    def __init__(self, config: AlexNet2012Config | None = None, devices: Sequence | None = None, **options):
        super().__init__()
        cfg = _config(config, options)
        self.config = cfg
        devs = _two_devices(devices)
        self.columns = nn.ModuleList([Column(cfg, i).to(d) for i, d in enumerate(devs)])
        self._stream_cache: tuple = (None, None)

    # -- conversion ---------------------------------------------------------------------------
    @classmethod
    def from_grouped(cls, model: AlexNet2012, devices: Sequence | None = None) -> "TwoDeviceAlexNet":
        """A two-column copy of a grouped `AlexNet2012` (weights split; train/eval mode kept)."""
        devs = _two_devices(devices)
        with torch.device("meta"):                  # no random init: the weights come from `model`
            out = cls(model.config, ("meta", "meta"))
        for column, half, device in zip(out.columns, split_state_dict(model.state_dict()), devs):
            column.to_empty(device=device)
            column.load_state_dict(half)
        return out.train(model.training)

    def to_grouped(self, device=None) -> AlexNet2012:
        """The single-device `AlexNet2012` with these weights, on `device` (default devices[0])."""
        with torch.device("meta"):
            model = AlexNet2012(self.config)
        model.to_empty(device=device or self.devices[0])
        model.load_state_dict(self.grouped_state_dict())
        return model.train(self.training)

    @property
    def devices(self) -> tuple[torch.device, torch.device]:
        """Where the columns are now (read from their weights, so `.to()` keeps it true)."""
        return tuple(c.conv1.weight.device for c in self.columns)

    @property
    def _streams(self):
        """Two CUDA streams when both columns share one CUDA device, else None."""
        d0, d1 = self.devices
        if d0 != d1 or d0.type != "cuda":
            return None
        if self._stream_cache[0] != d0:
            self._stream_cache = (d0, [torch.cuda.Stream(device=d0) for _ in range(2)])
        return self._stream_cache[1]

    def grouped_state_dict(self) -> OrderedDict:
        return merge_state_dicts(self.columns[0].state_dict(), self.columns[1].state_dict())

    def load_grouped_state_dict(self, sd: Mapping[str, torch.Tensor]) -> None:
        for column, half in zip(self.columns, split_state_dict(sd)):
            column.load_state_dict(half)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Either this module's own state dict (`columns.i.*`) or a grouped `AlexNet2012` one."""
        if any(k.startswith("columns.") for k in state_dict):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        halves = split_state_dict(state_dict)
        results = [c.load_state_dict(h, strict=strict, assign=assign) for c, h in zip(self.columns, halves)]
        missing = [f"columns.{i}.{k}" for i, r in enumerate(results) for k in r.missing_keys]
        unexpected = [f"columns.{i}.{k}" for i, r in enumerate(results) for k in r.unexpected_keys]
        return nn.modules.module._IncompatibleKeys(missing, unexpected)

    # -- the forward pass ---------------------------------------------------------------------
    def _both(self, fns, inputs):
        """Run fns[i](inputs[i]) for both columns: on two streams when they share a CUDA device."""
        streams = self._streams
        if streams is None:
            return [f(x) for f, x in zip(fns, inputs)]
        current = torch.cuda.current_stream(self.devices[0])
        outs = []
        for stream, f, x in zip(streams, fns, inputs):
            stream.wait_stream(current)
            with torch.cuda.stream(stream):
                x.record_stream(stream)
                outs.append(f(x))
        for stream, y in zip(streams, outs):
            current.wait_stream(stream)
            y.record_stream(current)
        return outs

    def _exchange(self, halves: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each column's input from both columns: [cat(h0, h1) on device 0, cat(h0, h1) on device 1]."""
        return [torch.cat([_to(h, d) for h in halves], dim=1) for d in self.devices]

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """fc7 after ReLU, before dropout, both columns concatenated on devices[0]: (N, 4096)."""
        return torch.cat([_to(h, self.devices[0]) for h in self._hidden_halves(x)], dim=1)

    def _hidden_halves(self, x: torch.Tensor) -> list[torch.Tensor]:
        c0, c1 = self.columns
        a = self._both([c0.stem, c1.stem], [_to(x, d) for d in self.devices])
        b = self._both([c0.middle, c1.middle], self._exchange(a))                  # conv3
        b = [t.flatten(1) for t in b]
        h = self._both([c0.fc6_stage, c1.fc6_stage], self._exchange(b))            # fc6
        return self._both([c0.fc7_stage, c1.fc7_stage], self._exchange(h))         # fc7

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = [c.drop7(t) for c, t in zip(self.columns, self._hidden_halves(x))]
        both = torch.cat([h[0], _to(h[1], self.devices[0])], dim=1)                 # fc8
        return self.columns[0].fc8(both)


# --------------------------------------------------------------------------------------------
# One column per process


def _dist():
    import torch.distributed as dist

    if not dist.is_available():
        raise ConfigError("torch.distributed is not available in this build of torch")
    return dist


class _AllGatherCat(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 1. Backward: the sum over ranks of the gradient
    of each rank's slice, delivered to that rank (a reduce-scatter; NCCL does it as one, other
    backends all-reduce the whole gradient and keep their slice)."""

    @staticmethod
    def forward(ctx, x, group):
        dist = _dist()
        ctx.group = group
        ctx.rank, ctx.world = dist.get_rank(group), dist.get_world_size(group)
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad):
        dist = _dist()
        chunks = [g.contiguous() for g in grad.chunk(ctx.world, dim=1)]
        if grad.is_cuda and "nccl" in str(dist.get_backend(ctx.group)):
            out = torch.empty_like(chunks[ctx.rank])
            dist.reduce_scatter(out, chunks, group=ctx.group)
            return out, None
        full = grad.contiguous().clone()
        dist.all_reduce(full, group=ctx.group)
        return full.chunk(ctx.world, dim=1)[ctx.rank].contiguous(), None


class _GatherCat(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 1 on the group's rank 0; other ranks get a 0-dim
    zero tied to the graph. Backward: rank 0 scatters each rank's slice of the gradient back (the
    gradient arriving at the other ranks' placeholders is ignored)."""

    @staticmethod
    def forward(ctx, x, group):
        dist = _dist()
        ctx.group = group
        ctx.rank, ctx.world = dist.get_rank(group), dist.get_world_size(group)
        ctx.root = dist.get_global_rank(group, 0) if group is not None else 0
        ctx.shape, ctx.dtype, ctx.device = x.shape, x.dtype, x.device
        x = x.contiguous()
        if ctx.rank == 0:
            parts = [torch.empty_like(x) for _ in range(ctx.world)]
            dist.gather(x, parts, dst=ctx.root, group=group)
            return torch.cat(parts, dim=1)
        dist.gather(x, None, dst=ctx.root, group=group)
        return x.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        dist = _dist()
        out = torch.empty(ctx.shape, dtype=ctx.dtype, device=ctx.device)
        if ctx.rank == 0:
            chunks = [g.contiguous() for g in grad.chunk(ctx.world, dim=1)]
            dist.scatter(out, chunks, src=ctx.root, group=ctx.group)
        else:
            dist.scatter(out, None, src=ctx.root, group=ctx.group)
        return out, None


def all_gather_cat(x: torch.Tensor, group=None) -> torch.Tensor:
    """Autograd-aware all-gather along dim 1 (every rank must call it, in the same order)."""
    return _AllGatherCat.apply(x, group)


def gather_cat(x: torch.Tensor, group=None) -> torch.Tensor:
    """Autograd-aware gather along dim 1 to the group's rank 0; others get a 0-dim placeholder."""
    return _GatherCat.apply(x, group)


class DistributedColumnAlexNet(Column):
    """Column `rank` of the 2012 network in a process group of two (`torchrun --nproc-per-node 2`).

    This process holds only its column's weights (and so only their gradients and optimizer
    state); `state_dict()` is `split_state_dict(grouped)[rank]`. Move it to the rank's device
    (`.to(f"cuda:{local_rank}")`); gloo on CPU and NCCL on GPU both work.

    Both ranks must feed the SAME images (each column's conv1 sees the whole image: do not shard
    the batch with a DistributedSampler; use the same seed, or `broadcast_batch`). Labels are only
    read on rank 0. The forward pass makes, in this order, three all-gathers (into conv3, fc6,
    fc7) and a gather to rank 0 (into fc8); the backward pass makes the matching reduce-scatters
    and scatter in reverse order. Every call is collective: both ranks run forward and backward
    the same number of times, in the same order, with the same batch shape.

    forward(x) returns the logits (N, classes) on rank 0 and, on rank 1, a 0-dim zero tied to the
    graph. `loss(out, y)` returns the loss on rank 0 and the placeholder on rank 1, so one training
    step is the same program on both ranks:

        model = DistributedColumnAlexNet(cfg).to(device)   # or .load_grouped_state_dict(sd) after
        opt = PaperSGD(param_groups(model, cfg.recipe, lr))
        out = model(x)                  # x: the same batch on both ranks
        loss = model.loss(out, y)       # rank 0: cross-entropy; rank 1: the placeholder
        opt.zero_grad(); loss.backward(); opt.step()     # on both ranks
        # log loss.item() on rank 0 only (rank 1's is 0.0), or model.shared_loss(loss) on both

    Evaluation is the same forward under `torch.no_grad()` on both ranks; rank 0 scores the logits.

    On rank 1, `loss.backward()` starts at the placeholder: the gradient it carries is ignored and
    its backward receives rank 1's fc7 gradient from rank 0 (the scatter), then runs the same
    reduce-scatters as rank 0 through fc6 and conv3.
    """

    def __init__(self, config: AlexNet2012Config | None = None, group=None, **options):
        dist = _dist()
        if not dist.is_initialized():
            raise ConfigError("DistributedColumnAlexNet needs an initialised process group (torchrun; "
                              "alexnet.parallel.distributed.init_from_env())")
        world = dist.get_world_size(group)
        if world != 2:
            raise ConfigError(f"the column-parallel network needs a process group of 2, not {world}")
        super().__init__(config, dist.get_rank(group), **options)
        self.group = group

    @property
    def rank(self) -> int:
        return self.index

    @property
    def is_root(self) -> bool:
        """True on the rank that holds fc8 and computes the loss."""
        return self.index == 0

    def hidden_half(self, x: torch.Tensor) -> torch.Tensor:
        """This column's fc7 half, after ReLU, before dropout: (N, 2048)."""
        a = self.stem(x)
        b = self.middle(all_gather_cat(a, self.group))                             # conv3
        h = self.fc6_stage(all_gather_cat(b.flatten(1), self.group))              # fc6
        return self.fc7_stage(all_gather_cat(h, self.group))                       # fc7

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both = gather_cat(self.drop7(self.hidden_half(x)), self.group)             # fc8
        return self.fc8(both) if self.is_root else both

    def loss(self, out: torch.Tensor, target: torch.Tensor, criterion=F.cross_entropy) -> torch.Tensor:
        """Rank 0: criterion(logits, target). Rank 1: `out` itself (the placeholder) to call
        backward on."""
        return criterion(out, target) if self.is_root else out

    def shared_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Collective: rank 0's loss value (detached) on both ranks, for logging or divergence checks."""
        dist = _dist()
        value = loss.detach().reshape(()).clone()
        src = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        dist.broadcast(value, src=src, group=self.group)
        return value

    def broadcast_batch(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Give rank 1 rank 0's batch (in place; same shapes and dtypes needed on both ranks)."""
        dist = _dist()
        src = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        for t in tensors:
            dist.broadcast(t, src=src, group=self.group)
        return tensors

    def load_grouped_state_dict(self, sd: Mapping[str, torch.Tensor]) -> None:
        """Load this rank's half of a grouped checkpoint (every rank reads the whole file)."""
        self.load_state_dict(split_state_dict(sd)[self.index])

    def grouped_state_dict(self) -> OrderedDict | None:
        """Collective: the grouped state dict on rank 0 (on rank 0's device), None on rank 1."""
        dist = _dist()
        dst = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        mine = self.state_dict()
        other = OrderedDict()
        for key, value in mine.items():            # both ranks hold the split layers, in this order
            if _layer(key) not in SPLIT_LAYERS:
                continue
            value = value.detach().contiguous()
            parts = [torch.empty_like(value) for _ in range(2)] if self.is_root else None
            dist.gather(value, parts, dst=dst, group=self.group)
            if self.is_root:
                other[key] = parts[1]
        return merge_state_dicts(mine, other) if self.is_root else None


__all__ = ["COLUMN0_LAYERS", "Column", "DistributedColumnAlexNet", "EXCHANGE_LAYERS", "SPLIT_LAYERS",
           "TwoDeviceAlexNet", "all_gather_cat", "gather_cat", "load_named_optimizer_state", "merge_state_dicts",
           "named_optimizer_state", "split_state_dict"]
