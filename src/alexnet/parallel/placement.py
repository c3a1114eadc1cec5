"""Where a run's network lives, and how its state maps to the one checkpoint form.

* `single`: one device.
* `ddp`: a replica per process (torchrun), the batch sharded, gradients all-reduced: by torch's
  DistributedDataParallel (`reduce="ddp"`: bucketed, overlapped with the backward pass by hooks on
  the host), or by the step itself after the backward pass (`reduce="step"`: one all-reduce per
  bucket of gradients of up to 25 MB, as DDP's, a larger gradient alone and in place, issued from the
  step, so the whole step with its all-reduces can be one CUDA graph), or
  by the step with the classifier's all-reduces overlapped with the convolutions' backward pass
  (`reduce="overlap"`, for networks with `convolutions` and `classifier` parts, the paper's net:
  the step runs the backward pass in two parts, `TrainStep`; other networks as "step"), or as
  "overlap" with the classifier's gradients reduce-scattered and its update shared out, each process
  updating its share and the shares all-gathered during the next step's convolutions
  (`reduce="shard"`, `alexnet.parallel.shard`; fp32 only; other networks as "step").
  `reduce_dtype="bf16"` all-reduces the gradients in bf16 (half the bytes; each gradient rounded to
  bf16 on the way: a deviation from the exact mean, `--ddp-reduce-dtype`).
* `columns`: the paper's two columns in this process (`TwoDeviceAlexNet`): two GPUs, or one GPU's
  two streams, or the CPU twice.
* `columns-distributed`: one column per process (`DistributedColumnAlexNet`), both reading the
  whole batch.

Checkpoints are always in the grouped form: `model` is an `AlexNet2012`-style state dict and
`optimizer` the state dict a `PaperSGD` over the grouped model would have (velocities in its
parameter order), so a run in any form resumes from, and `alexnet eval` reads, any other's.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.checkpoint import unwrap
from alexnet.data.loader import shard_bounds
from alexnet.errors import ConfigError
from alexnet.evaluate import evaluate_split
from alexnet.models.alexnet2012 import AlexNet2012
from alexnet.optim import param_groups
from alexnet.parallel.columns import DistributedColumnAlexNet, TwoDeviceAlexNet
from alexnet.parallel.convert import (load_named_optimizer_state, merge_state_dicts, named_optimizer_state,
                                      split_state_dict)
from alexnet.parallel.distributed import DistributedContext
from alexnet.parallel.shard import ClassifierShards

__all__ = ["Placement", "place", "REDUCES", "auto_reduce", "buckets"]

REDUCES = ("ddp", "step", "overlap", "shard")
STEP_REDUCES = REDUCES[1:]  # the gradients reduced by the step itself (not DDP's wrapper)
REDUCE_DTYPES = {"fp32": None, "bf16": torch.bfloat16}

BUCKET_BYTES = 25 * 2**20  # the step's all-reduce buckets: DDP's default size


def auto_reduce(graphs: bool, reduce_dtype: str = "fp32") -> str:
    """`--ddp-reduce auto`: with the step a CUDA graph, "shard" (weak scaling 0.95-0.98 on two H200s
    at 128 and 256 per GPU against 0.90-0.95 for "overlap", docs/RESULTS.md, seventh session) where the all-reduce is
    fp32, "overlap" with bf16 (shard is fp32 only); without graphs, torch's DDP wrapper."""
    if not graphs:
        return "ddp"
    return "shard" if reduce_dtype == "fp32" else "overlap"


def buckets(tensors: list[torch.Tensor], limit: int = BUCKET_BYTES) -> list[list[torch.Tensor]]:
    """Consecutive `tensors` grouped into buckets of at most `limit` bytes, one collective each (fewer
    launches); a tensor larger than `limit` is a bucket of its own (reduced in place, never copied)."""
    out, size = [], 0
    for t in tensors:
        n = t.numel() * t.element_size()
        if not out or size + n > limit:
            out.append([])
            size = 0
        out[-1].append(t)
        size += n
    return out


