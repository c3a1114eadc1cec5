"""What each way of spreading `alexnet2012` over devices costs: bytes moved and bytes held.

`column_accounting(model_or_config, batch)` works it out from the layer shapes alone (nothing is
run) for four arrangements of one training step on a global batch of `batch` images:

* `one_device`: the grouped network on one device.
* `columns`: the paper's two-GPU model parallelism (`alexnet.parallel.columns`): each device holds
  one column and reads the whole batch; the columns exchange activations into conv3 (each sends
  its 128x13x13 pool2 maps), fc6 (its 128x6x6 = 4,608 pool5 values), fc7 (its 2,048 fc6 outputs)
  and fc8 (column 1 sends its 2,048 fc7 outputs to column 0, which holds fc8). The backward pass
  sends the gradients of the same tensors the other way: equal byte counts.
* `data_parallel`: N workers each hold the whole network and batch/N images; after backward the
  gradients (as many bytes as the parameters) are summed by a ring all-reduce, in which each
  worker sends 2(N-1)/N times the parameter bytes.
* `hybrid`: Krizhevsky 2014, "One weird trick for parallelizing convolutional neural networks":
  the conv layers data-parallel (batch/N images each, ring all-reduce of the conv gradients), the
  FC layers model-parallel (each worker holds 1/N of the output features of fc6, fc7 and fc8, for
  the whole batch). Forward: all-gathers of the conv5 output (9,216 per image) into fc6, of the
  fc6 and fc7 outputs into fc7 and fc8, and of the logits for the softmax; backward: the matching
  reduce-scatters (none for the logits: every worker has them all and takes its slice's
  gradient). A ring all-gather or reduce-scatter of a tensor of T bytes in all has each worker
  send (N-1)/N T. Applied here to the 2012 network's layers.

`bytes_per_step` sums what every device sends (forward + backward + gradient sync).

Memory per device: parameter bytes, gradient bytes (the same), optimizer state bytes (PaperSGD
keeps one velocity per parameter: the same again), the input batch copied to the device, and an
estimate of the activation bytes saved for backward: every distinct tensor a layer produces in
the forward pass is counted once, because the next layer's backward needs it (a conv or linear
layer's input, an in-place ReLU's output, a normalisation's input, a pool's input and output):

    the padded conv1 input; each conv output (the in-place ReLU keeps the same buffer); each
    response-norm (and the cuda-convnet recipe's within-map norm) output; each max-pool output
    plus its argmax indices (int64); each FC output, each dropout output plus its mask (1 byte an
    element; only with dropout > 0); and, where the arrangement gathers tensors, the gathered
    inputs of conv3, fc6, fc7 and fc8 (new buffers; one device reads them in place).

The logits and the loss, and the temporaries of a particular kernel, are not counted.
"""

from __future__ import annotations

import math
from dataclasses import asdict

from alexnet.errors import ConfigError
from alexnet.layers import overhang
from alexnet.models.alexnet2012 import POOLING, AlexNet2012Config

INDEX_BYTES = 8   # torch's max-pool indices are int64
MASK_BYTES = 1    # dropout masks are bool


def _as_config(model_or_config) -> AlexNet2012Config:
    if model_or_config is None:
        return AlexNet2012Config()
    if isinstance(model_or_config, AlexNet2012Config):
        return model_or_config
    if isinstance(model_or_config, dict):
        return AlexNet2012Config(**model_or_config)
    cfg = getattr(model_or_config, "config", None)
    if isinstance(cfg, AlexNet2012Config):
        return cfg
    raise ConfigError(f"parallel accounting is for alexnet2012; got {type(model_or_config).__name__}")


def _sizes(input_size: int, pooling: str) -> dict[str, int]:
    k, s = POOLING[pooling]
    pool = lambda n: (n - k) // s + 1  # noqa: E731
    pad = overhang(input_size, 11, 4)
    n1 = (input_size + pad - 11) // 4 + 1
    p1 = pool(n1)
    p2 = pool(p1)
    p5 = pool(p2)
    if p5 != 6:
        raise ConfigError(f"input {input_size}: pool5 comes out {p5}x{p5}, fc6 needs 6x6 (use 224 or 227)")
    return dict(padded=input_size + pad, conv1=n1, pool1=p1, pool2=p2, pool5=p5)


