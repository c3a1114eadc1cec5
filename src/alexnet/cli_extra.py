"""The `alexnet` subcommands beyond the main job: the paper's experiments and figures, the run
report, and the tools (`bench`, `memory`), registered by `alexnet.cli.build_parser`."""

from __future__ import annotations

import argparse


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

    from alexnet.experiments import figures
    from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
    from alexnet.runtime import resolve_device

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
        with figures.open_data(args.data, ckpt["image_size"], args.which == "predictions", args.split) as data:
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
    from alexnet.experiments.report import build_report

    build_report(args.run, args.out, args.data, args.device, args.max_train or None)
    return 0


def add_experiment_parsers(sub) -> None:
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


def add_tool_parsers(sub) -> None:
    from alexnet.tools.bench import add_parser as add_bench_parser
    from alexnet.tools.memory import add_parser as add_memory_parser

    add_bench_parser(sub)
    add_memory_parser(sub)