def place(model: nn.Module, parallel: str, dist: DistributedContext, devices: list[torch.device],
          recipe: str, memory_format=torch.contiguous_format, reduce: str = "ddp",
          reduce_dtype: str = "fp32") -> "Placement":
    """Put a freshly built (grouped) model where the run wants it, in `memory_format` (before DDP
    builds its gradient buckets, which must match the parameters' strides). `reduce`: how data
    parallelism all-reduces the gradients ("ddp", "step" or "overlap", see the module's text)."""
    model = model.to(memory_format=memory_format)
    if parallel == "columns" and dist.enabled:
        if dist.world_size != 2:
            raise ConfigError(f"--parallel columns runs in one process or in two (torchrun --nproc-per-node 2), "
                              f"not {dist.world_size}")
        column = DistributedColumnAlexNet(model.config).to(dist.device).to(memory_format=memory_format)
        column.load_grouped_state_dict(model.state_dict())
        return Placement("columns-distributed", column.train(), dist, recipe)
    if parallel == "columns":
        two = TwoDeviceAlexNet.from_grouped(model, devices).to(memory_format=memory_format)
        return Placement("columns", two.train(), dist, recipe)
    return Placement("ddp" if dist.enabled else "single", model.to(devices[0]), dist, recipe, reduce, reduce_dtype)