def _layer_params(cfg: AlexNet2012Config) -> dict[str, int]:
    """Parameters of each layer of the grouped two-column network."""
    classes = cfg.num_classes
    return {
        "conv1": 96 * 3 * 11 * 11 + 96, "conv2": 256 * 48 * 5 * 5 + 256, "conv3": 384 * 256 * 3 * 3 + 384,
        "conv4": 384 * 192 * 3 * 3 + 384, "conv5": 256 * 192 * 3 * 3 + 256,
        "fc6": 4096 * 9216 + 4096, "fc7": 4096 * 4096 + 4096, "fc8": classes * 4096 + classes,
    }


CONV = ("conv1", "conv2", "conv3", "conv4", "conv5")
FC = ("fc6", "fc7", "fc8")


def _conv_saved_bytes(cfg: AlexNet2012Config, z: dict, width: float, dtype_bytes: int,
                      gathered_conv3: bool) -> float:
    """Saved bytes per image of conv1..pool5 for a share `width` of the channels (1: all, 0.5: a
    column); `gathered_conv3`: conv3's input is a new buffer of both columns' maps."""
    c1, c2, c3, c4, c5 = (96 * width, 256 * width, 384 * width, 384 * width, 256 * width)
    norms = 1 if cfg.response_norm else 0
    mapnorm = 1 if cfg.response_norm and cfg.recipe == "cuda-convnet" else 0
    a1, q1, q2, q5 = z["conv1"] ** 2, z["pool1"] ** 2, z["pool2"] ** 2, z["pool5"] ** 2
    floats = (3 * z["padded"] ** 2                       # conv1 input
              + c1 * a1 * (1 + norms)                    # conv1 (ReLU in place), norm1
              + c1 * q1                                  # pool1
              + c2 * q1 * (1 + norms + mapnorm)          # conv2, norm2, (mapnorm2)
              + c2 * q2                                  # pool2
              + (256 * q2 if gathered_conv3 else 0)      # conv3's gathered input
              + (c3 + c4 + c5) * q2                      # conv3, conv4, conv5
              + c5 * q5)                                 # pool5
    indices = c1 * q1 + c2 * q2 + c5 * q5
    return floats * dtype_bytes + indices * INDEX_BYTES


def _fc_saved_bytes(cfg: AlexNet2012Config, width: float, dtype_bytes: int, gathered: bool,
                    fc8_input: bool) -> float:
    """Saved bytes per image of fc6..fc8 holding a share `width` of fc6/fc7's units; `gathered`:
    the inputs of fc6 and fc7 are new buffers (9,216 and 4,096 values); `fc8_input`: this device
    computes fc8 from a gathered 4,096 input."""
    units = 4096 * width
    drop = cfg.dropout > 0
    per_layer = units * dtype_bytes * (2 if drop else 1) + (units * MASK_BYTES if drop else 0)
    gathered_bytes = (9216 + 4096) * dtype_bytes if gathered else 0
    return 2 * per_layer + gathered_bytes + (4096 * dtype_bytes if fc8_input and gathered else 0)


def _device(params: float, activation: float, inputs: float, dtype_bytes: int, index: int) -> dict:
    p = int(round(params * dtype_bytes))
    a, i = int(round(activation)), int(round(inputs))
    return {"device": index, "param_bytes": p, "grad_bytes": p, "optimizer_state_bytes": p,
            "activation_bytes": a, "input_bytes": i, "total_bytes": 3 * p + a + i}


def _comm(forward: float, backward: float, sync: float, sent_max: float) -> dict:
    f, b, s = int(round(forward)), int(round(backward)), int(round(sync))
    return {"forward_bytes": f, "backward_bytes": b, "gradient_sync_bytes": s, "bytes_per_step": f + b + s,
            "max_bytes_sent_by_one_device": int(round(sent_max))}


