"""`TrainConfig`: every option of a training run, typed, with its help text and its rule on resume.

The defaults are the paper's (section 5): batch 128, the exact update with momentum 0.9 and weight
decay 0.0005, learning rate 0.01 divided by 10 when the validation error stops improving (three
times), 90 epochs, random crops, flips and PCA colour noise. `alexnet train`'s options are generated
from these fields (`alexnet.cli`), so the two cannot drift apart.

`check(cfg)` rejects bad values before any work is done; `resolve(cfg)` fills the defaults that
depend on the architecture. On `--resume`, the run's saved configuration wins: a field marked
`resume="keep"` that is given with another value is refused by name; one marked `resume="apply"`
(how the run is carried out, not what it computes) is applied and recorded in config.json.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from alexnet.errors import ConfigError
from alexnet.models import get_arch
from alexnet.runtime import installed

__all__ = ["TrainConfig", "check", "resolve", "field_help", "merge_for_resume"]


def option(default: Any, help: str, *, resume: str = "keep", group: str = "recipe", choices=None, **kw):
    """A TrainConfig field with its help text, its rule on resume and its CLI group."""
    meta = {"help": help, "resume": resume, "group": group, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class TrainConfig:
    data: str | None = option(None, "image folders (train/val/test) or an `alexnet prepare` output; none: the "
                                    "embedded demo. On resume it may move (the classes must match)",
                              resume="apply", group="data")
    out: str = option("runs/alexnet", "run directory", resume="apply", group="data")
    arch: str = option("alexnet2012", "network: alexnet2012, torchvision, cifar-fig1, cifar-alexnet, ...",
                       group="data")
    arch_options: dict = option({}, "the network's options (--recipe, --columns, ...)", group="data")
    epochs: int = option(90, "epochs (paper: about 90); on resume, may be raised to train longer", resume="apply")
    batch_size: int = option(128, "global batch (paper: 128), split across DDP processes")
    batch_per_process: int | None = option(None, "weak scaling: this many images per process instead")
    lr_scaling: str = option("none", "with --batch-per-process: scale the learning rate with the batch",
                             choices=("none", "linear"))
    lr: float = option(0.01, "learning rate (paper: 0.01)")
    momentum: float = option(0.9, "momentum (paper: 0.9)")
    weight_decay: float = option(5e-4, "weight decay (paper: 0.0005)")
    schedule: str = option("plateau", "divide the rate by 10 on a validation plateau, or at --milestones",
                           choices=("plateau", "step"))
    milestones: list = option([25, 51, 79], "epochs of the drops with --schedule step (the 2012 run: 25 51 79)")
    patience: int = option(5, "plateau: epochs without improvement before a drop")
    max_drops: int = option(3, "plateau: drops at most (paper: 3)")
    crop: int | None = option(None, "crop side (default: the network's, 224; 28 for CIFAR nets)")
    image_size: int | None = option(None, "side of the prepared images (default 256; 32 for CIFAR nets)")
    flip: bool = option(True, "random horizontal flips")
    pca_std: float = option(0.1, "PCA colour noise, std of the coefficients (paper: 0.1; 0: off)")
    pca_form: str | None = option(None, "PCA noise form (default: the recipe's)", choices=("paper", "cuda-convnet"))
    val_split: str | None = option(None, "validation split (default: val, else held out of train)")
    val_fraction: float = option(0.1, "held out of train when there is no val split")
    test_split: str | None = option(None, "test split, evaluated once at the end (default: test if present)")
    eval_crops: int = option(1, "crops in the per-epoch validation", choices=(1, 10), resume="apply")
    test_crops: tuple = option((1, 10), "crops of the final test", resume="apply")
    eval_batch_size: int = option(256, "images per evaluation batch and process", resume="apply")
    device: str = option("auto", "auto, cpu, cuda or cuda:N", resume="apply", group="running")
    precision: str = option("auto", "auto (bf16 autocast on CUDA, fp32 on the CPU), bf16, fp32",
                            choices=("auto", "bf16", "fp32"), group="running")
    channels_last: bool | None = option(None, "channels_last memory (default: on CUDA)", resume="apply",
                                        group="running")
    compile: bool | None = option(None, "torch.compile the step (default: on CUDA)", resume="apply", group="running")
    cuda_graphs: bool | None = option(None, "replay each step as one CUDA graph (default on CUDA: on for one GPU, "
                                            "for data parallel, with the all-reduces in the graph, and for one "
                                            "column per process; off for the one-process columns)",
                                      resume="apply", group="running")
    ddp_reduce: str = option("auto", "data parallel: who all-reduces the gradients: ddp (torch's DDP, overlapped "
                                     "with the backward pass), step (the step, after the backward pass: what a "
                                     "CUDA graph of the step needs), overlap (the step, the classifier's "
                                     "gradients during the convolutions' backward pass; alexnet2012, else as "
                                     "step), shard (as overlap, the classifier's gradients reduce-scattered, "
                                     "each process updating its share, the shares gathered during the next "
                                     "step's convolutions; fp32); auto: shard when the step is a CUDA graph (overlap "
                                     "with --ddp-reduce-dtype bf16), else ddp",
                             choices=("auto", "ddp", "step", "overlap", "shard"), resume="apply", group="running")
    ddp_reduce_dtype: str = option("fp32", "data parallel: the gradients' all-reduce in fp32 (the exact mean) or "
                                           "bf16 (half the bytes; each gradient rounded to bf16 on the way: a "
                                           "deviation)", choices=("fp32", "bf16"), resume="apply", group="running")
    parallel: str = option("data", "data: one device or DDP under torchrun; columns: alexnet2012's two columns "
                                   "on two devices or two torchrun processes (a run may resume in another form)",
                           choices=("data", "columns"), resume="apply", group="running")
    memory_cap_gb: float | None = option(None, "CUDA: cap the allocator at this many GiB (the GTX 580's 3)",
                                         resume="apply", group="running")
    seed: int = option(0, "random seed", group="running")
    deterministic: bool = option(False, "deterministic algorithms (slower)", resume="apply", group="running")
    max_steps: int | None = option(None, "stop after this many steps in all", resume="apply", group="running")
    checkpoint_minutes: float = option(30.0, "minutes between checkpoints within an epoch", resume="apply",
                                       group="running")
    checkpoint_steps: int | None = option(None, "steps between checkpoints within an epoch", resume="apply",
                                          group="running")
    keep_checkpoints: int = option(3, "epoch checkpoints kept besides last.pt and best.pt", resume="apply",
                                   group="running")
    resume: bool = option(False, "continue the run in --out exactly where it stopped", resume="apply",
                          group="running")
    init_from: str | None = option(None, "fine-tune from a checkpoint or a torchvision .pth", group="running")
    skip_bad: bool = option(False, "skip unreadable images when preparing (listed in the run)", resume="apply",
                            group="running")
    workers: int | None = option(None, "processes preparing image folders (default: all cores)", resume="apply",
                                 group="running")
    loader_workers: int | None = option(None, "loader worker processes (default: the cores this process can "
                                               "spare on a GPU, none on the CPU; 0: in the training process)",
                                        resume="apply", group="running")
    decode: str = option("auto", "JPEG stores: decode on the loader's cores (cpu), on the GPU by GPU workers "
                                 "(cuda), or both, each batch to a free worker (mixed); auto: mixed with "
                                 "nvImageCodec on an H100/H200, one process, < 24 cores and a batch of 256 or "
                                 "NVIDIA MPS running, or under DDP with MPS and 256 per process (measured "
                                 "faster there), else cpu",
                         choices=("auto", "cpu", "cuda", "mixed"), resume="apply", group="running")
    cpu_decoder: str = option("auto", "the loader workers' JPEG decoder: simplejpeg or torchvision (both "
                                      "libjpeg-turbo, the same pixels; simplejpeg has less overhead); auto: "
                                      "simplejpeg when installed", choices=("auto", "simplejpeg", "torchvision"),
                              resume="apply", group="running")
    gpu_workers: int | None = option(None, "decode cuda or mixed: GPU worker processes per training process "
                                           "(each decodes whole batches on the training GPU; default: 3 where "
                                           "NVIDIA MPS runs, 4 for one process at batch 256 or more; else 1)",
                                resume="apply", group="running")
    gpu_decoder: str = option("auto", "decoding on the GPU: nvimgcodec (the GPU's hardware JPEG engines; "
                                      "pip install alexnet[gpu-decode]), torchvision (nvJPEG on the SMs); "
                                      "auto: nvimgcodec when installed", choices=("auto", "nvimgcodec", "torchvision"),
                              resume="apply", group="running")
    mps: str = option("auto", "NVIDIA's MPS daemon, so GPU workers decode beside the training step instead of "
                              "taking turns with it: auto starts one for this run (stopped when it ends) where GPU "
                              "workers decode a prepared JPEG store in one process and none runs; off: never",
                      choices=("auto", "off"), resume="apply", group="running")
    stall_window: int = option(3000, "steps with the loss at ln(classes) before the run is stopped (0: never)",
                               resume="apply", group="running")
    stall_epochs: int = option(3, "epochs with the validation error at chance before the run is stopped "
                                  "(0: never)", resume="apply", group="running")
    progress: bool = option(True, "progress bars", resume="apply", group="running")


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def field_help(name: str) -> str:
    return FIELDS[name].metadata["help"]


def check(cfg: TrainConfig) -> None:
    """Every value in range, before any work: one ConfigError naming the option."""
    arch = get_arch(cfg.arch)                     # an unknown name lists the valid ones
    valid = {f.name for f in dataclasses.fields(arch.config)}
    unknown = sorted(set(cfg.arch_options) - valid)
    if unknown:
        raise ConfigError(f"{cfg.arch} takes no option {', '.join(unknown)}; it takes {', '.join(sorted(valid))}")
    arch.config(**cfg.arch_options)               # values checked by the architecture itself
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "eval_batch_size": cfg.eval_batch_size,
                "batch_per_process": cfg.batch_per_process, "crop": cfg.crop, "image_size": cfg.image_size,
                "max_steps": cfg.max_steps, "checkpoint_steps": cfg.checkpoint_steps, "patience": cfg.patience,
                "checkpoint_minutes": cfg.checkpoint_minutes, "memory_cap_gb": cfg.memory_cap_gb}
    for name, value in positive.items():
        if value is not None and not value > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, not {value}")
    for name in ("lr", "momentum", "weight_decay", "pca_std", "max_drops", "keep_checkpoints", "stall_window",
                 "stall_epochs"):
        if not getattr(cfg, name) >= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, not {getattr(cfg, name)}")
    for name in ("workers", "loader_workers"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, not {getattr(cfg, name)}")
    if cfg.cpu_decoder == "simplejpeg" and not installed("simplejpeg"):
        raise ConfigError("--cpu-decoder simplejpeg: simplejpeg is not installed (pip install simplejpeg)")
    if cfg.decode in ("cuda", "mixed") and cfg.gpu_decoder == "nvimgcodec" and not installed("nvidia.nvimgcodec"):
        raise ConfigError("--gpu-decoder nvimgcodec: nvImageCodec is not installed "
                          "(pip install alexnet[gpu-decode])")
    if cfg.decode != "cpu" and cfg.gpu_workers is not None and cfg.gpu_workers < 1:
        raise ConfigError(f"--decode {cfg.decode} needs --gpu-workers of at least 1, not {cfg.gpu_workers}")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in (0, 1), not {cfg.val_fraction}")
    for name, f in FIELDS.items():
        choices, value = f.metadata["choices"], getattr(cfg, name)
        if choices and value is not None and value not in choices:
            raise ConfigError(f"--{name.replace('_', '-')} {value!r}: choose one of {', '.join(map(str, choices))}")
    if any(c not in (1, 10) for c in cfg.test_crops):
        raise ConfigError(f"--test-crops must be 1 or 10, not {cfg.test_crops}")
    if cfg.parallel == "columns":
        if cfg.arch != "alexnet2012" or cfg.arch_options.get("columns", 2) != 2:
            raise ConfigError("--parallel columns is the paper's two-GPU split of alexnet2012 (columns=2)")
        if cfg.batch_per_process:
            raise ConfigError("--batch-per-process is for data parallelism; with --parallel columns every "
                              "process reads the whole batch")
    if cfg.resume and cfg.init_from:
        raise ConfigError("--resume continues a run; --init-from starts a new one from other weights: give one")


def resolve(cfg: TrainConfig) -> TrainConfig:
    """A checked copy with the defaults that depend on the architecture and recipe filled in."""
    check(cfg)
    arch = get_arch(cfg.arch)
    cfg = dataclasses.replace(cfg, arch_options=dict(cfg.arch_options), milestones=list(cfg.milestones),
                              test_crops=tuple(cfg.test_crops))
    cfg.crop = cfg.crop or cfg.arch_options.get("input_size") or arch.crop
    cfg.image_size = cfg.image_size or arch.image_size
    cfg.pca_form = cfg.pca_form or cfg.arch_options.get("recipe", "paper")
    if cfg.pca_form not in ("paper", "cuda-convnet"):
        cfg.pca_form = "paper"
    if cfg.crop > cfg.image_size:
        raise ConfigError(f"--crop {cfg.crop} is larger than the prepared image size {cfg.image_size}")
    return cfg


def merge_for_resume(saved: dict, cfg: TrainConfig, given: set[str]) -> tuple[TrainConfig, list[str]]:
    """The configuration of a resumed run: the saved one, with the `given` fields that may change
    applied. A given field that would change what the run computes is refused by name. Returns the
    merged config and the names of the fields changed."""
    merged = dict(saved)
    changed, refused = [], []
    for name in sorted(given):
        if name not in FIELDS or name == "resume":
            continue
        new, old = getattr(cfg, name), saved.get(name, FIELDS[name].default)
        if _same(new, old):
            continue
        if name == "arch_options":             # each network option by its own flag
            refused += [f"--{k.replace('_', '-')} {_show(v)} (the run has {_show(old.get(k, 'the default'))})"
                        for k, v in sorted(new.items()) if old.get(k) != v]
            continue
        if FIELDS[name].metadata["resume"] == "apply":
            merged[name] = new
            changed.append(name)
        else:
            refused.append(f"--{name.replace('_', '-')} {_show(new)} (the run has {_show(old)})")
    if refused:
        raise ConfigError("a resumed run keeps its configuration; these differ from it: " + "; ".join(refused)
                          + ". Start a new run (another --out) to change them.")
    known = {k: v for k, v in merged.items() if k in FIELDS}
    known["resume"] = True
    return TrainConfig(**known), changed


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _show(value) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "{}"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)