class Placement:
    """The network of a run (`model`), what the training step calls (`net`), and its state in the
    grouped checkpoint form."""

    def __init__(self, kind: str, model: nn.Module, dist: DistributedContext, recipe: str, reduce: str = "ddp",
                 reduce_dtype: str = "fp32"):
        if reduce not in REDUCES:
            raise ConfigError(f"reduce must be one of {', '.join(REDUCES)}, not {reduce!r}")
        if reduce_dtype not in REDUCE_DTYPES:
            raise ConfigError(f"reduce_dtype must be one of {', '.join(REDUCE_DTYPES)}, not {reduce_dtype!r}")
        self.low = REDUCE_DTYPES[reduce_dtype] if kind == "ddp" else None  # None: fp32, exact
        self.kind, self.model, self.dist, self.recipe = kind, model, dist, recipe
        self.reduce = reduce if kind == "ddp" else None
        if self.reduce == "shard" and self.low is not None:
            raise ConfigError("the sharded classifier update all-reduces in fp32 only: drop --ddp-reduce-dtype bf16")
        # reduce="overlap" or "shard": the network's two parts, what the step calls for each (compiled apart)
        self.parts = self.shards = None
        if self.reduce in ("overlap", "shard") and callable(getattr(model, "convolutions", None)) and \
                callable(getattr(model, "classifier", None)):
            self.parts = [model.convolutions, model.classifier]
            late = {id(p) for p in model.classifier_parameters()}
            self.late_params = [p for p in model.parameters() if id(p) in late]
            self.early_params = [p for p in model.parameters() if id(p) not in late]
        if self.reduce in STEP_REDUCES:
            dist.broadcast_(list(model.state_dict().values()))      # rank 0's start, as DDP's wrapper does
        if self.reduce == "shard" and self.parts is not None:
            self.shards = ClassifierShards(self.late_params, dist)
        self.net = dist.wrap(model, self.low is not None) if self.reduce == "ddp" else model
        self._names = None

    def reduce_gradients(self) -> None:
        """reduce="step" (or "overlap" for a network without parts): every gradient made the mean over
        the processes, as DDP's reducer makes it (NCCL's AVG, or the sum divided by the process count).
        Called by the step after backward."""
        if self.reduce not in STEP_REDUCES or self.parts is not None:
            return
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        self._finish([self._start(b) for b in buckets(grads)])

    def _start(self, grads: list, wait: bool = True) -> tuple:
        """Start (or, with `wait`, do) one all-reduce of `grads` towards their mean: a single tensor in
        place, several flattened into one buffer (one collective instead of one per tensor, each with
        its launch latency); in bf16 when asked. Returns (grads, the buffer reduced, the work or None)."""
        flat = grads[0] if len(grads) == 1 else torch.cat([g.reshape(-1) for g in grads])
        buf = flat.to(self.low) if self.low is not None else flat
        return grads, buf, self.dist.reduce_(buf, wait=wait)

    def _finish(self, started: list) -> None:
        """Wait for the all-reduces `_start` started, copy bf16 or flattened results back into the
        gradients, and (where the collective made the sum: gloo) divide by the process count."""
        self.dist.wait([work for _, _, work in started])
        for grads, buf, _ in started:
            if len(grads) == 1:
                if buf is not grads[0]:
                    grads[0].copy_(buf)
            else:
                views = [v.view_as(g) for v, g in zip(buf.split([g.numel() for g in grads]), grads)]
                torch._foreach_copy_(grads, views)
        self.dist.finish_mean_([g for grads, _, _ in started for g in grads])

    def start_classifier_reduce(self):
        """reduce="overlap" or "shard", after the classifier's backward pass: its all-reduces started,
        one per bucket (shard: its reduce-scatter; NCCL: on NCCL's stream, beside the convolutions'
        backward pass). Returns what `finish_reduce` waits on."""
        late = self.late_params if self.shards is None else self.shards.whole
        started = [self._start(b, wait=False) for b in buckets([p.grad for p in late if p.grad is not None])]
        return started if self.shards is None else (started, self.shards.start_reduce())

    def finish_reduce(self, started) -> None:
        """reduce="overlap" or "shard", after the convolutions' backward pass: their gradients
        all-reduced (one bucket for the paper's net: 9 MB), the classifier's waited for, every gradient
        (shard: this rank's share of the classifier's) the mean over the processes (DDP's)."""
        early = [p.grad for p in self.early_params if p.grad is not None]
        whole, sharded = (started, None) if self.shards is None else started
        self._finish([self._start(b) for b in buckets(early)] + whole)
        if sharded is not None:
            self.shards.finish_reduce(sharded)

    def start_gather(self):
        """reduce="shard", at the start of a step: the classifier's shares gathered (beside what runs
        before the classifier); None otherwise."""
        return None if self.shards is None else self.shards.start_gather()

    def finish_gather(self, work) -> None:
        if self.shards is not None:
            self.shards.finish_gather(work)

    def update_classifier(self, optimizer: torch.optim.Optimizer) -> None:
        """reduce="shard", after the optimizer's step (which skipped the classifier): this rank's share."""
        if self.shards is not None:
            self.shards.update(optimizer)

    def settle(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """reduce="shard": the classifier whole on every rank (weights; velocities too, given the
        optimizer); collective. Nothing otherwise."""
        if self.shards is not None:
            self.shards.settle(optimizer)

    @property
    def columns(self) -> bool:
        return self.kind.startswith("columns")

    @property
    def has_logits(self) -> bool:
        """False on rank 1 of one column per process: it has no fc8."""
        return self.kind != "columns-distributed" or self.model.is_root

    @property
    def loader_shard(self) -> tuple[int, int]:
        """(rank, world_size) for the loader: only DDP shards the batch; columns all read all of it."""
        return (self.dist.rank, self.dist.world_size) if self.kind == "ddp" else (0, 1)

    @property
    def weight(self) -> float:
        """This rank's share in a sum over ranks that gives a per-run scalar (loss, error)."""
        if self.kind == "ddp":
            return 1.0 / self.dist.world_size
        if self.kind == "columns-distributed":
            return 1.0 if self.model.is_root else 0.0
        return 1.0

    @property
    def devices(self) -> list[torch.device]:
        if self.kind == "columns":
            return list(self.model.devices)
        return [next(self.model.parameters()).device]

    def describe(self) -> str:
        if self.kind == "columns":
            d0, d1 = self.model.devices
            how = "two CUDA streams on one GPU" if d0 == d1 and d0.type == "cuda" else (
                "one after the other on the CPU" if d0.type == "cpu" else "two devices")
            return f"two columns in one process: column 0 on {d0}, column 1 on {d1} ({how})"
        if self.kind == "columns-distributed":
            return f"one column per process: column {self.dist.rank} on {self.devices[0]} of 2 processes"
        if self.kind == "ddp":
            how = "DDP" if self.reduce == "ddp" else "DDP's start, gradients all-reduced in the step"
            if self.shards is not None:
                how += (", the classifier's reduce-scattered during the convolutions' backward pass, its update "
                        "shared out, the shares gathered during the next forward pass")
            elif self.parts is not None:
                how += ", the classifier's during the convolutions' backward pass"
            if self.low is not None:
                how += ", in bf16"
            return f"data parallel: {self.dist.world_size} processes ({how})"
        return "one device"

    def compile(self) -> None:
        """torch.compile what the step runs: the network, or each column's stages."""
        if self.columns:
            self.model.compile_stages()
        elif self.parts is not None:
            self.parts = [torch.compile(f) for f in self.parts]
        else:
            self.net = torch.compile(self.net)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The cross-entropy (rank 1 of one column per process: the placeholder carrying backward)."""
        if self.kind == "columns-distributed":
            return self.model.loss(logits, labels, lambda o, t: F.cross_entropy(o.float(), t))
        return F.cross_entropy(logits.float(), labels.to(logits.device))

    def eval_part(self, split):
        """The part of `split` this process evaluates: under DDP a contiguous share (no padding, no
        image twice; a share may be empty), else all of it."""
        if self.kind != "ddp":
            return split
        lo, hi = shard_bounds(len(split), self.dist.rank, self.dist.world_size)
        return split.subset(torch.arange(lo, hi))

    def common_eval_batches(self, split, batch_size: int) -> int | None:
        """DDP: how many evaluation batches of `split` every process has (the shares may differ by an
        image, and so by a batch); None where every process runs the same batches."""
        if self.kind != "ddp":
            return None
        ws = self.dist.world_size
        return min(-(-(hi - lo) // batch_size) for lo, hi in (shard_bounds(len(split), r, ws) for r in range(ws)))

    def eval_stop_poll(self, split, batch_size: int, poll):
        """`poll` (a collective) for evaluating `split`, polled only during the batches every process
        has: a process polling once more than another would mismatch the collectives."""
        limit = self.common_eval_batches(split, batch_size)
        if limit is None:
            return poll
        calls = itertools.count(1)
        return lambda: next(calls) <= limit and poll()

    def evaluate(self, part, mean: torch.Tensor, crop: int, crops: int, **options) -> dict:
        """Top-1/top-5 error of `eval_part(split)`, each image counted once, the same dict on every
        process: DDP sums the counts; one column per process runs every batch on both ranks (the
        forward pass is collective) and shares rank 0's result. `options`: those of `evaluate_split`."""
        if self.kind == "ddp":
            self.settle()
            return evaluate_split(unwrap(self.model), part, mean, crop, crops, sum_=self.dist.sum_, **options)
        if self.kind == "columns-distributed":
            result = evaluate_split(_RootLogits(self.model), part, mean, crop, crops, **options)
            return self.dist.broadcast_object(result)
        return evaluate_split(self.model, part, mean, crop, crops, **options)

    # -- checkpoints in the grouped form --------------------------------------------------------
    def _grouped_names(self) -> list[list[str]]:
        """The grouped model's parameter names, per optimizer group, in PaperSGD's order."""
        if self._names is None:
            with torch.device("meta"):
                grouped = AlexNet2012(self.model.config)
            names = {id(p): n for n, p in grouped.named_parameters()}
            self._names = [[names[id(p)] for p in g["params"]] for g in param_groups(grouped, self.recipe, 1.0)]
        return self._names

    def model_state(self) -> dict | None:
        """The grouped state dict on the CPU, on rank 0 (None elsewhere); collective when the columns
        are in two processes."""
        if self.kind == "columns-distributed":
            sd = self.model.grouped_state_dict()
        else:
            self.settle()
            if not self.dist.is_main:
                return None
            sd = self.model.grouped_state_dict() if self.kind == "columns" else unwrap(self.model).state_dict()
        return None if sd is None else {k: v.detach().cpu() for k, v in sd.items()}

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict | None:
        """The grouped model's optimizer state dict on rank 0 (None elsewhere); collective when the
        columns are in two processes."""
        if not self.columns:
            self.settle(optimizer)
            if not self.dist.is_main:
                return None
            return optimizer.state_dict()
        if self.kind == "columns":
            named = merge_state_dicts(*(named_optimizer_state(c, optimizer) for c in self.model.columns))
        else:
            named = self.model.gather_grouped(named_optimizer_state(self.model, optimizer))
            if named is None:
                return None
        state, groups, index = {}, [], 0
        for names, group in zip(self._grouped_names(), optimizer.param_groups):
            ids = []
            for name in names:
                if name in named:
                    state[index] = {"velocity": named[name].detach().cpu()}
                ids.append(index)
                index += 1
            groups.append({k: v for k, v in group.items() if k != "params"} | {"params": ids})
        return {"state": state, "param_groups": groups}

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Load a grouped-form optimizer state dict (from a run in any form)."""
        if not self.columns:
            optimizer.load_state_dict(state)
            return
        names = self._grouped_names()
        flat = [n for group in names for n in group]
        saved_groups = state["param_groups"]
        if [len(g["params"]) for g in saved_groups] != [len(g) for g in names]:
            raise ConfigError("the checkpoint's optimizer state does not match this network's parameters")
        named = {flat[int(i)]: s["velocity"] for i, s in state["state"].items() if "velocity" in s}
        for group, saved in zip(optimizer.param_groups, saved_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        halves = split_state_dict(named)
        if self.kind == "columns":
            for column, half in zip(self.model.columns, halves):
                load_named_optimizer_state(column, optimizer, half)
        else:
            load_named_optimizer_state(self.model, optimizer, halves[self.model.rank])


class _RootLogits(nn.Module):
    """One column per process, evaluated: rank 0's logits; rank 1 (whose forward still takes part
    in the exchanges) returns zeros of the same shape, which are never scored."""

    def __init__(self, model: DistributedColumnAlexNet):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.model.is_root:
            return out
        return torch.zeros(x.shape[0], self.model.config.num_classes, device=x.device)