def column_accounting(model_or_config=None, batch: int = 128, input_size: int = 224, dtype_bytes: int = 4,
                      workers: int = 2) -> dict:
    """Bytes moved per training step and bytes held per device, for one device, the paper's two
    columns, data parallelism over `workers` and the 2014 hybrid over `workers` (module doc).

    `batch` is the global batch of one step in every arrangement (the columns both read all of
    it; a data-parallel or hybrid worker's conv layers see ceil(batch / workers) images).
    """
    cfg = _as_config(model_or_config)
    if cfg.columns != 2:
        raise ConfigError("the column accounting is for the two-column network (columns=2)")
    if batch < 1 or workers < 1 or dtype_bytes < 1:
        raise ConfigError(f"batch, workers and dtype_bytes must be positive: {batch}, {workers}, {dtype_bytes}")
    z = _sizes(input_size, cfg.pooling)
    B, b, N = batch, dtype_bytes, workers
    layer = _layer_params(cfg)
    total_params = sum(layer.values())
    conv_params = sum(layer[n] for n in CONV)
    image = 3 * input_size * input_size * b
    classes = cfg.num_classes

    # One device ------------------------------------------------------------------------------
    whole_act = _conv_saved_bytes(cfg, z, 1.0, b, False) + _fc_saved_bytes(cfg, 1.0, b, False, False)
    one = {"devices": 1, "description": "the grouped network on one device",
           "per_device": [_device(total_params, B * whole_act, B * image, b, 0)],
           "comm": _comm(0, 0, 0, 0), "exchanges": []}

    columns = _columns(cfg, z, layer, B, b, image)
    dp = _data_parallel(total_params, whole_act, B, b, N, image)
    hybrid = _hybrid(cfg, z, conv_params, B, b, N, image, classes)

    return {
        "batch": B, "input_size": input_size, "dtype_bytes": b, "workers": N, "options": asdict(cfg),
        "params": total_params, "param_bytes": total_params * b,
        "one_device": one, "columns": columns, "data_parallel": dp, "hybrid": hybrid,
        "notes": {
            "bytes_per_step": "forward + backward + gradient-sync bytes sent, summed over devices",
            "activation_bytes": "estimate: each distinct forward tensor a backward needs, once (module doc)",
            "optimizer_state_bytes": "PaperSGD: one velocity per parameter",
            "fc8": "whole on column 0 in both recipes (the 2012 code's placement)",
        },
    }


def _columns(cfg, z, layer: dict, B: int, b: int, image: int) -> dict:
    """The paper's split: what each column sends into each exchange point, and what it holds."""
    # Per image, what each column sends into each exchange point (the gradient comes back).
    half_conv = 128 * z["pool2"] ** 2
    half_pool5 = 128 * z["pool5"] ** 2
    points = [("conv3", [128, z["pool2"], z["pool2"]], half_conv, 2),
              ("fc6", [half_pool5], half_pool5, 2),
              ("fc7", [2048], 2048, 2),
              ("fc8", [2048], 2048, 1)]              # column 1 -> column 0 only
    exchanges = []
    for name, shape, elems, senders in points:
        per_column = B * elems * b
        exchanges.append({
            "point": name, "shape_per_column": shape, "elements_per_image_per_column": elems,
            "direction": "both ways" if senders == 2 else "column 1 -> column 0",
            "forward_bytes_per_column": per_column, "forward_bytes": senders * per_column,
            "backward_bytes": senders * per_column})
    fwd = sum(e["forward_bytes"] for e in exchanges)
    # Each column sends its halves into conv3/fc6/fc7 and the gradients of the other's halves back;
    # column 1 sends fc8's input, column 0 its gradient: the two columns send the same amount.
    both_ways = sum(e["forward_bytes_per_column"] for e in exchanges if e["point"] != "fc8")
    sent = 2 * both_ways + 2048 * B * b
    col_params = [sum(layer[n] for n in CONV + FC[:2]) / 2 + layer["fc8"], sum(layer[n] for n in CONV + FC[:2]) / 2]
    col_act = [B * (_conv_saved_bytes(cfg, z, 0.5, b, True) + _fc_saved_bytes(cfg, 0.5, b, True, i == 0))
               for i in range(2)]
    columns = {"devices": 2,
               "description": "the paper: one column per device, activations exchanged into conv3, fc6, fc7, "
                              "fc8 (fc8 on column 0)",
               "per_device": [_device(col_params[i], col_act[i], B * image, b, i) for i in range(2)],
               "comm": _comm(fwd, fwd, 0, sent), "exchanges": exchanges}

    return columns


