"""The classifier's update shared out between the data-parallel processes (`--ddp-reduce shard`).

With `reduce="overlap"` every process all-reduces the classifier's gradients (fc6-fc8: 58.6 M of the
paper's 61 M parameters) and then applies the paper's update to all of them: the same arithmetic on
every process. Here, as in the first stage of ZeRO (Rajbhandari et al., 2020), for the classifier
only:

1. after the classifier's backward pass each of its gradients is reduce-scattered (beside the
   convolutions' backward pass): process r receives the mean of the r-th of N equal slices of it;
2. each process applies the paper's update (`alexnet.optim.paper_update`) to its slice of each
   weight and velocity only;
3. the slices of the weights are all-gathered in place at the start of the next step, beside the
   augmentation and the convolutions' forward pass, which do not read them; the classifier's
   forward pass waits for the gather.

The same bytes cross the link (an all-reduce is a reduce-scatter and an all-gather), the classifier's
update costs each process 1/N of it, and the gather leaves the path between the backward pass and
the update. Weights and velocities are those of "overlap", element for element: the same update of
the same mean gradient, computed once instead of N times. A parameter whose size N does not divide
is all-reduced whole and updated by the optimizer, as with "overlap".

Between an update and the next step's gather the other processes' slices are stale here: `settle()`
gathers weights and velocities before anything reads the whole network (evaluation, checkpoints).
"""

from __future__ import annotations

import torch
from torch import nn

from alexnet.optim import paper_update

__all__ = ["ClassifierShards"]


class ClassifierShards:
    """This rank's slices of `params` (`sharded`; the others are `whole`), and the collectives and
    update of the module's text."""

    def __init__(self, params: list[nn.Parameter], dist):
        self.dist = dist
        world = dist.world_size
        self.sharded = [p for p in params if p.numel() % world == 0]
        self.whole = [p for p in params if p.numel() % world]
        for p in self.sharded:
            if not p.is_contiguous():
                raise ValueError(f"a sharded parameter must be contiguous, got strides {p.stride()}")
        self.bounds = [(dist.rank * (p.numel() // world), (dist.rank + 1) * (p.numel() // world)) for p in self.sharded]
        self.grad_shares = [torch.empty(hi - lo, device=p.device, dtype=p.dtype)
                            for p, (lo, hi) in zip(self.sharded, self.bounds)]

    def start_reduce(self) -> tuple[list, list]:
        """After the classifier's backward pass: a reduce-scatter of each sharded gradient started.
        Returns the gradients (alive until the collectives are done) and the works, for `finish_reduce`."""
        grads = [p.grad for p in self.sharded]
        if any(g is None for g in grads):
            raise RuntimeError("every sharded parameter needs a gradient after the backward pass")
        return grads, [self.dist.reduce_scatter_(s, g.reshape(-1), wait=False) for s, g in zip(self.grad_shares, grads)]

    def finish_reduce(self, started: tuple[list, list]) -> None:
        """This rank's slice of each mean gradient (the collective's mean, or its sum divided); the whole
        gradients dropped, so that the optimizer's own step skips these parameters."""
        self.dist.wait(started[1])
        self.dist.finish_mean_(self.grad_shares)
        for p in self.sharded:
            p.grad = None

    @torch.no_grad()
    def update(self, optimizer: torch.optim.Optimizer) -> None:
        """The paper's update of this rank's slices, with each parameter group's rate, momentum and decay
        (a velocity the optimizer has not made yet starts at zero, as in `PaperSGD`)."""
        group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        per_group: dict[int, tuple[dict, list, list, list]] = {}
        for p, (lo, hi), g in zip(self.sharded, self.bounds, self.grad_shares):
            state = optimizer.state[p]
            if "velocity" not in state:
                state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            group = group_of[id(p)]
            _, ws, gs, vs = per_group.setdefault(id(group), (group, [], [], []))
            ws.append(p.view(-1)[lo:hi])
            gs.append(g)
            vs.append(state["velocity"].view(-1)[lo:hi])
        for group, ws, gs, vs in per_group.values():
            paper_update(ws, gs, vs, group["lr"], group["momentum"], group["weight_decay"])

    def _gather(self, tensors: list[torch.Tensor], wait: bool) -> list:
        return [self.dist.all_gather_(t.detach().view(-1), wait=wait) for t in tensors]

    def start_gather(self) -> list:
        """Every rank's slices of the weights into this rank's weights, in place (the works to wait on)."""
        return self._gather(self.sharded, wait=False)

    def finish_gather(self, works: list) -> None:
        self.dist.wait(works)

    @torch.no_grad()
    def settle(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Weights (and, given the optimizer, velocities) whole on every rank; collective."""
        self._gather(self.sharded, wait=True)
        if optimizer is not None:
            velocities = [optimizer.state[p].get("velocity") for p in self.sharded]
            if all(v is not None for v in velocities):     # none before the first step
                self._gather(velocities, wait=True)
