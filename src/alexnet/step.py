"""One training step of the paper's recipe, as fast as the machine allows.

A step takes a uint8 batch already on the device and does, there: random crops, flips, PCA colour
noise and mean subtraction (`alexnet.data.augment`), the forward pass, the cross-entropy, the
backward pass and the paper's update (`alexnet.optim.PaperSGD`). It adds the loss and the top-1
misses to on-device sums, so the training loop never waits for the GPU between steps.

Three ways to run the same computation, chosen when the run starts:
* eager;
* compiled (`torch.compile` of the network, or of each column's stages, and of the augmentation);
* replayed as CUDA graphs (`GraphedStep`): after a few eager steps the whole step, update included,
  is captured and replayed from then on, so a step costs the host a launch. A graph reads its batch
  where the batch lies: each input buffer seen (the Feeder's fixed device buffers, ``device_buffers``)
  gets its own graph, up to ``max_graphs``, all in one memory pool as they never run at once; a batch
  anywhere else is copied into the input of one more graph (``max_graphs=0``: always, as under
  torchrun). The learning rate is baked into the graphs, so a drop captures them again. One device, one
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
import torch.nn.functional as F

from alexnet.data.augment import Augment, apply_params, sample_params
from alexnet.parallel.placement import Placement

__all__ = ["TrainStep", "GraphedStep", "make_step", "head", "top1_error", "MAX_GRAPHS", "EAGER_STEPS"]

# Graphs each reading its batch in place, one per input buffer (run.py gives the training Feeder this
# many device buffers).
MAX_GRAPHS = 4
# Eager steps before a GraphedStep captures (compilation and cuDNN's autotuning run in them).
EAGER_STEPS = 3


def top1_error(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The share of the batch whose highest logit is not its label (no gradient)."""
    return (logits.detach().argmax(1) != labels).float().mean()


def head(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the cross-entropy, the batch's top-1 error rate): what a step computes after the network.
    Compiled with it, the dozen small kernels they take eagerly (the float copy, log-softmax, the
    loss, its backward, argmax, compare, mean) become a few fused ones; those small kernels are the
    ones that run slowest beside the loader's GPU decoders (docs/notes-speed.md)."""
    return F.cross_entropy(logits.float(), labels), top1_error(logits, labels)


class TrainStep:
    """step(images_u8, labels) -> the loss (a device tensor); sums in `loss_sum`, `miss_sum`."""

    def __init__(self, placement: Placement, optimizer: torch.optim.Optimizer, augment: Augment,
                 stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor], generator: torch.Generator,
                 amp_dtype: torch.dtype | None, memory_format=torch.contiguous_format, compile_views: bool = False):
        self.placement, self.optimizer, self.augment, self.generator = placement, optimizer, augment, generator
        self.mean, self.eigvals, self.eigvecs = stats
        self.amp_dtype, self.memory_format = amp_dtype, memory_format
        self.views = torch.compile(apply_params, dynamic=False) if compile_views else apply_params
        # One process holding a whole classifier: its loss and error compiled with the network (one
        # column per process computes its loss across ranks: Placement.loss, eager).
        plain = placement.kind != "columns-distributed"
        self.head = torch.compile(head, dynamic=False) if compile_views and plain else None
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
            if self.head is not None:
                loss, misses = self.head(logits, labels.to(logits.device))
            else:
                loss = self.placement.loss(logits, labels)
                misses = top1_error(logits, labels.to(logits.device)) if self.placement.has_logits else None
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
        if misses is None:                             # one column per process, rank 1: no classifier's end
            self.loss_sum += loss
        else:                                          # both sums in one kernel
            torch._foreach_add_([self.loss_sum, self.miss_sum], [loss, misses])
        return loss

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        return self._compute(images, labels)

    def release(self) -> None:
        """Free what the step holds on the device beyond the model (nothing here)."""


