"""The 3 GB question: does one column of the 2012 network fit where the whole network does not?

The paper trained on two GTX 580s with 3 GB each and says the network was "too big to fit on one
GPU". `measure()` answers it on a CUDA device today, for one training step at batch 128, fp32 (the
GTX 580 had no bf16), with the paper's SGD (`PaperSGD`: one velocity per parameter):

* `whole`: the grouped `AlexNet2012` on one device, on its plain layers (`impl="reference"`,
  as a column computes): the peak of `torch.cuda.max_memory_allocated` over a few steps (parameters, gradients, velocities, the input batch, the activations saved for
  backward, and cuDNN/cuBLAS workspaces, which PyTorch takes from its allocator).
* `column_0`, `column_1`: one column (`AlexNet2012(cfg, column=i)`) on its own, as one GPU of the pair saw it: its share of the
  weights, the whole input batch, and the tensors the other column sends (its pool2 maps into
  conv3, pool5 into fc6, fc6 into fc7, and into fc8 on column 0) as inputs of the same shapes; the
  gradients of what it sent come back as tensors of the same shapes. Column 0 holds fc8.
* `two_columns_one_gpu`: a real step of `TwoDeviceAlexNet` with both columns on this one GPU (two
  CUDA streams): both columns' memory in one allocator, so not separable per column.
* `context`: the CUDA context, which the allocator does not see: device memory in use after CUDA
  starts minus before (NVML when present), and device memory outside the allocator after the
  steps (the context grows as kernels are loaded lazily).
* `cap`: with `--cap-gb`, a few steps of the whole network and of each column under
  `torch.cuda.set_per_process_memory_fraction(cap / total)`: which run and which run out of
  memory. The cap bounds the allocator only; `fits_with_context` adds the context, as a 3 GB card
  also had to hold it.

GB here means GiB (2**30 bytes): the GTX 580's "3 GB" is 3,072 MiB.

On the CPU `measure()` returns `column_accounting`'s estimate (`alexnet.parallel.accounting`) and
says that the measurement needs CUDA. `alexnet memory [--batch 128] [--cap-gb 3] [--json]`, or
`python -m alexnet.tools.memory ...`, prints it.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys

import torch
import torch.nn.functional as F

from alexnet.models.alexnet2012 import AlexNet2012, AlexNet2012Config
from alexnet.parallel.columns import TwoDeviceAlexNet

GiB = 2 ** 30
MiB = 2 ** 20


# ---------------------------------------------------------------------------------------------
# Steps to measure


def _config(num_classes: int) -> AlexNet2012Config:
    """The paper's network on its plain layers (`impl="reference"`), so the whole network and a
    column are measured alike."""
    return AlexNet2012Config(num_classes=num_classes, impl="reference")


def _batch(batch: int, size: int, classes: int, dev):
    x = torch.randn(batch, 3, size, size, device=dev).mul_(50.0)
    y = torch.randint(0, classes, (batch,), device=dev)
    return x, y


def _sgd(module):
    from alexnet.optim import PaperSGD, param_groups

    return PaperSGD(param_groups(module, "paper", 0.01))


def _whole_steps(dev, batch: int, size: int, classes: int, steps: int) -> None:
    _model_steps(AlexNet2012(_config(classes)).to(dev).train(), dev, batch, size, classes, steps)


def _two_columns_steps(dev, batch: int, size: int, classes: int, steps: int) -> None:
    _model_steps(TwoDeviceAlexNet(_config(classes), (dev, dev)).train(), dev, batch, size, classes, steps)


def _model_steps(model, dev, batch: int, size: int, classes: int, steps: int) -> None:
    opt = _sgd(model)
    x, y = _batch(batch, size, classes, dev)
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize(dev)


def column_step(column, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Forward and backward of one column (`AlexNet2012(cfg, column=i)`) as its own device sees it: the other column's
    tensors arrive as inputs of the right shapes (random values), and the gradient of every tensor
    this column sends comes back as a new tensor of the same shape. Returns the loss (column 0) or
    the fc7 output sent to column 0 (column 1), detached."""
    first = column.column == 0

    def received(like: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(like).requires_grad_()

    def sent(t: torch.Tensor) -> torch.Tensor:
        t.register_hook(lambda g: g + torch.randn_like(g))      # the other column's gradient of it
        return t

    def both(mine: torch.Tensor) -> torch.Tensor:
        other = received(mine)
        return torch.cat([mine, other] if first else [other, mine], dim=1)

    a = sent(column.stem(x))                                     # -> conv3
    b = sent(column.trunk(both(a)))                              # -> fc6
    h = sent(column.fc6_block(both(b)))                          # -> fc7
    d = column.fc7_block(both(h))
    if first:
        loss = F.cross_entropy(column.head(both(d)), y)          # column 1's fc7 arrives here
        loss.backward()
        return loss.detach()
    d.backward(torch.randn_like(d))                              # fc8's gradient from column 0
    return d.detach()


def _column_steps(dev, batch: int, size: int, classes: int, steps: int, index: int) -> None:
    column = AlexNet2012(_config(classes), column=index).to(dev).train()
    opt = _sgd(column)
    x, y = _batch(batch, size, classes, dev)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        column_step(column, x, y)
        opt.step()
    torch.cuda.synchronize(dev)


def _fresh(dev) -> None:
    gc.collect()
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(dev)


def _peak(run, dev) -> dict:
    """Run `run()` from an empty allocator; its peak allocated and reserved bytes, or the OOM."""
    _fresh(dev)
    base, base_reserved = torch.cuda.memory_allocated(dev), torch.cuda.memory_reserved(dev)   # the caller's
    error = None
    try:
        run()
    except torch.cuda.OutOfMemoryError as e:      # under a cap: this one does not fit
        error = str(e).splitlines()[0][:200]
    result = {"peak_allocated_bytes": torch.cuda.max_memory_allocated(dev) - base,
              "peak_reserved_bytes": torch.cuda.max_memory_reserved(dev) - base_reserved, "fits": error is None}
    if error:
        result["error"] = error
    _fresh(dev)
    return result


def _nvml_used(index: int) -> int | None:
    """Device memory in use (all processes) from NVML, which does not start a CUDA context."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).used)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------
# The report


def estimate(batch: int = 128, input_size: int = 224, num_classes: int = 1000) -> dict:
    """`column_accounting`'s fp32 estimate of the bytes each arrangement holds per device."""
    from alexnet.parallel.accounting import column_accounting

    acc = column_accounting(_config(num_classes), batch, input_size, 4)
    return {"whole": acc["one_device"]["per_device"][0], "column_0": acc["columns"]["per_device"][0],
            "column_1": acc["columns"]["per_device"][1],
            "exchange": {k: acc["columns"]["comm"][k] for k in ("forward_bytes", "backward_bytes")}}


def measure(batch: int = 128, cap_gb: float | None = None, steps: int = 3, device=None,
            input_size: int = 224, num_classes: int = 1000) -> dict:
    """Peak memory of one training step: whole network vs one column (module doc). On the CPU:
    the accounting estimate and `measured: False`."""
    report = {"batch": batch, "input_size": input_size, "num_classes": num_classes, "dtype": "float32",
              "optimizer": "PaperSGD (one velocity per parameter)", "steps": steps,
              "estimate": estimate(batch, input_size, num_classes)}
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type != "cuda":
        report.update(measured=False, device=str(dev),
                      note="the measurement needs CUDA (torch.cuda.max_memory_allocated); "
                           "these are the accounting estimates")
        return report
    index = dev.index if dev.index is not None else 0
    dev = torch.device("cuda", index)

    started = torch.cuda.is_initialized()          # then NVML's before/after says nothing
    before = None if started else _nvml_used(index)
    torch.cuda.init()
    torch.cuda.set_device(dev)
    torch.empty(1, device=dev)                         # the context exists now
    free, total = torch.cuda.mem_get_info(dev)
    after = _nvml_used(index)
    if before is not None and after is not None:
        ctx_init, how = after - before, "NVML: device memory used after CUDA init minus before"
    else:
        ctx_init, how = (total - free) - torch.cuda.memory_reserved(dev), \
            "device memory in use minus the allocator's reserve (assumes no other process on the GPU)" + (
                "; CUDA had been started in this process before" if started else "")
    report.update(measured=True, device=f"cuda:{index}", gpu=torch.cuda.get_device_name(dev),
                  total_bytes=total, torch=str(torch.__version__))

    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False   # plain fp32
    try:
        args = (dev, batch, input_size, num_classes, steps)
        runs = {"whole": lambda: _whole_steps(*args),
                "column_0": lambda: _column_steps(*args, index=0),
                "column_1": lambda: _column_steps(*args, index=1),
                "two_columns_one_gpu": lambda: _two_columns_steps(*args)}
        for name, run in runs.items():
            report[name] = _peak(run, dev)
        free, total = torch.cuda.mem_get_info(dev)
        outside = (total - free) - torch.cuda.memory_reserved(dev)
        report["context"] = {"at_init_bytes": int(ctx_init), "outside_allocator_after_steps_bytes": int(outside),
                             "method": how}

        if cap_gb is not None:
            _fresh(dev)
            held = torch.cuda.memory_reserved(dev)   # tensors the caller keeps: not the measured run's
            cap = {"cap_gb": cap_gb, "cap_bytes": int(cap_gb * GiB),
                   "fraction": min(1.0, (cap_gb * GiB + held) / total), "held_by_caller_bytes": held,
                   "note": "the cap bounds the caching allocator; fits_with_context adds the CUDA context"}
            torch.cuda.set_per_process_memory_fraction(cap["fraction"], dev)
            try:
                for name in ("whole", "column_0", "column_1"):
                    r = _peak(runs[name], dev)
                    r["fits_with_context"] = r["fits"] and r["peak_reserved_bytes"] + outside <= cap["cap_bytes"]
                    cap[name] = r
            finally:
                torch.cuda.set_per_process_memory_fraction(1.0, dev)
            report["cap"] = cap
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return report


def format_report(r: dict) -> str:
    mib = lambda n: f"{n / MiB:,.0f} MiB"  # noqa: E731
    est = r["estimate"]
    head = (f"alexnet2012, one training step: batch {r['batch']}, {r['input_size']}x{r['input_size']}, "
            f"{r['num_classes']} classes, fp32, {r['optimizer']}")
    lines = [head]
    rows = [("whole network, one device", "whole"), ("column 0 (holds fc8)", "column_0"), ("column 1", "column_1")]
    if not r.get("measured"):
        lines.append(f"{r['note']} (device: {r['device']}).")
        lines.append(f"{'':34}{'estimate':>14}")
        for label, key in rows:
            lines.append(f"{label:34}{mib(est[key]['total_bytes']):>14}")
        lines.append(f"columns exchange per step (estimate): forward {mib(est['exchange']['forward_bytes'])}, "
                     f"backward {mib(est['exchange']['backward_bytes'])}")
        return "\n".join(lines)
    lines.append(f"on {r['gpu']} ({r['device']}, {mib(r['total_bytes'])}), torch {r['torch']}")
    lines.append(f"{'':34}{'peak allocated':>16}{'peak reserved':>16}{'estimate':>12}")
    for label, key in rows + [("two columns on one GPU (streams)", "two_columns_one_gpu")]:
        m = r[key]
        e = mib(est[key]["total_bytes"]) if key in est else "-"
        lines.append(f"{label:34}{mib(m['peak_allocated_bytes']):>16}{mib(m['peak_reserved_bytes']):>16}{e:>12}")
    c = r["context"]
    lines.append(f"CUDA context (not in the allocator): {mib(c['at_init_bytes'])} at init, "
                 f"{mib(c['outside_allocator_after_steps_bytes'])} outside the allocator after the steps")
    if "cap" in r:
        cap = r["cap"]
        lines.append(f"under a cap of {cap['cap_gb']:g} GiB (fraction {cap['fraction']:.4f} of the device):")
        for label, key in rows:
            m = cap[key]
            verdict = "fits" if m["fits"] else "out of memory"
            extra = "" if not m["fits"] else ("; with the context too" if m["fits_with_context"]
                                              else "; not with the context added")
            lines.append(f"  {label:32} {verdict}{extra} (peak reserved {mib(m['peak_reserved_bytes'])})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--batch", type=int, default=128, help="images per step (paper: 128)")
    p.add_argument("--cap-gb", type=float, default=None,
                   help="also run a few steps with the allocator capped at this many GiB (GTX 580: 3)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu (estimate only)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_memory)
    return p


def add_parser(sub) -> argparse.ArgumentParser:
    """Register `alexnet memory` on the CLI's subparsers."""
    return add_arguments(sub.add_parser("memory", help="the 3 GB question: one column's memory vs the whole network's"))


def cmd_memory(args: argparse.Namespace) -> int:
    r = measure(args.batch, args.cap_gb, args.steps, args.device)
    print(json.dumps(r) if args.json else format_report(r))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = add_arguments(argparse.ArgumentParser(prog="alexnet memory", description=__doc__.split("\n\n")[0])
                         ).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