def _data_parallel(total_params: int, whole_act: float, B: int, b: int, N: int, image: int) -> dict:
    local = math.ceil(B / N)
    ring = 2 * (N - 1) / N * total_params * b
    dp = {"devices": N,
          "description": f"{N} workers, each the whole network on {local} images; ring all-reduce of the gradients",
          "per_device": [_device(total_params, local * whole_act, local * image, b, i) for i in range(N)],
          "comm": _comm(0, 0, N * ring, ring), "exchanges": [],
          "allreduce_payload_bytes": total_params * b, "ring_factor": 2 * (N - 1) / N}

    return dp


def _hybrid(cfg, z, conv_params: int, B: int, b: int, N: int, image: int, classes: int) -> dict:
    """Krizhevsky 2014: conv layers data-parallel, fc layers model-parallel."""
    local = math.ceil(B / N)
    fc_share = sum(math.ceil(out / N) * (inp + 1) for out, inp in ((4096, 9216), (4096, 4096), (classes, 4096)))
    hybrid_params = conv_params + fc_share
    width = math.ceil(4096 / N) / 4096
    hyb_act = (local * _conv_saved_bytes(cfg, z, 1.0, b, False)
               + B * _fc_saved_bytes(cfg, width, b, N > 1, True))
    gathered = [("fc6", 9216), ("fc7", 4096), ("fc8", 4096), ("softmax", classes)]
    # Every worker gets all the logits, so each computes the loss gradient of its own slice: the
    # softmax gather has no backward exchange.
    hyb_exchanges = [{"point": name, "elements_per_image": elems,
                      "forward_bytes": (N - 1) * B * elems * b,
                      "backward_bytes": 0 if name == "softmax" else (N - 1) * B * elems * b,
                      "direction": "all-gather forward" + ("" if name == "softmax" else ", reduce-scatter backward")}
                     for name, elems in gathered]
    hyb_fwd = sum(e["forward_bytes"] for e in hyb_exchanges)
    hyb_bwd = sum(e["backward_bytes"] for e in hyb_exchanges)
    conv_ring = 2 * (N - 1) / N * conv_params * b
    hybrid = {"devices": N,
              "description": f"Krizhevsky 2014: conv layers data-parallel over {N} workers ({local} images each), "
                             f"fc6-fc8 model-parallel (1/{N} of their outputs each, whole batch)",
              "per_device": [_device(hybrid_params, hyb_act, local * image, b, i) for i in range(N)],
              "comm": _comm(hyb_fwd, hyb_bwd, N * conv_ring, (hyb_fwd + hyb_bwd) / N + conv_ring),
              "exchanges": hyb_exchanges, "allreduce_payload_bytes": conv_params * b}
    return hybrid


