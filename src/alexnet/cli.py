"""The `alexnet` command: a thin layer over the package's functions.

`alexnet train`'s options are generated from `alexnet.config.TrainConfig` (one flag per field, its
help text from the field) and from the architectures' config dataclasses (`--recipe`, `--columns`,
...), so the command and the library cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from alexnet.errors import AlexnetError

#: Help for the architectures' options (their config dataclasses' fields); the test suite checks that
#: every field of every architecture has a flag and a line here.
ARCH_HELP = {
    "recipe": "alexnet2012: the paper's text (paper) or the 2012 code (cuda-convnet)",
    "activation": "relu (paper) or tanh",
    "response_norm": "response normalisation on/off",
    "pooling": "overlapping (3/2, paper) or non-overlapping (2/2)",
    "dropout": "dropout rate of fc6 and fc7 (paper: 0.5)",
    "columns": "2: the paper's net; 1: its one-GPU comparison",
    "unit_bias": "bias of conv2/4/5, fc6/7 (paper: 1; Caffe later 0.1)",
    "impl": "auto (fast layers on CUDA), fast, or reference (the torch formulas everywhere)",
    "fast": "with --impl fast: alexnet.models.fast choices, e.g. conv2=grouped,pool=torch",
    "input_size": "CIFAR nets: input side",
    "num_classes": None,            # set from the data, not a flag
}


def arch_fields() -> dict[str, dataclasses.Field]:
    """Every option of every registered architecture, by name."""
    from alexnet.models import ARCHS

    out = {}
    for arch in ARCHS.values():
        for f in dataclasses.fields(arch.config):
            out.setdefault(f.name, f)
    return out


def _kind(f: dataclasses.Field):
    """(argparse keyword arguments) for a dataclass field, from its annotation."""
    ann = str(f.type)
    choices = (f.metadata.get("choices") if f.metadata else None)
    if "bool" in ann:
        return {"action": argparse.BooleanOptionalAction}
    if ann.startswith(("list", "tuple")):
        return {"type": int, "nargs": "+"}
    base = int if "int" in ann else float if "float" in ann else str
    return {"type": base, **({"choices": list(choices)} if choices else {})}


def add_arch_options(p: argparse.ArgumentParser) -> None:
    from alexnet.models import ARCHS

    p.add_argument("--arch", default=argparse.SUPPRESS, help="network: " + ", ".join(ARCHS))
    g = p.add_argument_group("network options (each architecture takes some)")
    for name, f in arch_fields().items():
        if ARCH_HELP.get(name) is None:
            continue
        kind = _kind(f)
        if "action" not in kind:
            kind["metavar"] = name.upper()
        g.add_argument("--" + name.replace("_", "-"), dest="arch:" + name, default=argparse.SUPPRESS,
                       help=ARCH_HELP[name], **kind)


def add_train_options(p: argparse.ArgumentParser) -> None:
    from alexnet.config import FIELDS

    add_arch_options(p)
    groups = {name: p.add_argument_group(title) for name, title in
              (("data", "data and output"), ("recipe", "recipe (defaults: the paper's)"), ("running", "running"))}
    for name, f in FIELDS.items():
        if name in ("arch", "arch_options"):
            continue
        groups[f.metadata["group"]].add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS,
                                                 help=f.metadata["help"], **_kind(f))


def _split_args(args: argparse.Namespace) -> tuple[dict, dict]:
    """(TrainConfig fields given, architecture options given)."""
    fields, arch = {}, {}
    for k, v in vars(args).items():
        if k.startswith("arch:"):
            arch[k[5:]] = v
        elif k not in ("command", "func"):
            fields[k] = v
    return fields, arch


def train_config(args: argparse.Namespace):
    """(TrainConfig, the options given, whether it is the demo) of parsed `alexnet train` arguments:
    the flags given, the demo's defaults without --data, a timestamped --out when none is given."""
    from alexnet.config import TrainConfig

    fields, arch_options = _split_args(args)
    given = set(fields) | ({"arch_options"} if arch_options else set())
    demo = fields.get("data") is None and not fields.get("resume")
    fields.setdefault("arch", "cifar-alexnet" if demo else "alexnet2012")
    if fields.get("resume") and "out" not in fields:
        raise AlexnetError("--resume continues the run in --out RUN: name it")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    fields.setdefault("out", f"runs/{fields['arch']}{'-demo' if demo else ''}-{stamp}")
    if demo:
        fields = dict(epochs=6, batch_size=64, schedule="step", milestones=[4], stall_window=300) | fields
        fields["data"] = str(Path(fields["out"]) / "shapes")
    return TrainConfig(arch_options=arch_options, **fields), given, demo


