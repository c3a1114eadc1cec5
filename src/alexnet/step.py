"""One training step of the paper's recipe, as fast as the machine allows.

A step takes a uint8 batch already on the device and does, there: random crops, flips, PCA colour
noise and mean subtraction (`alexnet.data.augment`), the forward pass, the cross-entropy, the
backward pass and the paper's update (`alexnet.optim.PaperSGD`). It adds the loss and the top-1
misses to on-device sums, so the training loop never waits for the GPU between steps.

Three ways to run the same computation, chosen when the run starts:
* eager;
* compiled (`torch.compile` of the network, or of each column's stages, and of the augmentation);
* replayed as one CUDA graph (`GraphedStep`): after a few eager steps the whole step, update
  included, is captured once and replayed from then on, so a step costs the host a copy and a
  launch. The learning rate is baked into the graph, so a drop captures it again. One device, one
  column per process (the NCCL exchanges inside the graph), and data parallelism with the gradients
  all-reduced by the step (`Placement.reduce_gradients`, the all-reduces inside the graph; with
  `reduce="overlap"` the backward pass runs in two parts, the classifier's then the convolutions',
  and the classifier's all-reduces run beside the second; `reduce="shard"`: its reduce-scatter, and
  the gather of its shared-out update beside the next step's convolutions); not the one-process
  columns. If capture fails the run says why and continues eagerly.
"""

from __future__ import annotations

import warnings

import torch

from alexnet.data.augment import Augment, apply_params, sample_params
from alexnet.parallel.placement import Placement

__all__ = ["TrainStep", "GraphedStep", "make_step"]


class TrainStep:
    """step(images_u8, labels) -> the loss (a device tensor); sums in `loss_sum`, `miss_sum`."""

    def __init__(self, placement: Placement, optimizer: torch.optim.Optimizer, augment: Augment,
                 stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor], generator: torch.Generator,
                 amp_dtype: torch.dtype | None, memory_format=torch.contiguous_format, compile_views: bool = False):
        self.placement, self.optimizer, self.augment, self.generator = placement, optimizer, augment, generator
        self.mean, self.eigvals, self.eigvecs = stats
        self.amp_dtype, self.memory_format = amp_dtype, memory_format
        self.views = torch.compile(apply_params, dynamic=False) if compile_views else apply_params
        device = self.mean.device
        self.loss_sum = torch.zeros((), device=device)
        self.miss_sum = torch.zeros((), device=device)

    def reset_sums(self, loss: float = 0.0, misses: float = 0.0) -> None:
        self.loss_sum.fill_(loss)
        self.miss_sum.fill_(misses)

    def _compute(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        gather = self.placement.start_gather()       # reduce="shard": the classifier's shares, meanwhile
        size = images.shape[-1]
        params = sample_params(images.shape[0], size, self.augment, self.generator, images.device)
        x = self.views(images, self.mean, self.eigvals, self.eigvecs, self.augment, params)
        x = x.contiguous(memory_format=self.memory_format)
        parts = self.placement.parts
        with torch.autocast(x.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            if parts is None:
                logits = self.placement.net(x)
            else:                                    # two parts, so that backward can run in two
                features = parts[0](x)
                self.placement.finish_gather(gather)
                cut = features.detach().requires_grad_()
                logits = parts[1](cut)
            loss = self.placement.loss(logits, labels)
        loss.backward()
        if parts is None:
            self.placement.reduce_gradients()        # data parallel without DDP's wrapper (else nothing)
        else:  # the classifier's gradients all-reduced while the convolutions' backward pass runs
            started = self.placement.start_classifier_reduce()
            features.backward(cut.grad)
            self.placement.finish_reduce(started)
        self.optimizer.step()
        self.placement.update_classifier(self.optimizer)   # reduce="shard": this process's share
        loss = loss.detach().float()
        self.loss_sum += loss
        if self.placement.has_logits:
            self.miss_sum += (logits.detach().argmax(1) != labels.to(logits.device)).float().mean()
        return loss

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        return self._compute(images, labels)

    def release(self) -> None:
        """Free what the step holds on the device beyond the model (nothing here)."""


class GraphedStep(TrainStep):
    """The same step, captured as one CUDA graph after `warmup` eager steps and replayed."""

    def __init__(self, *args, warmup: int = 3, log=print, **kwargs):
        super().__init__(*args, **kwargs)
        self.warmup, self.log = warmup, log
        self.graph = None
        self.failed = None
        self._eager_steps = 0
        self._lrs = None

    def release(self) -> None:
        """Free the captured graph. Must happen before the NCCL process group is destroyed: a graph
        holding NCCL collectives makes destroy_process_group hang (pytorch/pytorch#115388)."""
        if self.graph is not None:
            torch.cuda.synchronize()
            self.graph.reset()
            self.graph = None

    def _current_lrs(self) -> tuple:
        return tuple(g["lr"] for g in self.optimizer.param_groups)

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.static_images, self.static_labels = images.clone(), labels.clone()
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.generator)
        self.optimizer.zero_grad(set_to_none=True)            # the graph allocates the gradients
        torch.cuda.synchronize()
        # thread_local: the loader's threads may use CUDA while this thread captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.static_loss = self._compute(self.static_images, self.static_labels)
        self.graph, self._lrs = graph, self._current_lrs()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.failed is None and self.graph is not None and self._current_lrs() != self._lrs:
            self.graph = None                                 # a learning-rate drop: capture again
            self._eager_steps = self.warmup - 1
        if self.failed is not None or self.graph is None and self._eager_steps < self.warmup:
            if self.failed is None:                           # warm-up before a capture: on a side stream
                side, current = torch.cuda.Stream(), torch.cuda.current_stream()
                side.wait_stream(current)
                with torch.cuda.stream(side):
                    loss = super().__call__(images, labels)
                current.wait_stream(side)
            else:
                loss = super().__call__(images, labels)
            self._eager_steps += 1
            return loss
        if self.graph is None:
            try:
                # The sums are kept outside while capturing (capture records, it does not run).
                loss_sum, miss_sum = self.loss_sum.clone(), self.miss_sum.clone()
                self._capture(images, labels)
                self.loss_sum.copy_(loss_sum)
                self.miss_sum.copy_(miss_sum)
            except Exception as e:  # noqa: BLE001 - any capture failure: carry on eagerly, say why
                self.failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                self.graph = None
                self.log(f"CUDA graph capture failed ({self.failed}); continuing without graphs")
                torch.cuda.synchronize()
                self.optimizer.zero_grad(set_to_none=True)
                return super().__call__(images, labels)
        self.static_images.copy_(images, non_blocking=True)
        self.static_labels.copy_(labels, non_blocking=True)
        self.graph.replay()
        return self.static_loss


def make_step(placement: Placement, optimizer, augment: Augment, stats, generator, amp_dtype, memory_format,
              compile: bool, graphs: bool, log=print) -> TrainStep:
    """The step a run uses: compiled and/or replayed as a CUDA graph, as asked."""
    if compile:
        # Inductor advises TF32 for float32 matmuls at every compile. The run's precision is chosen
        # (--precision: bf16 autocast by default; fp32 keeps full float32 matmuls, as the paper computed).
        warnings.filterwarnings("ignore", message="TensorFloat32 tensor cores for float32 matrix multiplication",
                                category=UserWarning)
        placement.compile()
    kind = GraphedStep if graphs else TrainStep
    extra = {"log": log} if graphs else {}
    return kind(placement, optimizer, augment, stats, generator, amp_dtype, memory_format,
                compile_views=compile, **extra)