def format_accounting(acc: dict) -> str:
    """The short table `alexnet info --parallel columns` prints after the layer table."""
    order = [("one device", acc["one_device"]), ("columns", acc["columns"]),
             (f"data x{acc['workers']}", acc["data_parallel"]), (f"hybrid x{acc['workers']}", acc["hybrid"])]
    mb = lambda n: f"{n / 2**20:,.1f}"  # noqa: E731
    head = f"{'per step, MiB':<34}" + "".join(f"{name:>14}" for name, _ in order)
    lines = [f"parallel: batch {acc['batch']}, {acc['dtype_bytes']}-byte values, device 0 "
             f"(columns: column 0, which holds fc8)", head, "-" * len(head)]

    def row(label, fn):
        lines.append(f"{label:<34}" + "".join(f"{fn(s):>14}" for _, s in order))

    row("sent forward (all devices)", lambda s: mb(s["comm"]["forward_bytes"]))
    row("sent backward (all devices)", lambda s: mb(s["comm"]["backward_bytes"]))
    row("gradient sync (all devices)", lambda s: mb(s["comm"]["gradient_sync_bytes"]))
    row("total sent per step", lambda s: mb(s["comm"]["bytes_per_step"]))
    row("sent by the busiest device", lambda s: mb(s["comm"]["max_bytes_sent_by_one_device"]))
    row("parameters on device 0", lambda s: mb(s["per_device"][0]["param_bytes"]))
    row("gradients + velocity on device 0", lambda s: mb(2 * s["per_device"][0]["param_bytes"]))
    row("activations saved (estimate)", lambda s: mb(s["per_device"][0]["activation_bytes"]))
    row("total on device 0", lambda s: mb(s["per_device"][0]["total_bytes"]))
    ex = ", ".join(f"{e['point']} {e['elements_per_image_per_column']:,}" + (" (column 1 -> 0)" if e["point"] == "fc8" else "")
                   for e in acc["columns"]["exchanges"])
    lines.append(f"column exchange per image per column (values): {ex}; gradients return the same way")
    return "\n".join(lines)


__all__ = ["column_accounting", "format_accounting", "run_accounting", "format_run_accounting"]


def run_accounting(config, batch: int, crop: int, value_bytes: int, form: str, described: str,
                   world_size: int = 1, params: int = 0) -> dict:
    """What a training run moves and holds per step: for the columns, the exchanges and each
    device's memory (fp32 estimate); for data parallelism, the gradient all-reduce."""
    if not form.startswith("columns"):
        return {"mode": "data", "form": form, "layout": described, "world_size": world_size,
                "gradient_allreduce_bytes_per_step": params * 4,
                "ring_bytes_sent_per_process": int(2 * (world_size - 1) / max(world_size, 1) * params * 4)}
    comm = column_accounting(config, batch, crop, value_bytes)["columns"]
    held = column_accounting(config, batch, crop, 4)["columns"]
    return {
        "mode": "columns", "form": form, "layout": described, "batch": batch, "exchange_value_bytes": value_bytes,
        "exchanged_per_step": {"forward_bytes": comm["comm"]["forward_bytes"],
                               "backward_bytes": comm["comm"]["backward_bytes"],
                               "points": [{k: e[k] for k in ("point", "shape_per_column", "direction", "forward_bytes",
                                                             "backward_bytes")} for e in comm["exchanges"]]},
        "per_device_memory_estimate": held["per_device"],
        "memory_note": "fp32 estimate: parameters, gradients, PaperSGD velocities, the input batch and the "
                       "activations saved for backward",
    }


def format_run_accounting(info: dict) -> list[str]:
    """The log lines of `run_accounting` for the columns (none for data parallelism)."""
    if info["mode"] != "columns":
        return []
    mib = lambda b: f"{b / 2**20:,.1f} MiB"  # noqa: E731
    ex = info["exchanged_per_step"]
    return [f"columns exchange per step ({info['exchange_value_bytes']}-byte values): forward "
            f"{mib(ex['forward_bytes'])}, backward {mib(ex['backward_bytes'])} ("
            + ", ".join(f"{p['point']} {mib(p['forward_bytes'])}" for p in ex["points"]) + " each way)",
            "memory per device (fp32 estimate): " + ", ".join(
                f"column {d['device']} {mib(d['total_bytes'])} (parameters {mib(d['param_bytes'])}, activations "
                f"{mib(d['activation_bytes'])})" for d in info["per_device_memory_estimate"])]
