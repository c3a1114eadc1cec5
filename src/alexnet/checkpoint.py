"""Self-contained, versioned checkpoints, written atomically and read with `weights_only=True`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled objects), so
`torch.load(path, weights_only=True)` reads it. It carries everything a later `eval`, `predict` or
`--resume` needs: the architecture and its options, the recipe, class names, the mean image, the
PCA statistics, the crop, the optimizer and schedule state, the data position and the RNG states.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet.errors import CheckpointError

FORMAT_VERSION = 1


def atomic_save(obj: Any, path: str | Path) -> Path:
    """Write to a temporary file beside `path`, flush it to disk, then rename: a run killed at any
    moment leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad file; the user needs one line
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: not an alexnet checkpoint (no 'model' entry)")
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version}, this version of alexnet reads {FORMAT_VERSION}")
    return ckpt


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and torch.compile wrappers (so saved names carry no prefixes)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    from alexnet.models import build_model

    model = build_model(ckpt["arch"], **ckpt["model_options"])
    model.load_state_dict(ckpt["model"])
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


class CheckpointKeeper:
    """`last.pt` always; `epoch-NNN.pt` for the last `keep` epochs; `best.pt` by validation error."""

    def __init__(self, run_dir: Path, keep: int = 3):
        self.run_dir, self.keep = Path(run_dir), keep

    @property
    def last(self) -> Path:
        return self.run_dir / "last.pt"

    def save(self, ckpt: dict, *, epoch_end: bool = False, best: bool = False) -> None:
        atomic_save(ckpt, self.last)
        if epoch_end:
            atomic_save(ckpt, self.run_dir / f"epoch-{ckpt['epoch']:03d}.pt")
            snapshots = sorted(self.run_dir.glob("epoch-*.pt"))
            for old in snapshots[:-self.keep] if self.keep > 0 else snapshots:
                old.unlink(missing_ok=True)
        if best:
            atomic_save(ckpt, self.run_dir / "best.pt")
