"""Do the two columns, one process per GPU, replayed as one CUDA graph per process, train like the
grouped network? torchrun --standalone --nproc-per-node 2 scripts/check_graphed_columns.py

Both ranks train the columns on the same four fixed uint8 batches (with the paper's augmentation and
dropout) for STEPS steps, each step captured once and replayed; rank 0 then trains the grouped network
eagerly from the same start on the same batches. Prints the loss every 25 steps (mean of 25) of each."""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from alexnet.data.augment import Augment  # noqa: E402
from alexnet.models import build_model  # noqa: E402
from alexnet.optim import PaperSGD, param_groups  # noqa: E402
from alexnet.parallel.distributed import DistributedContext  # noqa: E402
from alexnet.parallel.placement import place  # noqa: E402
from alexnet.step import make_step  # noqa: E402
from alexnet.tools.bench_steps import stats_for  # noqa: E402

STEPS = int(os.environ.get("STEPS", "150"))


def batches(device):
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 256, (128, 256, 256, 3), dtype=torch.uint8, generator=g).to(device).permute(0, 3, 1, 2),
             torch.randint(0, 100, (128,), generator=g).to(device)) for _ in range(4)]


def losses(placement, device, graphs):
    opt = PaperSGD(param_groups(placement.model, "paper", 0.01), lr=0.01)
    gen = torch.Generator(device=device).manual_seed(1)
    step = make_step(placement, opt, Augment(crop=224), stats_for(device), gen, torch.bfloat16,
                     torch.channels_last, compile=False, graphs=graphs, log=print)
    data, out = batches(device), []
    for i in range(STEPS):
        out.append(step(*data[i % 4]).clone())
    torch.cuda.synchronize()
    return [float(v) for v in torch.stack(out).tolist()], getattr(step, "graph", None) is not None


dist = DistributedContext.from_env("cuda")
torch.manual_seed(7)
start = build_model("alexnet2012", num_classes=100).state_dict()
model = build_model("alexnet2012", num_classes=100)
model.load_state_dict(start)
cols = place(model, "columns", dist, [dist.device], "paper", torch.channels_last)
col_losses, captured = losses(cols, dist.device, graphs=True)
dist.barrier()
if dist.is_main:
    grouped = build_model("alexnet2012", num_classes=100)
    grouped.load_state_dict(start)
    single = place(grouped, "data", DistributedContext(device=dist.device), [dist.device], "paper", torch.channels_last)
    ref, _ = losses(single, dist.device, graphs=False)
    smooth = lambda v: [sum(v[i:i + 25]) / 25 for i in range(0, STEPS, 25)]  # noqa: E731
    print(f"two processes, graphed (captured: {captured}): " + " ".join(f"{x:.3f}" for x in smooth(col_losses)))
    print("grouped, one GPU, eager:                 " + " ".join(f"{x:.3f}" for x in smooth(ref)))
dist.cleanup()
