"""Self-contained, versioned checkpoints: written once, linked under their other names, read with
`weights_only=True`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled objects). It
carries everything a later `eval`, `predict` or `--resume` needs: the architecture and its options,
the run's configuration, class names, the mean image, the PCA statistics, the crop, the optimizer
and schedule state, the data position and the random number generators' states.

In a run folder (`CheckpointKeeper`): `last.pt` is the newest state; at the end of an epoch the state
is written once as `epoch-NNN.pt` and `best.pt` (when validation improved) and `last.pt` become hard
links to it, each switched atomically, in that order, so that `last.pt` is never newer than the
others. A kill at any moment leaves every name pointing at a complete file; temporary files a kill
leaves behind are removed when the next run in that folder starts.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from alexnet.errors import CheckpointError, DataError
from alexnet.models import build_model, get_arch
from alexnet.runtime import TMP_MARK, atomic_write_bytes, remove_stale_temporaries

__all__ = ["FORMAT_VERSION", "save_checkpoint", "load_checkpoint", "model_from_checkpoint", "unwrap",
           "rng_state", "set_rng_state", "CheckpointKeeper", "MODEL_KEYS", "RESUME_KEYS", "load_weights",
           "init_from"]

FORMAT_VERSION = 2
#: What eval, predict and export need of a checkpoint; a training checkpoint has RESUME_KEYS too.
MODEL_KEYS = ("arch", "model_options", "model", "classes", "class_names", "image_size", "crop", "mean",
              "input_scale")
RESUME_KEYS = ("config", "optimizer", "schedule", "epoch", "batch_in_epoch", "completed_epochs", "global_step",
               "best_val_top1_error", "rng", "pca_eigvals", "pca_eigvecs")


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write atomically (old file or new file after a kill; a full disk keeps the old one)."""
    return atomic_write_bytes(path, writer=lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", resume: bool = False) -> dict:
    """Read and check a checkpoint; every problem is one CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes), not a checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many kinds; its text may advise unsafe loading: never relay it
        kind = "holds objects other than tensors and plain data" if "weights_only" in str(e) else \
            "is truncated or not a PyTorch checkpoint"
        raise CheckpointError(f"{path}: not a readable checkpoint: the file {kind} ({type(e).__name__})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not an alexnet checkpoint (it holds a {type(ckpt).__name__}, not a dict)")
    if "format_version" not in ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(f"{path}: a bare state_dict, not an alexnet checkpoint (use it with --init-from)")
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version}, this version of alexnet reads {FORMAT_VERSION}")
    missing = [k for k in MODEL_KEYS + (RESUME_KEYS if resume else ()) if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a complete alexnet checkpoint: missing {', '.join(missing)}")
    return ckpt


def model_from_checkpoint(ckpt: dict, impl: str | None = "auto", where: str | Path = "checkpoint") -> nn.Module:
    """The network of a checkpoint, its weights loaded and checked. `impl` rebuilds alexnet2012 in the
    formulation that suits this machine (the weights are the same in every form); None keeps the
    checkpoint's."""
    options = dict(ckpt["model_options"])
    if impl is not None and "impl" in options:
        options["impl"] = impl
        if "fast" in options:
            options["fast"] = ""
    try:
        get_arch(ckpt["arch"])
        model = build_model(ckpt["arch"], **options)
    except Exception as e:
        raise CheckpointError(f"{where}: cannot rebuild its network ({e})") from None
    load_weights(model, ckpt["model"], where)
    return model


def load_weights(model: nn.Module, state: dict, where: str | Path = "checkpoint") -> None:
    """model.load_state_dict(state), with every missing, unexpected or misshapen tensor named."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} (network: {tuple(own[k].shape)})" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = ([f"missing {', '.join(missing[:5])}"] if missing else []) + \
               ([f"unexpected {', '.join(unexpected[:5])}"] if unexpected else []) + \
               ([f"wrong shapes: {'; '.join(shapes[:5])}"] if shapes else [])
    if problems:
        raise CheckpointError(f"{where}: its weights do not fit the network: " + "; ".join(problems))
    model.load_state_dict(state)


def init_from(model: nn.Module, path: str, log=print) -> None:
    """Fine-tuning: a checkpoint's or a torchvision .pth's weights; a classifier whose shape does not
    fit the data's classes is left freshly initialised."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(path, "no such checkpoint") from None
    except Exception as e:
        raise DataError(path, f"not a readable checkpoint ({type(e).__name__})") from None
    state = obj["model"] if isinstance(obj, dict) and "model" in obj else obj
    if not isinstance(state, dict):
        raise DataError(path, "holds no state_dict")
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise DataError(path, "no parameter matches this architecture (wrong --arch?)")
    model.load_state_dict(fitting, strict=False)
    log(f"initialised from {path}: {len(fitting)} tensors loaded")
    rest = sorted(set(own) - set(fitting))
    if rest:
        log(f"  re-initialised (shape differs or absent, e.g. a classifier for other classes): {', '.join(rest)}")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and torch.compile wrappers (so saved names carry no prefixes)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    for name, gen in generators.items():
        state[name] = gen.get_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    for name, gen in generators.items():
        if name in state:
            gen.set_state(state[name])


def _link(src: Path, dst: Path) -> None:
    """Point `dst` at `src`'s file atomically: a hard link under a temporary name, renamed over dst
    (a copy where the file system has no hard links)."""
    tmp = dst.with_name(f"{TMP_MARK}{dst.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        atomic_write_bytes(tmp, writer=lambda f: f.write(src.read_bytes()))
    os.replace(tmp, dst)


class CheckpointKeeper:
    """`last.pt` always; `epoch-NNN.pt` for the last `keep` epochs; `best.pt` by validation error."""

    def __init__(self, run_dir: Path, keep: int = 3):
        self.run_dir, self.keep = Path(run_dir), keep
        self.removed = remove_stale_temporaries(self.run_dir) if self.run_dir.exists() else []

    @property
    def last(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.run_dir / "best.pt"

    def save(self, state: dict, best: bool = False) -> Path:
        """A state within an epoch: last.pt (and best.pt linked to it, after a partial epoch's
        validation improved)."""
        path = save_checkpoint(state, self.last)
        if best:
            _link(path, self.best)
        return path

    def save_epoch(self, state: dict, epoch: int, best: bool) -> Path:
        """The state at the end of `epoch`: written once, then best.pt and last.pt linked to it."""
        path = save_checkpoint(state, self.run_dir / f"epoch-{epoch:03d}.pt")
        if best:
            _link(path, self.best)
        _link(path, self.last)
        snapshots = sorted(self.run_dir.glob("epoch-*.pt"))
        for old in snapshots[:-self.keep] if self.keep > 0 else snapshots:
            old.unlink(missing_ok=True)           # best.pt and last.pt keep their own link
        return path
