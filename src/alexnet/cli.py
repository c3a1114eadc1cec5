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


def cmd_experiment(args: argparse.Namespace) -> int:
    if args.which == "cifar-normalisation":
        from alexnet.experiments.cifar_normalisation import main as cifar_normalisation
        return cifar_normalisation(args)
    common = dict(data=args.data, epochs=args.epochs, seeds=args.seeds, batch_size=args.batch_size,
                  train_images=args.train_images, test_images=args.test_images, device=args.device,
                  precision=args.precision, jobs=args.jobs, plan=args.plan)
    common = {k: v for k, v in common.items() if v is not None}
    if args.out:
        common["out"] = args.out
    if args.which == "relu-vs-tanh":
        from alexnet.experiments.relu_vs_tanh import ReluTanhConfig, run_relu_vs_tanh

        extra = dict(lrs=args.lrs, relu_lrs=args.relu_lrs, tanh_lrs=args.tanh_lrs, sweep_epochs=args.sweep_epochs,
                     threshold=args.threshold)
        run_relu_vs_tanh(ReluTanhConfig(**common, **{k: v for k, v in extra.items() if v is not None}))
    else:
        from alexnet.experiments.ablations import AblationConfig, run_ablations

        extra = dict(arch=args.arch, variants=args.variants, lr=args.lr)
        run_ablations(AblationConfig(**common, **{k: v for k, v in extra.items() if v is not None}))
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from pathlib import Path

    from alexnet import figures
    from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
    from alexnet.train import resolve_device

    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt).eval()
    out = Path(args.out or Path(args.checkpoint).parent / f"{args.which}.png")
    title = f"{Path(args.checkpoint).parent.name}/{Path(args.checkpoint).name}: {ckpt['arch']}"
    if args.which == "kernels":
        _, report = figures.kernels_figure(model, out, title)
        for c in report["columns"]:
            print(f"column {c['column']}: {c['kernels']} kernels, colour specificity {c['colour_specificity']:.3f} "
                  f"(sd {c['colour_specificity_sd']:.3f}; {c['colour_specific_kernels']} above 0.5)")
        print("(share of kernel energy outside the grey direction: 0 grey, 1 purely chromatic, ~0.67 random)")
    else:
        dev = resolve_device(args.device)
        with figures.open_data(args.data, ckpt["image_size"]) as data:
            if args.which == "predictions":
                preds = figures.predictions(model, ckpt, data, args.split, args.images, args.crops, args.seed, dev)
                figures.predictions_figure(preds, out, title)
                for p in preds:
                    top = ", ".join(f"{t['name']} {100 * t['probability']:.1f}%" for t in p["top"])
                    print(f"{p['split']}[{p['index']}] {p['label_name']}: {top}")
            else:
                result = figures.nearest_neighbours(model, ckpt, data, args.split, args.queries, args.k,
                                                    args.max_train or None, args.seed, dev)
                figures.neighbours_figure(result, out)
                print(f"searched {result['searched']:,} of {result['train_images']:,} training images by "
                      f"{result['dimensions']}-d fc7 codes; neighbours of the same class: "
                      f"{100 * result['same_class_fraction']:.0f}%")
    print(f"wrote {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from alexnet.report import build_report

    build_report(args.run, args.out, args.data, args.device, args.max_train or None)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from alexnet.bench import BenchConfig, main as bench_main

    if args.small and args.device == "auto":
        args.device = "cpu"
    log = (lambda *a, **k: print(*a, file=sys.stderr, flush=True)) if args.json else \
        (lambda *a, **k: print(*a, flush=True))
    cfg = BenchConfig(device=args.device, small=args.small, batches=tuple(args.batch) if args.batch else None,
                      steps=args.steps, repeats=args.repeats, warmup=args.warmup, compile=args.compile,
                      compile_mode=args.compile_mode, reference=args.reference, fast=args.fast,
                      eval_batch=args.eval_batch, data=args.data, replicate_to=args.replicate_to,
                      e2e_batches=tuple(args.e2e_batch) if args.e2e_batch else None, e2e_steps=args.e2e_steps,
                      threads=args.threads, reader=args.reader, loader_variants=tuple(args.loader_variants or ()),
                      workdir=args.workdir, cold=args.cold,
                      rows=tuple(args.rows) if args.rows else ("train", "infer", "tencrop", "e2e"),
                      profile=args.profile, log=None if args.quiet else log)
    try:
        bench_main(cfg, as_json=args.json, json_out=args.json_out)
    except ValueError as e:
        print(f"alexnet bench: error: {e}", file=sys.stderr)
        return 2
    return 0


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="training/inference throughput of alexnet2012 beside torchvision's alexnet, "
                                     "ten-crop evaluation and end-to-end training from prepared data")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--small", action="store_true", help="tiny batches and few steps, no compile (CI on the CPU)")
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes (default 128 256)")
    p.add_argument("--steps", type=int, help="timed steps per run (default 20)")
    p.add_argument("--repeats", type=int, help="timed runs; the median counts (default 5)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 10)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile both networks (default: on CUDA)")
    p.add_argument("--compile-mode", help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    p.add_argument("--reference", action="store_true", help="alexnet2012 on its plain layers (impl=reference)")
    p.add_argument("--fast", help="alexnet.fastconv options, e.g. conv1=s2d,conv2=blockdiag,relu_lrn=1")
    p.add_argument("--rows", nargs="+", choices=["train", "infer", "tencrop", "e2e"],
                   help="what to measure (default: all)")
    p.add_argument("--eval-batch", type=int, help="images per ten-crop batch (default 128)")
    p.add_argument("--data", help="an `alexnet prepare` folder for the end-to-end row (default: synthetic images)")
    p.add_argument("--replicate-to", type=int, help="repeat its train split to this many images first")
    p.add_argument("--e2e-batch", type=int, nargs="+", help="end-to-end batch sizes (default: --batch)")
    p.add_argument("--e2e-steps", type=int, help="timed loader-fed steps (default 300)")
    p.add_argument("--threads", type=int, help="loader threads")
    p.add_argument("--reader", choices=["auto", "gather", "pread", "split"], default="auto", help="loader reader")
    p.add_argument("--loader-variants", nargs="+", metavar="READER:THREADS",
                   help="more end-to-end runs with other loader settings, e.g. pread:4 gather:1")
    p.add_argument("--workdir", help="keep made or replicated data here (default: a temporary folder)")
    p.add_argument("--cold", action="store_true", help="drop the data file from the page cache first")
    p.add_argument("--profile", action="store_true", help="GPU time per op category of one train step")
    p.add_argument("--json", action="store_true", help="print the results as JSON (progress to stderr)")
    p.add_argument("--json-out", help="also write the JSON results to this file")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_bench)


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
    g.add_argument("--eval-batch-size", type=int, help="images per evaluation batch and process (default 256)")
    r = p.add_argument_group("running")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"])
    r.add_argument("--precision", choices=["auto", "bf16", "fp32"])
    r.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    r.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    r.add_argument("--parallel", choices=["data", "columns"],
                   help="data: one device, or DDP under torchrun; columns: alexnet2012's two columns on two "
                        "devices (two GPUs, one GPU's two streams, or two torchrun processes)")
    r.add_argument("--memory-cap-gb", type=float,
                   help="CUDA: cap this process's allocator at this many GiB (the GTX 580's 3)")
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

    p = sub.add_parser("experiment", help="the paper's experiments: relu-vs-tanh (Figure 1), ablations, "
                                          "cifar-normalisation (13%% vs 11%%)")
    which = p.add_subparsers(dest="which", required=True)
    for name, text in (("relu-vs-tanh", "Figure 1: epochs to 25%% training error, ReLU vs tanh (cifar-fig1)"),
                       ("ablations", "each of the paper's choices switched off: test error over seeds")):
        e = which.add_parser(name, help=text)
        e.add_argument("--data", required=True, help="image folders or an `alexnet prepare` output")
        e.add_argument("--out", help="output directory (default runs/relu-vs-tanh or runs/ablations)")
        e.add_argument("--epochs", type=int)
        e.add_argument("--seeds", type=int, nargs="+")
        e.add_argument("--batch-size", type=int)
        e.add_argument("--train-images", type=int, help="a class-balanced subset of train (small budgets)")
        e.add_argument("--test-images", type=int, help="a class-balanced subset of test/val")
        e.add_argument("--device", choices=["auto", "cpu", "cuda"])
        e.add_argument("--precision", choices=["auto", "bf16", "fp32"])
        e.add_argument("--jobs", type=int, help="runs at once, in separate processes (pays on a GPU)")
        e.add_argument("--plan", action="store_true", help="print the budget table and stop")
        if name == "relu-vs-tanh":
            e.add_argument("--lrs", type=float, nargs="+", help="learning-rate sweep grid (one value: no sweep)")
            e.add_argument("--relu-lrs", type=float, nargs="+")
            e.add_argument("--tanh-lrs", type=float, nargs="+")
            e.add_argument("--sweep-epochs", type=int)
            e.add_argument("--threshold", type=float, help="training error to reach (paper: 0.25)")
        else:
            e.add_argument("--arch", help="cifar-alexnet (default) or alexnet2012")
            e.add_argument("--variants", nargs="+", help="baseline no-response-norm non-overlapping-pool no-dropout "
                                                         "no-pca-noise one-column")
            e.add_argument("--lr", type=float)
    from alexnet.experiments.cifar_normalisation import add_parser as add_cifar_normalisation
    add_cifar_normalisation(which)
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("figures", help="the paper's Figures 3 and 4 for a checkpoint")
    which = p.add_subparsers(dest="which", required=True)
    for name, text in (("kernels", "Figure 3: conv1 kernels per column and their colour specificity"),
                       ("predictions", "Figure 4: test images with their top-5 predictions"),
                       ("neighbours", "Figure 4: test images with the six nearest training images by fc7")):
        f = which.add_parser(name, help=text)
        f.add_argument("--checkpoint", required=True)
        f.add_argument("--out", help="PNG path (default: beside the checkpoint)")
        if name != "kernels":
            f.add_argument("--data", required=True, help="image folders or an `alexnet prepare` output")
            f.add_argument("--split", help="default: test, else val")
            f.add_argument("--seed", type=int, default=0, help="which images are shown")
            f.add_argument("--device", default="auto")
        if name == "predictions":
            f.add_argument("--images", type=int, default=8)
            f.add_argument("--crops", type=int, choices=[1, 10], default=10)
        if name == "neighbours":
            f.add_argument("--queries", type=int, default=5)
            f.add_argument("--k", type=int, default=6)
            f.add_argument("--max-train", type=int, default=10000, help="training images searched (0: all)")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("report", help="one self-contained HTML page for a training run")
    p.add_argument("run")
    p.add_argument("--out", help="default RUN/report.html")
    p.add_argument("--data", help="the run's data, when config.json's data.source is not reachable")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-train", type=int, default=10000, help="training images searched for neighbours (0: all)")
    p.set_defaults(func=cmd_report)
    add_bench_parser(sub)
    from alexnet.memory import add_parser as add_memory_parser

    add_memory_parser(sub)
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
