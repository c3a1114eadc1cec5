"""The fast trainer behind `alexnet experiment cifar-normalisation`: cuda-convnet's CIFAR-10 recipe
for the `cuda-convnet-*` nets, with every image resident on the device and every step free of host
synchronisation, so that a whole step can be replayed as one CUDA graph.

What a step does, all on the device (`Trainer._step`): read the step's minibatch (image indices and
a validity mask) from a device table at a device-side counter, gather the uint8 images, draw crops
and flips (`alexnet.data.augment`), subtract the mean, run forward, the log loss, backward and
cuda-convnet's update (`PaperSGD`), add the loss and error to device-side sums, advance the counter.
Shapes are static: cuda-convnet's last, partial minibatch of each 10,000-image batch (16 images) is
padded to 128 and the padding masked out of the loss, which is then exactly that minibatch's loss.
Learning rates are constants inside a captured graph, so the graph is captured again when a phase
changes them. `R` seeds train as `R` replicas of one model (`replicas=R`): one step advances all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from alexnet.data.augment import Augment, apply_params, center_view, sample_params, ten_views
from alexnet.errors import ConfigError
from alexnet.optim import PaperSGD

BATCHES = 5               # CIFAR-10's training set comes as data batches 1-5 of 10,000 images


@dataclass(frozen=True)
class Phase:
    """A stretch of the schedule: `epochs` passes over `batches`, every layer's epsW times `eps_w`
    (and epsB times `eps_b`)."""

    name: str
    epochs: int
    batches: int          # 4: batches 1-4 (batch 5 held out); 5: all five
    eps_w: float = 1.0
    eps_b: float = 1.0


def schedule(layers: str, short: bool = False, drop_eps_b: bool = False) -> list[Phase]:
    """cuda-convnet's schedule for a layer file. 11pct (its header): batches 1-4 for ~350 epochs,
    all five for ~150 more, then epsW / 10 for 10 epochs and epsW / 100 for 10. 13pct (the
    Methodology page): 100 epochs, 40 more on all five, 10 and 10. The files lower epsW only;
    `drop_eps_b` lowers epsB with it. `short`: every phase, one or two epochs each (CI)."""
    long = {"11pct": (350, 150, 10, 10), "13pct": (100, 40, 10, 10)}
    if layers not in long:
        raise ConfigError(f"no schedule for layer file {layers!r}: 11pct, 13pct")
    epochs = (2, 1, 1, 1) if short else long[layers]
    eps = (1.0, 1.0, 0.1, 0.01)
    names = ("batches 1-4", "batches 1-5", "epsW/10", "epsW/100")
    return [Phase(n, e, 4 if i == 0 else 5, f, f if drop_eps_b else 1.0)
            for i, (n, e, f) in enumerate(zip(names, epochs, eps))]


def data_batches(n_train: int, seed: int = 0) -> list[np.ndarray]:
    """The training images split into cuda-convnet's five data batches: a fixed random order
    (CIFAR-10's batch files are in random order), cut into five equal parts."""
    order = np.random.default_rng(seed).permutation(n_train)
    size = n_train // BATCHES
    if size < 1:
        raise ConfigError(f"{n_train} training images cannot make {BATCHES} data batches")
    return [order[i * size:(i + 1) * size] for i in range(BATCHES)]


def minibatch_table(batches: list[np.ndarray], batch: int) -> tuple[np.ndarray, np.ndarray]:
    """cuda-convnet's minibatches of a list of data batches, in order: each data batch cut into
    ceil(n / batch) minibatches, the last one partial. Returns image indices and a validity mask,
    both (steps, batch); padding slots hold index 0 and mask 0."""
    steps = sum(-(-len(b) // batch) for b in batches)
    index, valid = np.zeros((steps, batch), np.int64), np.zeros((steps, batch), np.float32)
    s = 0
    for b in batches:
        for lo in range(0, len(b), batch):
            part = b[lo:lo + batch]
            index[s, :len(part)], valid[s, :len(part)] = part, 1.0
            s += 1
    return index, valid


def param_groups(model, eps_w: float = 1.0, eps_b: float = 1.0) -> list[dict]:
    """PaperSGD groups from the model's layer-parameter file: per layer, weights (epsW, momW, wc)
    and biases (epsB, momB, no decay). Layers with equal settings share a group (fewer kernels)."""
    groups: dict[tuple, dict] = {}
    for name, layer in model.weight_layers().items():
        p = model.layer_params[name]
        for kind, lr, mom, wd in (("weight", p.eps_w * eps_w, p.mom_w, p.wc), ("bias", p.eps_b * eps_b, p.mom_b, 0.0)):
            g = groups.setdefault((kind, lr, mom, wd), dict(params=[], lr=lr, momentum=mom, weight_decay=wd, names=[]))
            g["params"].append(getattr(layer, kind))
            g["names"].append(f"{name}.{kind}")
    return list(groups.values())


def set_rates(optimizer, model, eps_w: float, eps_b: float) -> None:
    """Every group's rate for epsW x `eps_w` and epsB x `eps_b` (momenta and decay unchanged)."""
    rate = {n: g["lr"] for g in param_groups(model, eps_w, eps_b) for n in g["names"]}
    for group in optimizer.param_groups:
        rates = {rate[n] for n in group["names"]}
        if len(rates) != 1:
            raise ConfigError(f"layers {group['names']} no longer share a learning rate")
        group["lr"] = rates.pop()


class DeviceData:
    """Train and test images as uint8 on the device, labels, and the mean image (0-255)."""

    def __init__(self, train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
                 test_labels: torch.Tensor, mean: torch.Tensor, num_classes: int, device):
        self.train, self.train_labels = train.to(device).contiguous(), train_labels.to(device)
        self.test, self.test_labels = test.to(device).contiguous(), test_labels.to(device)
        self.mean, self.num_classes = mean.to(device).float(), num_classes

    @classmethod
    def from_prepared(cls, path, device) -> "DeviceData":
        from alexnet.data.prepared import PreparedData

        data = PreparedData.open(path)
        test_name = "test" if "test" in data.splits else "val"
        tr, te = data.split("train"), data.split(test_name)
        return cls(tr.read(np.arange(len(tr))), tr.labels, te.read(np.arange(len(te))), te.labels,
                   data.mean, data.num_classes, device)


class Trainer:
    """`replicas` copies of one cuda-convnet net (one per seed) trained together on `data`.

    `mean_window`: "centre" subtracts the centre 24x24 of the mean image from every view, as
    cuda-convnet's `CroppedCIFARDataProvider` did; "same" subtracts the mean at the view's own window
    (and mirrored with it). `graph`: replay each step as a CUDA graph (CUDA only; on failure the
    reason is printed and the trainer stays eager).
    """

    def __init__(self, model, data: DeviceData, seeds: list[int], batch: int = 128, mean_window: str = "centre",
                 graph: bool = False, amp_dtype=None, log=print):
        self.dev = data.train.device
        if mean_window not in ("centre", "same"):
            raise ConfigError(f"mean_window must be centre or same, not {mean_window!r}")
        if graph and self.dev.type != "cuda":
            raise ConfigError("CUDA graphs need a CUDA device")
        cuda = self.dev.type == "cuda"
        self.fmt = torch.channels_last if cuda else torch.contiguous_format
        self.model = model.to(self.dev).train()
        for m in model.modules():            # cuDNN's fastest layout; the local layers keep theirs
            if isinstance(m, torch.nn.Conv2d):
                m.to(memory_format=self.fmt)
        self.data, self.r, self.b, self.amp, self.log = data, len(seeds), batch, amp_dtype, log
        self.crop = model.config.input_size
        self.dtype = next(model.parameters()).dtype          # float32; float64 in tests
        self.mean_window, self.want_graph, self.graph, self.warm, self.replays = mean_window, graph, None, 0, 0
        self.aug = Augment(crop=self.crop, flip=True, pca_std=0.0, pca_form="paper")
        seed = int(np.random.SeedSequence([int(x) for x in seeds]).generate_state(1)[0])
        self.gen = torch.Generator(device=self.dev).manual_seed(seed)      # crops and flips
        size = data.train.shape[-1]
        o = (size - self.crop) // 2
        self.mean_centre = data.mean[:, o:o + self.crop, o:o + self.crop].to(self.dtype).contiguous()
        self.zero3, self.eye3 = torch.zeros(3, device=self.dev), torch.eye(3, device=self.dev)
        self.opt = PaperSGD(param_groups(model))
        # Static buffers read and written inside the step (and the graph), sized for all 5 batches.
        max_steps = BATCHES * -(-(data.train.shape[0] // BATCHES) // batch)
        self.index = torch.zeros(self.r, max_steps, batch, dtype=torch.long, device=self.dev)
        self.valid = torch.zeros(self.r, max_steps, batch, device=self.dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=self.dev)
        self.sums = torch.zeros(self.r, 3, device=self.dev)        # loss, errors, images per replica

    # -------------------------------------------------------------------------------- a step

    def views(self, images: torch.Tensor) -> torch.Tensor:
        """Random crops and flips of uint8 images (B, 3, S, S) minus the mean: (B, 3, crop, crop)."""
        p = sample_params(images.shape[0], images.shape[-1], self.aug, self.gen, self.dev)
        if self.mean_window == "same":
            return apply_params(images, self.data.mean, self.zero3, self.eye3, self.aug, p, self.dtype)
        return apply_params(images, self.zero3, self.zero3, self.eye3, self.aug, p, self.dtype) - self.mean_centre

    def _step(self) -> None:
        r, b = self.r, self.b
        idx = self.index.index_select(1, self.pos).view(r * b)                 # replica-major
        valid = self.valid.index_select(1, self.pos).view(r, b)
        labels = self.data.train_labels.index_select(0, idx).view(r, b)
        x = self.views(self.data.train.index_select(0, idx))                  # (R*B, 3, c, c)
        x = x.view(r, b, 3, self.crop, self.crop).transpose(0, 1).reshape(b, 3 * r, self.crop, self.crop)
        with torch.autocast(self.dev.type, dtype=self.amp, enabled=self.amp is not None, cache_enabled=False):
            logits = self.model(x.contiguous(memory_format=self.fmt))         # (B, R*classes)
        logits = logits.to(self.dtype).view(b, r, -1).transpose(0, 1)         # (R, B, classes)
        ce = F.cross_entropy(logits.reshape(r * b, -1), labels.view(-1), reduction="none").view(r, b)
        count = valid.sum(1)
        # Each replica's mean log loss over its valid images: cuda-convnet scales the summed
        # gradient by eps / (images in the minibatch), 16 for the last one of a data batch.
        loss = ((ce * valid).sum(1) / count).sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        wrong = (logits.detach().argmax(-1) != labels).float()
        self.sums.add_(torch.stack([(ce.detach() * valid).sum(1), (wrong * valid).sum(1), count], 1))
        self.pos.add_(1)

    def _capture(self) -> None:
        try:
            graph = torch.cuda.CUDAGraph()
            graph.register_generator_state(self.gen)
            self.opt.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                self._step()
            self.graph = graph
        except Exception as e:  # noqa: BLE001 - any capture failure: say why and stay eager
            self.log(f"CUDA graph capture failed, training eagerly: {type(e).__name__}: {e}")
            self.want_graph, self.graph = False, None
            self.opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        """One training step: eager, or a replay of the captured graph (captured after a few
        eager warm-up steps on a side stream, which are real steps)."""
        if not self.want_graph:
            return self._step()
        if self.graph is None and self.warm < 3:
            stream = torch.cuda.Stream(self.dev)
            stream.wait_stream(torch.cuda.current_stream(self.dev))
            with torch.cuda.stream(stream):
                self._step()
            torch.cuda.current_stream(self.dev).wait_stream(stream)
            self.warm += 1
            return None
        if self.graph is None:
            self._capture()
            if self.graph is None:
                return self._step()
        self.graph.replay()
        self.replays += 1
        return None

    # -------------------------------------------------------------------------------- phases

    def set_phase(self, index: np.ndarray, valid: np.ndarray, eps_w: float, eps_b: float) -> int:
        """Load a phase's minibatch table (steps, batch), the same for every replica, and its
        learning rates; drops a captured graph (its rates are constants). Returns steps per epoch."""
        steps = index.shape[0]
        if steps > self.index.shape[1]:
            raise ConfigError(f"phase has {steps} steps per epoch, the trainer was sized for {self.index.shape[1]}")
        self.index[:, :steps].copy_(torch.from_numpy(index))
        self.valid[:, :steps].copy_(torch.from_numpy(valid))
        set_rates(self.opt, self.model, eps_w, eps_b)
        self.graph = None
        self.opt.zero_grad(set_to_none=True)
        return steps

    def epoch(self, steps: int) -> torch.Tensor:
        """`steps` steps from the top of the table; returns (R, 3) device sums of loss, errors, images."""
        self.pos.zero_()
        self.sums.zero_()
        for _ in range(steps):
            self.step()
        return self.sums.clone()

    # -------------------------------------------------------------------------------- testing

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, views: int) -> torch.Tensor:
        """Softmax of every replica, averaged over 1 (centre) or 10 views: (N, R, classes).
        The 10 views are cuda-convnet's `--multiview-test`: 4 corners and the centre, each mirrored."""
        self.model.eval()
        out = []
        mean = self.data.mean if self.mean_window == "same" else self.zero3
        for part in images.split(2000 if views == 1 else 500):
            x = (center_view(part, mean, self.crop, self.dtype) if views == 1
                 else ten_views(part, mean, self.crop, self.dtype))
            if self.mean_window == "centre":
                x = x - self.mean_centre
            x = x.repeat(1, self.r, 1, 1).contiguous(memory_format=self.fmt)
            with torch.autocast(self.dev.type, dtype=self.amp, enabled=self.amp is not None):
                logits = self.model(x).to(self.dtype)
            p = logits.view(part.shape[0], views, self.r, -1).softmax(-1).mean(1)
            out.append(p)
        self.model.train()
        return torch.cat(out)

    def score(self, images: torch.Tensor, labels: torch.Tensor, views: int) -> dict:
        """Per replica: error rate and log loss (nats) of the view-averaged probabilities."""
        p = self.probabilities(images, views)
        picked = p.gather(2, labels.view(-1, 1, 1).expand(-1, self.r, 1)).squeeze(2)
        err = (p.argmax(-1) != labels[:, None]).float().mean(0)
        nats = -picked.clamp_min(1e-30).log().mean(0)
        return {"error": err.tolist(), "nats": nats.tolist()}


def trainer_state(trainer: Trainer) -> dict:
    """What a resumed schedule needs of the trainer: weights, velocities, the crop/flip generator."""
    return {"model": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
            "optimizer": trainer.opt.state_dict(), "generator": trainer.gen.get_state(), "replays": trainer.replays}


def load_trainer_state(trainer: Trainer, state: dict) -> None:
    trainer.model.load_state_dict(state["model"])
    trainer.opt.load_state_dict(state["optimizer"])
    trainer.gen.set_state(state["generator"])
    trainer.replays = int(state["replays"])


def run_schedule(trainer: Trainer, phases: list[Phase], eval_every: int, log=print, resume: dict | None = None,
                 save=None, save_every: int = 10) -> dict:
    """Train through `phases`; per epoch, the running training loss and error (augmented views, as
    cuda-convnet printed them); every `eval_every` epochs and at each phase's end, the centre-view
    error on the held-out batch 5 (while it is held out). Returns curves and timings.

    `save(progress)`, if given, is called every `save_every` epochs with the schedule's progress
    (`load_trainer_state` + `resume=progress` continue from it exactly: same weights, velocities
    and random crops as a run never stopped)."""
    d = trainer.data
    batches = data_batches(d.train.shape[0])
    held = torch.from_numpy(batches[4]).to(d.train.device)
    prog = resume or {"phase": 0, "epoch": 0, "epoch_no": 0, "history": torch.zeros(0, trainer.r, 3),
                   "held_out": [], "phase_info": [], "seconds": 0.0, "phase_seconds": 0.0}
    history = list(prog["history"].to(d.train.device).unbind(0))
    held_out, phase_info, epoch_no = list(prog["held_out"]), list(prog["phase_info"]), int(prog["epoch_no"])
    t_start = time.perf_counter() - prog["seconds"]
    if resume:
        nxt = prog["phase"] + (prog["epoch"] >= phases[prog["phase"]].epochs)
        log(f"resuming at epoch {epoch_no + 1} ({phases[nxt].name if nxt < len(phases) else 'all trained'})")
    for pi in range(prog["phase"], len(phases)):
        ph = phases[pi]
        index, valid = minibatch_table(batches[:ph.batches], trainer.b)
        steps = trainer.set_phase(index, valid, ph.eps_w, ph.eps_b)
        first = prog["epoch"] if pi == prog["phase"] else 0
        t0 = time.perf_counter() - (prog["phase_seconds"] if pi == prog["phase"] else 0.0)
        for e in range(first, ph.epochs):
            history.append(trainer.epoch(steps))
            epoch_no += 1
            last = e == ph.epochs - 1
            if ph.batches == 4 and (last or epoch_no % eval_every == 0):
                s = trainer.score(d.train[held], d.train_labels[held], 1)
                held_out.append({"epoch": epoch_no, "error": s["error"], "nats": s["nats"]})
            if last or epoch_no % eval_every == 0:
                h = history[-1].tolist()
                extra = f", held-out {np.mean(held_out[-1]['error']):.4f}" if ph.batches == 4 else ""
                log(f"epoch {epoch_no} ({ph.name}): train loss {np.mean([x[0] / x[2] for x in h]):.4f} error "
                    f"{np.mean([x[1] / x[2] for x in h]):.4f}{extra} (mean of {trainer.r}); "
                    f"{time.perf_counter() - t_start:.0f} s")
            if save is not None and epoch_no % save_every == 0:
                now = time.perf_counter()
                save({"phase": pi, "epoch": e + 1, "epoch_no": epoch_no, "history": torch.stack(history).cpu(),
                      "held_out": held_out, "phase_info": phase_info, "seconds": now - t_start,
                      "phase_seconds": now - t0})
        if d.train.is_cuda:
            torch.cuda.synchronize(d.train.device)
        phase_info.append({"name": ph.name, "epochs": ph.epochs, "batches": ph.batches, "eps_w": ph.eps_w,
                           "eps_b": ph.eps_b, "steps_per_epoch": steps, "seconds": time.perf_counter() - t0,
                           "lr": {n: g["lr"] for g in trainer.opt.param_groups for n in g["names"]},
                           "images": int(sum(len(b) for b in batches[:ph.batches]))})
    curves = torch.stack(history).cpu() if history else torch.zeros(0, trainer.r, 3)
    return {"train_loss": (curves[..., 0] / curves[..., 2]).T.tolist(),
            "train_error": (curves[..., 1] / curves[..., 2]).T.tolist(),
            "held_out": held_out, "phases": phase_info, "seconds": time.perf_counter() - t_start,
            "steps": sum(p["steps_per_epoch"] * p["epochs"] for p in phase_info),
            "graph_replays": trainer.replays}
