"""The paper's update rule and learning-rate schedules.

Section 5 of the paper:

    v <- 0.9 v - 0.0005 * eps * w - eps * dL/dw
    w <- w + v

`torch.optim.SGD` keeps b <- 0.9 b + (g + 0.0005 w) and steps w <- w - eps * b: the learning rate
multiplies the whole velocity at every step. The two agree while eps is constant (v = -eps * b), but
after a drop SGD's old momentum is scaled down at once by the new eps, while the paper's velocity
carries the old step size and decays with the momentum. `PaperSGD` is the paper's rule; on CUDA it runs
as one Triton pass per parameter (`alexnet.kernels.paper_update`) instead of four foreach passes.
"""

from __future__ import annotations

import torch
from torch import nn

from alexnet.errors import ConfigError
from alexnet.kernels.ops import on_kernel_device


class PaperSGD(torch.optim.Optimizer):
    """SGD with the learning rate inside the velocity, exactly as written in the paper.

    Each parameter group may set its own `lr` and `weight_decay` (the cuda-convnet recipe gives
    biases twice the rate and no decay: see `param_groups`).
    """

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ConfigError(f"lr, momentum and weight_decay must be >= 0: {lr}, {momentum}, {weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            velocities = []
            for p in params:
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                velocities.append(state["velocity"])
            paper_update(params, grads, velocities, group["lr"], group["momentum"], group["weight_decay"])
        return loss


#: On CUDA, `paper_update` runs the fused Triton kernel (`alexnet.kernels.paper_update`: one pass per
#: parameter instead of four, the same arithmetic and bits) for the float32 parameters it can take. On an
#: H200 the paper's net's step is 7% faster at batch 256 and 11% at 128 (docs/RESULTS.md, 2026-12-01).
FUSED_ON_CUDA = True


def paper_update(params: list[torch.Tensor], grads: list[torch.Tensor], velocities: list[torch.Tensor], eps: float,
                 momentum: float, weight_decay: float) -> None:
    """The paper's rule in place on lists of tensors (whole parameters, or slices of them: the rule is
    elementwise): v <- momentum v - weight_decay eps w - eps g; w <- w + v. On CUDA through the fused
    kernel where it applies (`FUSED_ON_CUDA`), else in four foreach passes."""
    if FUSED_ON_CUDA and any(map(on_kernel_device, params)):
        from alexnet.kernels.paper_update import fusable, update_

        rest = []
        for w, g, v in zip(params, grads, velocities):
            if on_kernel_device(w) and fusable(w, g, v):
                update_(w, g, v, eps, momentum, weight_decay)
            else:
                rest.append((w, g, v))
        if not rest:
            return
        params, grads, velocities = (list(t) for t in zip(*rest))
    foreach_update(params, grads, velocities, eps, momentum, weight_decay)


def foreach_update(params: list[torch.Tensor], grads: list[torch.Tensor], velocities: list[torch.Tensor], eps: float,
                   momentum: float, weight_decay: float) -> None:
    """`paper_update` in four foreach passes: the reference, and the path for any device and dtype."""
    torch._foreach_mul_(velocities, momentum)
    if weight_decay:
        torch._foreach_add_(velocities, params, alpha=-weight_decay * eps)
    torch._foreach_add_(velocities, grads, alpha=-eps)
    torch._foreach_add_(params, velocities)


def param_groups(model: nn.Module, recipe: str, lr: float, weight_decay: float = 5e-4) -> list[dict]:
    """Parameter groups for a recipe: `paper` treats all alike; `cuda-convnet` gives biases
    (1-d parameters) twice the learning rate and no weight decay, as the 2012 code did."""
    if recipe == "paper":
        return [dict(params=list(model.parameters()), lr=lr, weight_decay=weight_decay, name="all")]
    if recipe == "cuda-convnet":
        weights = [p for p in model.parameters() if p.ndim > 1]
        biases = [p for p in model.parameters() if p.ndim <= 1]
        return [dict(params=weights, lr=lr, weight_decay=weight_decay, name="weights"),
                dict(params=biases, lr=2 * lr, weight_decay=0.0, name="biases")]
    raise ConfigError(f"unknown recipe {recipe!r}: paper, cuda-convnet")


class StepDrops:
    """Divide the learning rate by `factor` at fixed epochs (the 2012 run: 25, 51, 79 of 90)."""

    def __init__(self, milestones: list[int], factor: float = 10.0):
        self.milestones, self.factor = sorted(milestones), factor
        self.drops = 0

    def should_drop(self, epoch: int, val_error: float | None) -> bool:
        """Called after `epoch` (1-based) finishes."""
        return epoch in self.milestones

    def state_dict(self) -> dict:
        return {"drops": self.drops}

    def load_state_dict(self, state: dict) -> None:
        self.drops = int(state["drops"])


class PlateauDrops:
    """Divide the rate when the validation error has not improved for `patience` epochs, at most
    `max_drops` times: the paper's "when the validation error rate stopped improving"."""

    def __init__(self, patience: int = 5, max_drops: int = 3, factor: float = 10.0, threshold: float = 1e-3):
        self.patience, self.max_drops, self.factor, self.threshold = patience, max_drops, factor, threshold
        self.best = float("inf")
        self.bad_epochs = 0
        self.drops = 0

    def should_drop(self, epoch: int, val_error: float | None) -> bool:
        if val_error is None or self.drops >= self.max_drops:
            return False
        if val_error < self.best - self.threshold:
            self.best, self.bad_epochs = val_error, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.bad_epochs = 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "drops": self.drops}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs, self.drops = float(state["best"]), int(state["bad_epochs"]), int(state["drops"])


def drop_learning_rate(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Divide every group's rate by `factor`; returns the first group's new rate."""
    for group in optimizer.param_groups:
        group["lr"] /= factor
    return optimizer.param_groups[0]["lr"]
