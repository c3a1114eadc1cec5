"""`alexnet bench`: the training step of every form of the network, its peer beside it, inference,
ten-crop evaluation and the end-to-end rate from prepared data, measured in one run.

Rows (images per second):
* ``step``: the step `alexnet train` runs (`alexnet.step`: augmentation from uint8 on the device,
  forward, loss, backward, the paper's update) on GPU-resident batches, for each form in
  `bench_steps.FORMS` (the paper's net grouped, torchvision's alexnet, the one-column net, the two
  columns on two GPUs or on two streams) and each variant (eager, compiled, compiled + CUDA graph);
  with two GPUs also one column per process and DDP under torchrun (`bench_parallel`). Each form's
  best variant is what the ratios compare: the paper's net against torchvision's, the two columns
  against the grouped net, and the paper's own comparison (two columns on two GPUs against the
  one-column net on one GPU, as time per ImageNet epoch).
* ``infer``, ``tencrop``: the forward pass in eval mode; the paper's ten-crop protocol.
* ``e2e``: the same step fed by the loader from an `alexnet prepare` folder, and the loader alone.
* ``--profile``: where the step's GPU time goes, and per GPU for the two columns (busy, exchanging,
  idle).

Timing (`alexnet.tools.timing`): warm-up steps first (compilation, autotuning and graph capture
happen there, reported apart), then `repeats` runs of at least 250 ms on CUDA, the median counts. On
the CPU the defaults are CPU-sized (batch 8, two steps) and every measurement says it is running.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from alexnet.runtime import resolve_device
from alexnet.tools import bench_parallel, bench_steps
from alexnet.tools.timing import Timer, environment, measure, rate

IMAGENET_TRAIN = 1_281_167
ROWS = ("step", "parallel", "infer", "tencrop", "e2e")


@dataclass
class BenchConfig:
    device: str = "auto"
    batches: tuple[int, ...] | None = None     # default (128, 256); CPU: (8,)
    forms: tuple[str, ...] | None = None       # default: every form this machine can run
    variants: tuple[str, ...] | None = None    # default: eager, compiled, graphed (CPU: eager)
    only: tuple[str, ...] = ()                 # "form:variant" pairs: exactly these, in this order
    rows: tuple[str, ...] = ROWS
    steps: int | None = None                   # timed steps per run (20; CPU 2)
    repeats: int | None = None                 # runs; the median counts (5; CPU 1)
    warmup: int | None = None                  # untimed steps first (10; CPU 1)
    data: str | None = None                    # a prepared folder for the e2e row (default: made here)
    replicate_to: int | None = None
    e2e_steps: int | None = None               # timed loader-fed steps (300; CPU 2)
    workers: tuple[int | None, ...] = (None,)  # loader worker counts to try (None: the loader's default)
    workdir: str | None = None
    profile: bool = False
    seed: int = 0
    json_out: str | None = None
    log: object = field(default=print, repr=False)

    @property
    def cpu_sized(self) -> bool:
        return resolve_device(self.device).type != "cuda"

    def resolved(self) -> "BenchConfig":
        cpu = self.cpu_sized
        unknown = set(self.rows) - set(ROWS)
        if unknown:
            raise ValueError(f"unknown rows {sorted(unknown)}: {', '.join(ROWS)}")
        forms = self.forms or tuple(f for f in bench_steps.FORMS if not (
            f.startswith("columns-2gpu") and (cpu or torch.cuda.device_count() < 2)))
        bad = set(forms) - set(bench_steps.FORMS)
        if bad:
            raise ValueError(f"unknown forms {sorted(bad)}: {', '.join(bench_steps.FORMS)}")
        variants = self.variants or (("eager",) if cpu else bench_steps.VARIANTS)
        return BenchConfig(**(asdict(self) | dict(
            batches=tuple(self.batches or ((8,) if cpu else (128, 256))), forms=forms, variants=variants,
            steps=self.steps or (2 if cpu else 20), repeats=self.repeats or (1 if cpu else 5),
            warmup=self.warmup if self.warmup is not None else (1 if cpu else 10),
            e2e_steps=self.e2e_steps or (2 if cpu else 300), log=self.log)))


def _variants_for(form: str, variants) -> list[str]:
    """CUDA graphs capture one device's step: not the two columns."""
    return [v for v in variants if not (v == "graphed" and form.startswith("columns"))]


