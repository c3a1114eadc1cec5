"""The `alexnet` command: a thin layer over the package's functions."""

from __future__ import annotations

import argparse
import json
import sys

from alexnet.errors import AlexnetError

# Architecture options as flags; only those given on the command line reach the builder, which
# rejects the ones an architecture does not take.
_ARCH_FLAGS = {
    "recipe": dict(choices=["paper", "cuda-convnet"], help="alexnet2012: the paper's text or the 2012 code"),
    "activation": dict(choices=["relu", "tanh"]),
    "pooling": dict(choices=["overlapping", "non-overlapping"], help="3/2 (paper) or 2/2"),
    "dropout": dict(type=float, help="dropout rate of fc6 and fc7 (paper: 0.5)"),
    "columns": dict(type=int, choices=[1, 2], help="2: the paper's net; 1: its one-GPU comparison"),
    "unit_bias": dict(type=float, help="bias of conv2/4/5, fc6/7 (paper: 1)"),
    "input_size": dict(type=int, help="CIFAR nets: input side"),
}


def add_arch_options(p: argparse.ArgumentParser, default_arch: str | None = "alexnet2012") -> None:
    p.add_argument("--arch", default=default_arch, help="alexnet2012 | torchvision | cifar-fig1 | cifar-alexnet")
    for name, kw in _ARCH_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None, **kw)
    p.add_argument("--response-norm", dest="response_norm", action=argparse.BooleanOptionalAction,
                   default=None, help="response normalisation on/off")


def arch_options_from(args: argparse.Namespace) -> dict:
    names = list(_ARCH_FLAGS) + ["response_norm"]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def cmd_info(args: argparse.Namespace) -> int:
    from alexnet.models import build_model, get_arch
    from alexnet.summary import format_table, info

    options = arch_options_from(args)
    model = build_model(args.arch, **options)
    size = options.get("input_size", get_arch(args.arch).crop)
    report = info(model, args.arch, size)
    if getattr(args, "parallel", None) == "columns":
        from alexnet.parallel.accounting import column_accounting, format_accounting

        report["parallel"] = column_accounting(model, args.batch, size)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_table(report))
        if "parallel" in report:
            print()
            print(format_accounting(report["parallel"]))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from alexnet.train import TrainConfig, train

    options = arch_options_from(args)
    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    fields.pop("arch", None)
    if args.data is None:
        return run_demo(args, options, fields)
    cfg = TrainConfig(arch=args.arch or "alexnet2012", arch_options=options, **fields)
    if cfg.out == TrainConfig.out:
        cfg.out = _default_run_dir(cfg.arch)
    train(cfg)
    return 0


