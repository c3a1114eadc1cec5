"""On CUDA: the two-column form (two streams on one GPU, or two GPUs) against the grouped network,
both in fp32, each compared with a float64 grouped reference. If the two forms' errors against
float64 are of the same size, a difference between them is rounding, not a race between streams."""

import torch
import torch.nn.functional as F

from alexnet.models import build_model
from alexnet.parallel.columns import TwoDeviceAlexNet, merge_state_dicts

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.manual_seed(3)
grouped = build_model("alexnet2012", impl="reference").eval().cuda()
ref = build_model("alexnet2012", impl="reference").eval().cuda().double()
ref.load_state_dict(grouped.state_dict())
devices = ("cuda:0", "cuda:1") if torch.cuda.device_count() >= 2 else ("cuda:0", "cuda:0")
two = TwoDeviceAlexNet.from_grouped(grouped, devices)
x, y = torch.randn(4, 3, 224, 224, device="cuda") * 50, torch.tensor([1, 2, 3, 4], device="cuda")
F.cross_entropy(grouped(x), y).backward()
F.cross_entropy(two(x), y).backward()
F.cross_entropy(ref(x.double()), y).backward()
torch.cuda.synchronize()
g_two = merge_state_dicts({k: p.grad for k, p in two.columns[0].named_parameters()},
                          {k: p.grad for k, p in two.columns[1].named_parameters()})
print(f"{'gradient':<14} {'grouped vs fp64':>16} {'columns vs fp64':>16} {'columns vs grouped':>19}")
worst = 0.0
for k, p in ref.named_parameters():
    r = p.grad
    gg = dict(grouped.named_parameters())[k].grad.double()
    gc = g_two[k].double()
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    e_g, e_c, e_gc = rel(gg, r), rel(gc, r), rel(gc, gg)
    worst = max(worst, e_c / max(e_g, 1e-12))
    print(f"{k:<14} {e_g:16.2e} {e_c:16.2e} {e_gc:19.2e}")
print(f"worst ratio of the columns' error to the grouped error (both vs fp64): {worst:.2f}")