def plan_pairs(cfg: BenchConfig, forms) -> list[tuple[str, str]]:
    """The (form, variant) pairs to measure among `forms`: --only's, or every form x variant."""
    if cfg.only:
        pairs = [tuple(p.split(":", 1)) for p in cfg.only]
        variants = {f: bench_steps.VARIANTS for f in bench_steps.FORMS} | \
            {f: bench_parallel.VARIANTS for f in bench_parallel.PARALLEL_FORMS}
        bad = [p for p in pairs if len(p) != 2 or p[1] not in variants.get(p[0], ())]
        if bad:
            raise ValueError(f"--only takes FORM:VARIANT pairs, not {bad}")
        return [p for p in pairs if p[0] in forms]
    return [(f, v) for f in forms for v in _variants_for(f, cfg.variants)]


def step_rows(cfg: BenchConfig, device: torch.device, result: dict, save) -> None:
    log, timer = cfg.log, Timer(device)
    for batch in cfg.batches:
        for form, variant in plan_pairs(cfg, cfg.forms):
            log(f"step: {form} ({bench_steps.FORMS[form]}), {variant}, batch {batch} ...")
            try:
                placement = bench_steps.build_form(form, device)
                fn = bench_steps.step_fn(placement, variant, batch, device, cfg.seed, log=log)
                t = measure({form: fn}, timer, cfg.warmup, cfg.steps, cfg.repeats)[form]
            except Exception as e:  # noqa: BLE001 - a form that cannot run here is reported, not fatal
                log(f"  failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
                result["step"].append({"form": form, "variant": variant, "batch": batch, "error": str(e)[:300]})
                continue
            graphs = getattr(fn.step, "failed", None)
            row = {"form": form, "variant": variant, "batch": batch, "ms": t["ms"], "spread": t["spread"],
                   "images_per_s": rate(batch, t["ms"]), "warmup_s": t["warmup_s"]}
            if graphs:
                row["graph_capture_failed"] = graphs
            result["step"].append(row)
            log(f"  {_fmt_rate(row['images_per_s'])} img/s ({t['ms']:.2f} ms/step, spread "
                f"{100 * t['spread']:.0f}%, warm-up {t['warmup_s']:.1f} s)")
            save()
            del placement, fn
            if device.type == "cuda":
                torch.cuda.empty_cache()


def parallel_variants(cfg: BenchConfig, form: str) -> list[str]:
    """The variants of a torchrun form to time: --only's, else the asked-for variants; with "graphed",
    DDP is timed graphed with the classifier's all-reduces overlapped (graphed) and as `alexnet train`
    runs it on GPUs, with the classifier's update shared out too (graphed-shard)."""
    if cfg.only:
        return [v for f, v in plan_pairs(cfg, bench_parallel.PARALLEL_FORMS) if f == form]
    variants = [v for v in cfg.variants if v in ("eager", "compiled", "graphed")] or ["eager"]
    return variants + ["graphed-shard"] if form == "ddp" and "graphed" in variants else variants


def parallel_rows(cfg: BenchConfig, device: torch.device, result: dict, save) -> None:
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        cfg.log("parallel: needs two GPUs; skipped")
        return
    for form in bench_parallel.PARALLEL_FORMS:
        variants = parallel_variants(cfg, form)
        if not variants:
            continue
        cfg.log(f"{form} ({bench_parallel.PARALLEL_FORMS[form]}), {', '.join(variants)}, batches "
                f"{list(cfg.batches)} under torchrun ...")
        with tempfile.TemporaryDirectory() as tmp:
            r = bench_parallel.run_under_torchrun(form, cfg.batches, variants, cfg.steps, cfg.warmup, cfg.repeats,
                                                  str(device.type), Path(tmp) / "out.json")
        if "error" in r:
            cfg.log(f"  failed: {r['error']}")
            result["step"].append({"form": form, "error": r["error"]})
            continue
        for row in r["rows"].values():
            result["step"].append({"form": form} | row)
            cfg.log(f"  batch {row['batch']} {row['variant']}: {_fmt_rate(row['images_per_s'])} img/s")
        save()


def best(result: dict) -> dict:
    """{(form, batch): the fastest row}."""
    out = {}
    for row in result["step"]:
        if "images_per_s" in row:
            key = (row["form"], row["batch"])
            if key not in out or row["images_per_s"] > out[key]["images_per_s"]:
                out[key] = row
    return out


def comparisons(result: dict, batches) -> list[dict]:
    """The ratios the paper and the issues ask about, from each form's best variant."""
    top, out = best(result), []
    pairs = [("alexnet2012", "torchvision", "the paper's net / torchvision's"),
             ("columns-2gpu", "alexnet2012", "two columns on two GPUs (one process) / grouped on one GPU"),
             ("columns-2proc", "alexnet2012", "two columns, one process per GPU / grouped on one GPU"),
             ("columns-2streams", "alexnet2012", "two columns on one GPU's two streams / grouped"),
             ("ddp", "alexnet2012", "DDP on two GPUs / one GPU (weak scaling efficiency x2)")]
    for b in batches:
        for a, z, what in pairs:
            if (a, b) in top and (z, b) in top:
                out.append({"batch": b, "what": what, "ratio": top[(a, b)]["images_per_s"] / top[(z, b)]["images_per_s"],
                            "a": f"{a} {top[(a, b)]['variant']}", "b": f"{z} {top[(z, b)]['variant']}"})
        cols = [top[(f, b)] for f in ("columns-2gpu", "columns-2proc") if (f, b) in top]
        if cols and ("one-column", b) in top:
            two, one = max(cols, key=lambda r: r["images_per_s"]), top[("one-column", b)]
            out.append({"batch": b, "what": "the paper's comparison: two columns on two GPUs / one column on one GPU "
                        "(time per ImageNet epoch: "
                        f"{IMAGENET_TRAIN / two['images_per_s'] / 60:.1f} min vs "
                        f"{IMAGENET_TRAIN / one['images_per_s'] / 60:.1f} min)",
                        "ratio": two["images_per_s"] / one["images_per_s"], "a": two["form"], "b": "one-column"})
    return out


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def run_bench(cfg: BenchConfig) -> dict:
    from alexnet.tools import bench_rows

    cfg = cfg.resolved()
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    result: dict = {"env": environment(device), "config": {k: v for k, v in asdict(cfg).items() if k != "log"},
                    "step": [], "peers": []}
    cfg.log(f"alexnet bench on {result['env'].get('gpu', 'the CPU')}: batches {list(cfg.batches)}, forms "
            f"{', '.join(cfg.forms)}, variants {', '.join(cfg.variants)}")

    def save():
        if cfg.json_out:
            Path(cfg.json_out).write_text(json.dumps(result, indent=1, default=str))

    if "step" in cfg.rows:
        step_rows(cfg, device, result, save)
    if "parallel" in cfg.rows and device.type == "cuda":
        parallel_rows(cfg, device, result, save)
    bench_rows.peer_rows(cfg, device, result, save)
    if "e2e" in cfg.rows:
        grouped = {b: r["images_per_s"] for (f, b), r in best(result).items() if f == "alexnet2012"}
        bench_rows.e2e_rows(cfg, device, result, save, grouped)
    if cfg.profile and device.type == "cuda":
        bench_rows.profiles(cfg, device, result, save)
    result["comparisons"] = comparisons(result, cfg.batches)
    save()
    return result


def format_table(result: dict) -> str:
    env = result["env"]
    lines = [f"alexnet bench: {env.get('gpu', 'CPU')}{' x' + str(env['gpus']) if env.get('gpus', 1) > 1 else ''}, "
             f"torch {env['torch']}" + (f", cuDNN {env['cudnn']}, Triton {env.get('triton')}" if "cudnn" in env else "")
             + f", {env['date']}", "",
             "training step on GPU-resident batches (augmentation + forward + backward + update), images/s",
             f"{'form':<18}{'variant':<10}" + "".join(f"{'batch ' + str(b):>14}" for b in result["config"]["batches"])]
    rows: dict = {}
    for r in result["step"]:
        if "images_per_s" in r:
            rows.setdefault((r["form"], r["variant"]), {})[r["batch"]] = r["images_per_s"]
    for (form, variant), by_batch in rows.items():
        lines.append(f"{form:<18}{variant:<10}" + "".join(
            f"{_fmt_rate(by_batch[b]) if b in by_batch else '-':>14}" for b in result["config"]["batches"]))
    for r in result["step"]:
        if "error" in r:
            lines.append(f"{r['form']:<18}{r.get('variant', ''):<10}failed: {r['error'][:80]}")
    for c in result.get("comparisons", []):
        lines.append(f"  batch {c['batch']}: {c['what']}: {c['ratio']:.3f}")
    if result["peers"]:
        lines += ["", f"{'peers':<28}{'batch':>6}{'alexnet2012':>14}{'torchvision':>14}{'ratio':>8}"]
        for r in result["peers"]:
            lines.append(f"{r['row']:<28}{r['batch']:>6}{_fmt_rate(r['alexnet2012']['images_per_s']):>14}"
                         f"{_fmt_rate(r['torchvision']['images_per_s']):>14}{r['ratio']:>8.3f}")
    e2e = result.get("e2e")
    if e2e and e2e.get("rows"):
        lines += ["", f"end to end from {e2e['images']:,} prepared images ({e2e['encoding']}), page cache "
                  f"{e2e.get('page_cache_before') if e2e.get('page_cache_before') is None else format(e2e['page_cache_before'], '.0%')}"]
        for r in e2e["rows"]:
            share = f"{100 * r['e2e_over_resident']:.1f}% of resident" if "e2e_over_resident" in r else ""
            lines.append(f"  batch {r['batch']}, workers {r['workers'] or 'default'}: {_fmt_rate(r['e2e_images_per_s'])}"
                         f" img/s {share}; loader alone {_fmt_rate(r['loader_images_per_s'])}; one ImageNet epoch "
                         f"{r['epoch_minutes']:.1f} min (projected)")
    return "\n".join(lines)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="the training step of every form beside torchvision's alexnet, inference, "
                                     "ten-crop evaluation and end-to-end rates, in one run")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes (default 128 256; CPU: 8)")
    p.add_argument("--forms", nargs="+", choices=list(bench_steps.FORMS), help="default: all this machine runs")
    p.add_argument("--variants", nargs="+", choices=list(bench_steps.VARIANTS), help="default: all (CPU: eager)")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), help="what to measure (default: all)")
    p.add_argument("--only", nargs="+", metavar="FORM:VARIANT", help="measure exactly these pairs, in this order, "
                   "e.g. alexnet2012:graphed columns-2gpu:compiled ddp:compiled")
    p.add_argument("--steps", type=int, help="timed steps per run (default 20; CPU 2)")
    p.add_argument("--repeats", type=int, help="timed runs, the median counts (default 5; CPU 1)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 10; CPU 1)")
    p.add_argument("--data", help="an `alexnet prepare` folder for the end-to-end row (default: made here)")
    p.add_argument("--replicate-to", type=int, help="repeat a raw store's train split to this many images first")
    p.add_argument("--e2e-steps", type=int, help="timed loader-fed steps (default 300; CPU 2)")
    p.add_argument("--workers", type=int, nargs="+", help="loader worker counts to try (default: the loader's)")
    p.add_argument("--workdir", help="keep made or replicated data here (default: a temporary folder)")
    p.add_argument("--profile", action="store_true", help="GPU time per kernel category and per GPU")
    p.add_argument("--json", action="store_true", help="print the results as JSON (progress to stderr)")
    p.add_argument("--json-out", help="also write the JSON results to this file, after each measurement")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    out = sys.stderr if args.json else sys.stdout
    log = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, file=out, flush=True))
    cfg = BenchConfig(device=args.device, batches=tuple(args.batch) if args.batch else None,
                      forms=tuple(args.forms) if args.forms else None,
                      variants=tuple(args.variants) if args.variants else None, only=tuple(args.only or ()),
                      rows=tuple(args.rows) if args.rows else ROWS, steps=args.steps, repeats=args.repeats,
                      warmup=args.warmup, data=args.data, replicate_to=args.replicate_to, e2e_steps=args.e2e_steps,
                      workers=tuple(args.workers) if args.workers else (None,), workdir=args.workdir,
                      profile=args.profile, json_out=args.json_out, log=log)
    try:
        result = run_bench(cfg)
    except ValueError as e:
        print(f"alexnet bench: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, default=str) if args.json else "\n" + format_table(result))
    return 0
