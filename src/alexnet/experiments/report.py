"""`alexnet report RUN`: one self-contained HTML page for a training run.

From the run directory: metrics.jsonl (loss, error and learning-rate curves), config.json (the
resolved configuration and the hardware), test.json (the final test errors) and the checkpoint
(best.pt, else last.pt) for Figure 3's conv1 kernels. When the run's data is reachable (RUN/data,
where train prepares image folders, or config.json's data.source, or --data) also Figure 4's top-5
predictions and fc7 nearest neighbours. Images are inlined as base64 PNGs: the page is one file.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from alexnet.errors import DataError

__all__ = ["build_report"]


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(rows: list[tuple], head: tuple | None = None) -> str:
    out = ["<table>"]
    if head:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return str(v)


def _data_for(run: Path, config: dict, override: str | None) -> tuple[Path | None, str]:
    from alexnet.data.prepared import is_prepared

    source = config.get("data", {}).get("source")
    candidates = [Path(override)] if override else [run / "data"] + ([Path(source)] if source else [])
    for c in candidates:
        if c.exists():
            if is_prepared(c):
                return c, ""
            if override:
                return c, ""    # image folders given explicitly: prepared into a temporary folder
    return None, ("the run's data is not reachable (no RUN/data, and config.json's data.source "
                  f"{config.get('data', {}).get('source')!r} is not a prepared folder here); give --data DIR")


STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;
color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:0}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin-top:4px}table{border-collapse:collapse;font-size:.88em;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f4f4f4}
img{max-width:100%;border:1px solid #eee;margin:6px 0}.note{color:#666;font-size:.9em}
.kpi{display:inline-block;margin:8px 18px 8px 0}.kpi b{display:block;font-size:1.6em}
"""


def _headline(metrics: list, test: dict) -> list[str]:
    kpis = []
    if metrics:
        last = metrics[-1]
        best = min(metrics, key=lambda m: m["val_top1_error"])
        kpis += [("epochs", f"{last['epoch']}"), ("final val top-1", f"{100 * last['val_top1_error']:.2f}%"),
                 ("final val top-5", f"{100 * last['val_top5_error']:.2f}%"),
                 (f"best val top-1 (epoch {best['epoch']})", f"{100 * best['val_top1_error']:.2f}%"),
                 ("images/s", f"{last['images_per_second']:,.0f}")]
    for key, value in test.items():
        if key.startswith("test_") and isinstance(value, dict):
            kpis.append((f"test top-1, {value.get('crops')} crop(s)", f"{100 * value['top1_error']:.2f}%"))
    return ["".join(f"<div class='kpi'><b>{html.escape(v)}</b>{html.escape(k)}</div>" for k, v in kpis)]


def _curves(metrics: list) -> list[str]:
    from alexnet.experiments.figures import curves_figure

    if not metrics:
        return ["<h2>Training curves</h2>", "<p class='note'>no metrics.jsonl yet</p>"]
    return ["<h2>Training curves</h2>", _img(curves_figure(metrics), "training curves"),
            _table([(m["epoch"], f"{m['train_loss']:.4f}", f"{100 * m['train_top1_error']:.2f}",
                     f"{100 * m['val_top1_error']:.2f}", f"{100 * m['val_top5_error']:.2f}", f"{m['lr']:g}",
                     f"{m['seconds']:.1f}", f"{m['images_per_second']:,.0f}") for m in metrics],
                   ("epoch", "train loss", "train top-1 %", "val top-1 %", "val top-5 %", "lr", "s", "img/s"))]


def _kernels(ckpt_path):
    """(model, checkpoint, Figure 3's section)."""
    from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
    from alexnet.experiments.figures import kernels_figure

    if ckpt_path is None:
        return None, None, ["<h2>Figure 3: conv1 kernels</h2><p class='note'>no checkpoint in the run</p>"]
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt).eval()
    png, rep = kernels_figure(model)
    return model, ckpt, [
        f"<h2>Figure 3: conv1 kernels</h2><p class='note'>{html.escape(ckpt_path.name)}, epoch "
        f"{ckpt.get('epoch')}, step {ckpt.get('global_step')}. Colour specificity: the share of each "
        "kernel's energy outside the grey (1,1,1) direction, averaged over a column (0 grey, 1 purely "
        "chromatic, ~0.67 for random weights). The paper: column 1 colour-agnostic, column 2 "
        "colour-specific.</p>", _img(png, "conv1 kernels"),
        _table([(c["column"], c["kernels"], f"{c['colour_specificity']:.3f}", f"{c['colour_specificity_sd']:.3f}",
                 c["colour_specific_kernels"]) for c in rep["columns"]],
               ("column", "kernels", "colour specificity (mean)", "sd", "kernels above 0.5"))]