def checked_train_config(args: argparse.Namespace):
    """(TrainConfig, the options given) of parsed `alexnet train` arguments, every option checked before
    any data is made or read; without --data, the embedded demo's data made."""
    from alexnet.config import check

    cfg, given, demo = train_config(args)
    check(cfg)
    if demo:
        from alexnet.data.synthetic import make_shapes

        make_shapes(cfg.data)
        print(f"no --data given: the embedded demo. Data: {cfg.data}, procedurally generated 32x32 images of 10 "
              "shape classes (discs, rings, squares, stripes, ...) made by alexnet.data.synthetic; not a real "
              "benchmark. Give --data DIR to train on your images or ImageNet.")
    return cfg, given


def cmd_train(args: argparse.Namespace) -> int:
    from alexnet.train import train

    cfg, given = checked_train_config(args)
    train(cfg, given=given)
    return 0


PROFILE_OPTIONS = ("profile_at_step", "profile_steps", "profile_json_out")


def cmd_profile(args: argparse.Namespace) -> int:
    """`alexnet profile`: `alexnet train` with a window of its steps traced (alexnet.tools.profile_train)."""
    from alexnet.tools.profile_train import profile_run, table

    ours = {k: getattr(args, k) for k in PROFILE_OPTIONS}
    cfg, given = checked_train_config(argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in ours}))
    result = profile_run(cfg, ours["profile_at_step"], ours["profile_steps"], given=given)
    print(table(result))
    if ours["profile_json_out"]:
        Path(ours["profile_json_out"]).write_text(json.dumps(result, indent=1))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from alexnet.models import build_model, get_arch
    from alexnet.summary import format_table, info

    _, options = _split_args(args)
    arch = getattr(args, "arch", "alexnet2012")
    model = build_model(arch, **options)
    size = options.get("input_size", get_arch(arch).crop)
    report = info(model, arch, size)
    if args.parallel == "columns":
        from alexnet.parallel.accounting import column_accounting, format_accounting

        report["parallel"] = column_accounting(model, args.batch, size)
    if args.json:
        print(json.dumps(report))
        return 0
    print(format_table(report))
    if "parallel" in report:
        print()
        print(format_accounting(report["parallel"]))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from alexnet.data.prepare import prepare

    out = prepare(args.src, args.out, size=args.size, splits=args.splits, workers=args.workers, skip_bad=args.skip_bad,
                  encoding=args.encoding, quality=args.quality)
    print(f"prepared {args.src} -> {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from alexnet.evaluate import evaluate_checkpoints
    from alexnet.runtime import StopSignals

    with StopSignals() as stop:
        r = evaluate_checkpoints(args.checkpoint, args.data, args.split, args.crops, args.device, args.batch_size,
                                 args.workers, cache_dir=args.cache, skip_bad=args.skip_bad,
                                 should_stop=lambda: stop.signal is not None)
    if args.json:
        print(json.dumps({k: r[k] for k in ("top1_error", "top5_error", "images", "crops", "checkpoints", "split")}))
        return 0
    what = "ensemble of " + str(len(r["checkpoints"])) if len(r["checkpoints"]) > 1 else r["checkpoints"][0]
    print(f"{what} on {args.data} [{r['split']}], {r['images']:,} images, {r['crops']} crop(s): "
          f"top-1 error {100 * r['top1_error']:.2f}%, top-5 error {100 * r['top5_error']:.2f}%")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from alexnet.evaluate import predict_images

    results = predict_images(args.checkpoint, args.images, args.crops, args.top, args.device)
    bad = [r for r in results if "error" in r]
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            if "top" in r:
                print(r["image"])
                for t in r["top"]:
                    print(f"  {100 * t['probability']:6.2f}%  {t['name']} ({t['class']})")
    for r in bad:
        print(f"alexnet predict: error: {r['image']}: {r['error']}", file=sys.stderr)
    return 1 if bad else 0


def cmd_export(args: argparse.Namespace) -> int:
    from alexnet.export import export

    path, diff = export(args.checkpoint, args.format, args.out)
    extra = "" if diff is None else (f"; onnxruntime vs torch max |diff| {diff:.2e}" if diff == diff
                                     else "; onnx checker passed (onnxruntime not installed)")
    print(f"wrote {path}{extra}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from alexnet import __version__
    from alexnet.cli_extra import add_experiment_parsers, add_tool_parsers

    parser = argparse.ArgumentParser(prog="alexnet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="per-layer shapes, parameters and multiply-adds")
    add_arch_options(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--parallel", choices=["columns"], help="alexnet2012: bytes exchanged and held per device for "
                   "the paper's two columns, beside one device, data parallelism and the 2014 hybrid")
    p.add_argument("--batch", type=int, default=128, help="images per step for --parallel (paper: 128)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", help="train (no --data: a small demo on embedded synthetic images)")
    add_train_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("profile", help="where a training run's step time goes: `alexnet train` with its options, "
                       "a window of its steps traced (GPU busy, idle, kernels), then stopped")
    p.add_argument("--at-step", dest="profile_at_step", type=int, default=300,
                   help="the first traced step, counted from the run's start (default 300: past compilation)")
    p.add_argument("--steps", dest="profile_steps", type=int, default=200, help="steps traced (default 200)")
    p.add_argument("--json-out", dest="profile_json_out", help="also write the result to this JSON file")
    add_train_options(p)
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("prepare", help="decode, resize to SIZE, crop and store images with mean and PCA")
    p.add_argument("src", help="an image-folder tree (train/val/test) or ImageNet's layout")
    p.add_argument("out", help="the prepared folder to write")
    p.add_argument("--size", type=int, default=256, help="side of the stored images (paper: 256)")
    p.add_argument("--splits", nargs="+", help="which splits (default: all of train/val/test present)")
    p.add_argument("--workers", type=int, help="processes (default: all cores)")
    p.add_argument("--skip-bad", action="store_true", help="leave out unreadable images (listed in skipped.txt)")
    p.add_argument("--encoding", choices=("auto", "raw", "jpeg"), default="auto",
                   help="raw pixels, JPEG, or auto: raw up to 32 GB, JPEG beyond (ImageNet at 256)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality 1-100 (default 90)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("eval", help="top-1/top-5 error of a checkpoint or an ensemble")
    p.add_argument("--checkpoint", nargs="+", required=True, help="one checkpoint, or several: an ensemble")
    p.add_argument("--data", required=True, help="image folders or an `alexnet prepare` output")
    p.add_argument("--split", help="default: val, else test")
    p.add_argument("--crops", type=int, choices=[1, 10], default=10, help="centre crop or the paper's ten")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch")
    p.add_argument("--workers", type=int, help="processes for preparing image folders")
    p.add_argument("--skip-bad", action="store_true", help="image folders: leave out unreadable images")
    p.add_argument("--cache", help="where to keep the prepared copy of image folders, a folder per split (default: a temp dir)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-5 classes of images")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", help="image files; unreadable ones are named and the rest predicted")
    p.add_argument("--crops", type=int, choices=[1, 10], default=10)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="safetensors weights or an ONNX graph")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--format", choices=["safetensors", "onnx"], required=True)
    p.add_argument("--out")
    p.set_defaults(func=cmd_export)
    add_experiment_parsers(sub)
    add_tool_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except AlexnetError as e:
        print(f"alexnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