class GraphedStep(TrainStep):
    """The same step, captured as CUDA graphs after `warmup` eager steps and replayed: one graph per
    input buffer seen (up to `max_graphs`), reading the batch in place; past that, one more graph
    with its own input buffers, the batch copied into them."""

    def __init__(self, *args, warmup: int = EAGER_STEPS, log=print, max_graphs: int = MAX_GRAPHS, **kwargs):
        super().__init__(*args, **kwargs)
        self.warmup, self.log, self.max_graphs = warmup, log, int(max_graphs)
        self.graphs: dict = {}   # input key -> (graph, images, labels); key None: the copying one, its own inputs
        self.pool = None         # one memory pool for all of them
        self.failed = None
        self._eager_steps = 0
        self._lrs = None
        self.loss_out = None     # each graph's loss, written where every graph writes it

    def release(self) -> None:
        """Free the captured graphs. Must happen before the NCCL process group is destroyed: a graph
        holding NCCL collectives makes destroy_process_group hang (pytorch/pytorch#115388)."""
        if self.graphs:
            torch.cuda.synchronize()
            for graph, *_ in self.graphs.values():
                graph.reset()
            self.graphs.clear()
        self.pool = None

    def _current_lrs(self) -> tuple:
        return tuple(g["lr"] for g in self.optimizer.param_groups)

    @staticmethod
    def _key(images: torch.Tensor, labels: torch.Tensor) -> tuple:
        return (images.data_ptr(), tuple(images.shape), images.stride(), images.dtype,
                labels.data_ptr(), tuple(labels.shape), labels.stride(), labels.dtype)

    def _capture(self, images: torch.Tensor, labels: torch.Tensor, key) -> None:
        """Capture a graph reading `images` and `labels` where they lie (key None: copies of them)."""
        if key is None:
            images, labels = images.clone(), labels.clone()
        if self.loss_out is None:
            self.loss_out = torch.zeros((), device=self.mean.device)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.generator)
        self.optimizer.zero_grad(set_to_none=True)            # the graph allocates the gradients
        torch.cuda.synchronize()
        # thread_local: the loader's threads may use CUDA while this thread captures. The graphs share
        # one pool: they run one after another on one stream, and what outlives a replay (the loss,
        # the sums, the weights and their momenta) lies outside it.
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            self.loss_out.copy_(self._compute(images, labels))
        # In place: the batch is not kept, so that its memory can take later batches, which the graph
        # then reads (it is replayed only for a batch at the very address, shape and strides it read).
        self.graphs[key] = (graph, images, labels) if key is None else (graph, None, None)
        self._lrs = self._current_lrs()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.failed is None and self.graphs and self._current_lrs() != self._lrs:
            self.release()                                    # a learning-rate drop: capture again
            self._eager_steps = self.warmup - 1
        if self.failed is not None or not self.graphs and self._eager_steps < self.warmup:
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
        key = self._key(images, labels)
        if key not in self.graphs:
            if len(self.graphs) - (None in self.graphs) >= self.max_graphs:
                key = None                                    # the copying graph
            if key not in self.graphs:
                try:
                    # The sums are kept outside while capturing (capture records, it does not run).
                    loss_sum, miss_sum = self.loss_sum.clone(), self.miss_sum.clone()
                    self._capture(images, labels, key)
                    self.loss_sum.copy_(loss_sum)
                    self.miss_sum.copy_(miss_sum)
                except Exception as e:  # noqa: BLE001 - any capture failure: carry on eagerly, say why
                    self.failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    self.release()
                    self.log(f"CUDA graph capture failed ({self.failed}); continuing without graphs")
                    torch.cuda.synchronize()
                    self.optimizer.zero_grad(set_to_none=True)
                    return super().__call__(images, labels)
        graph, static_images, static_labels = self.graphs[key]
        if key is None:
            static_images.copy_(images, non_blocking=True)
            static_labels.copy_(labels, non_blocking=True)
        graph.replay()
        return self.loss_out


def make_step(placement: Placement, optimizer, augment: Augment, stats, generator, amp_dtype, memory_format,
              compile: bool, graphs: bool, log=print, max_graphs: int = MAX_GRAPHS) -> TrainStep:
    """The step a run uses: compiled and/or replayed as a CUDA graph, as asked."""
    if compile:
        # Inductor advises TF32 for float32 matmuls at every compile. The run's precision is chosen
        # (--precision: bf16 autocast by default; fp32 keeps full float32 matmuls, as the paper computed).
        warnings.filterwarnings("ignore", message="TensorFloat32 tensor cores for float32 matrix multiplication",
                                category=UserWarning)
        placement.compile()
    kind = GraphedStep if graphs else TrainStep
    extra = {"log": log, "max_graphs": max_graphs} if graphs else {}
    return kind(placement, optimizer, augment, stats, generator, amp_dtype, memory_format,
                compile_views=compile, **extra)