def _figure4(run, config, data, model, ckpt, device, neighbours_max_train) -> list[str]:
    from alexnet.experiments.figures import nearest_neighbours, neighbours_figure, open_data, predictions, \
        predictions_figure
    from alexnet.runtime import resolve_device

    parts = ["<h2>Figure 4: predictions and nearest neighbours</h2>"]
    where, why = _data_for(run, config, data)
    if model is None:
        return parts + ["<p class='note'>no checkpoint in the run</p>"]
    if where is None:
        return parts + [f"<p class='note'>{html.escape(why)}</p>"]
    dev = resolve_device(device)
    with open_data(where, ckpt["image_size"]) as prepared:
        preds = predictions(model, ckpt, prepared, n=8, device=dev)
        parts.append(f"<p class='note'>{len(preds)} random images of the {html.escape(preds[0]['split'])} split "
                     f"of {html.escape(str(where))}, ten-crop softmax; the true class's bar is red.</p>")
        parts.append(_img(predictions_figure(preds), "top-5 predictions"))
        if "train" in prepared.splits:
            nn_result = nearest_neighbours(model, ckpt, prepared, queries=5, max_train=neighbours_max_train,
                                           device=dev)
            parts.append(f"<p class='note'>Each row: a {html.escape(nn_result['split'])} image and the six "
                         f"training images nearest to it in Euclidean distance of the "
                         f"{nn_result['dimensions']}-d last hidden layer (fc7), searched among "
                         f"{nn_result['searched']:,} of {nn_result['train_images']:,} training images; "
                         "a red caption marks another class.</p>")
            parts.append(_img(neighbours_figure(nn_result), "nearest neighbours"))
    return parts


def build_report(run: str | Path, out: str | Path | None = None, data: str | None = None, device: str = "cpu",
                 neighbours_max_train: int | None = 10000, log=print) -> Path:
    run = Path(run)
    if not (run / "config.json").exists():
        raise DataError(run, "not a run directory (no config.json)")
    config = json.loads((run / "config.json").read_text())
    cfg = config.get("config", {})
    metrics = []
    if (run / "metrics.jsonl").exists():
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    test = json.loads((run / "test.json").read_text()) if (run / "test.json").exists() else {}
    ckpt_path = next((p for p in (run / "best.pt", run / "last.pt") if p.exists()), None)
    arch = f"{cfg.get('arch')} {json.dumps(cfg.get('arch_options', {}))}"
    parts = [f"<h1>{html.escape(run.name)}</h1>",
             f"<p class='sub'>{html.escape(arch)} &middot; alexnet {html.escape(str(config.get('alexnet')))} "
             f"&middot; {html.escape(str(run.resolve()))}</p>"]
    parts += _headline(metrics, test) + _curves(metrics)
    log("report: figures of the checkpoint ...")
    model, ckpt, figure3 = _kernels(ckpt_path)
    parts += figure3 + _figure4(run, config, data, model, ckpt, device, neighbours_max_train)
    parts.append("<h2>Configuration</h2>")
    parts.append(_table([(k, _fmt(v)) for k, v in cfg.items()], ("option", "value")))
    parts.append("<h2>Data</h2>")
    parts.append(_table([(k, _fmt(v)) for k, v in config.get("data", {}).items()], ("", "")))
    parts.append("<h2>Hardware</h2>")
    parts.append(_table([(k, _fmt(v)) for k, v in config.get("hardware", {}).items()], ("", "")))
    if test:
        parts.append("<h2>Test</h2>")
        parts.append(_table([(k, _fmt(v)) for k, v in test.items() if k != "last"], ("", "")))
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(run.name)} - alexnet "
            f"report</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    out = Path(out) if out else run / "report.html"
    out.write_text(page)
    log(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")
    return out