def _default_run_dir(arch: str) -> str:
    import time

    return f"runs/{arch}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_demo(args: argparse.Namespace, options: dict, fields: dict) -> int:
    """No --data: train a small CIFAR-size network on the embedded synthetic dataset."""
    from pathlib import Path

    from alexnet.data.synthetic import make_shapes
    from alexnet.train import TrainConfig, train

    arch = args.arch or "cifar-alexnet"
    out = Path(fields.pop("out", None) or _default_run_dir(arch + "-demo"))
    src = make_shapes(out / "shapes")
    print(f"no --data given: the embedded demo. Data: {src}, procedurally generated 32x32 images of 10 "
          "shape classes (discs, rings, squares, stripes, ...) made by alexnet.data.synthetic; not a real "
          "benchmark. Give --data DIR to train on your images or ImageNet.")
    demo = dict(epochs=6, batch_size=64, lr=0.01, schedule="step", milestones=[4], stall_window=300)
    demo.update(fields)
    cfg = TrainConfig(data=str(src), out=str(out), arch=arch, arch_options=options, **demo)
    train(cfg)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from alexnet.data.prepare import prepare

    out = prepare(args.src, args.out, size=args.size, splits=args.splits, workers=args.workers,
                  skip_bad=args.skip_bad)
    print(f"prepared {args.src} -> {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from alexnet.evaluate import evaluate_checkpoints

    r = evaluate_checkpoints(args.checkpoint, args.data, args.split, args.crops, args.device, args.batch_size,
                             args.workers, cache_dir=args.cache)
    if args.json:
        print(json.dumps({k: r[k] for k in ("top1_error", "top5_error", "images", "crops", "checkpoints", "split")}))
    else:
        what = "ensemble of " + str(len(r["checkpoints"])) if len(r["checkpoints"]) > 1 else r["checkpoints"][0]
        print(f"{what} on {args.data} [{r['split']}], {r['images']:,} images, {r['crops']} crop(s): "
              f"top-1 error {100 * r['top1_error']:.2f}%, top-5 error {100 * r['top5_error']:.2f}%")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from alexnet.evaluate import predict_images

    results = predict_images(args.checkpoint, args.images, args.crops, args.top, args.device)
    if args.json:
        print(json.dumps(results))
        return 0
    for r in results:
        print(r["image"])
        for t in r["top"]:
            print(f"  {100 * t['probability']:6.2f}%  {t['name']} ({t['class']})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from alexnet.export import export

    path, diff = export(args.checkpoint, args.format, args.out)
    extra = "" if diff is None else (f"; onnxruntime vs torch max |diff| {diff:.2e}" if diff == diff
                                     else "; onnx checker passed (onnxruntime not installed)")
    print(f"wrote {path}{extra}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from alexnet import __version__

    parser = argparse.ArgumentParser(prog="alexnet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="per-layer shapes, parameters and multiply-adds")
    add_arch_options(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--parallel", choices=["columns"], default=None,
                   help="alexnet2012: bytes exchanged and held per device for the paper's two columns, "
                        "beside one device, data parallelism and the 2014 hybrid")
    p.add_argument("--batch", type=int, default=128, help="images per step for --parallel (paper: 128)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", help="train (no --data: a small demo on embedded synthetic images)")
    p.add_argument("--data", help="image folders (train/val/test) or an `alexnet prepare` output")
    p.add_argument("--out", help="run directory (default runs/ARCH-TIME)")
    add_arch_options(p, default_arch=None)
    g = p.add_argument_group("recipe (defaults: the paper's)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="global batch (paper: 128), split across processes")
    g.add_argument("--batch-per-process", type=int, help="weak scaling: this many images per process")
    g.add_argument("--lr-scaling", choices=["none", "linear"], help="with --batch-per-process")
    g.add_argument("--lr", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--schedule", choices=["plateau", "step"], help="divide lr by 10 on a plateau or at --milestones")
    g.add_argument("--milestones", type=int, nargs="+", help="epochs of the drops (2012 run: 25 51 79)")
    g.add_argument("--patience", type=int)
    g.add_argument("--crop", type=int)
    g.add_argument("--image-size", type=int, help="side of the prepared images (256; 32 for CIFAR nets)")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--pca-std", type=float, help="PCA colour noise (paper: 0.1; 0: off)")
    g.add_argument("--pca-form", choices=["paper", "cuda-convnet"])
    g.add_argument("--val-split")
    g.add_argument("--val-fraction", type=float, help="held out of train when there is no val split")
    g.add_argument("--eval-crops", type=int, choices=[1, 10])
    r = p.add_argument_group("running")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"])
    r.add_argument("--precision", choices=["auto", "bf16", "fp32"])
    r.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    r.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    r.add_argument("--parallel", choices=["data", "columns"])
    r.add_argument("--seed", type=int)
    r.add_argument("--deterministic", action="store_true", default=None)
    r.add_argument("--max-steps", type=int)
    r.add_argument("--checkpoint-minutes", type=float)
    r.add_argument("--checkpoint-steps", type=int)
    r.add_argument("--keep-checkpoints", type=int)
    r.add_argument("--resume", action="store_true", default=None, help="continue the run in --out exactly")
    r.add_argument("--init-from", help="fine-tune from a checkpoint or a torchvision .pth")
    r.add_argument("--skip-bad", action="store_true", default=None, help="skip unreadable images (listed in the run)")
    r.add_argument("--workers", type=int)
    r.add_argument("--stall-window", type=int, help="steps at ln(classes) before stopping (0: never)")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("prepare", help="decode, resize to SIZE, crop and store images with mean and PCA")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--splits", nargs="+")
    p.add_argument("--workers", type=int)
    p.add_argument("--skip-bad", action="store_true")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("eval", help="top-1/top-5 error of a checkpoint or an ensemble")
    p.add_argument("--checkpoint", nargs="+", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split")
    p.add_argument("--crops", type=int, choices=[1, 10], default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int)
    p.add_argument("--cache", help="where to keep the prepared copy of image folders (default: a temp dir)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-5 classes of images")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+")
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
