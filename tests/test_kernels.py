"""The Triton response-normalisation kernels and their operator against a float64 reference.

On CUDA they run compiled. Without CUDA this module runs in a child process under Triton's
interpreter (TRITON_INTERPRET=1 for that process only: `test_triton_interpreter.py` starts it), with
tiny sizes; in the main test process it is skipped. Inputs are drawn from a generator seeded by the
test's name, so a failure repeats.
"""

from __future__ import annotations

import os
import random
import zlib

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

CUDA = torch.cuda.is_available()
if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("runs under Triton's interpreter in a child process (test_triton_interpreter.py)",
                allow_module_level=True)

import alexnet.kernels.response_norm as rn  # noqa: E402
from alexnet.kernels import HAVE_TRITON, ops  # noqa: E402
from alexnet.layers import response_norm  # noqa: E402
from alexnet.models.fast import FusedResponseNorm  # noqa: E402

DEV = "cuda" if CUDA else "cpu"
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")

TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 1e-2}
LAYOUTS = ["nchw", "nhwc"]
DTYPES = [torch.float32, torch.bfloat16]
CPU_SHAPES = [(1, 7, 5, 3), (2, 13, 13, 11), (3, 96, 3, 2)]


@pytest.fixture(autouse=True)
def seeded(request):
    """Fresh but repeatable inputs: the generators seeded by the test's own name."""
    seed = zlib.crc32(request.node.nodeid.encode())
    random.seed(seed)
    torch.manual_seed(seed)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm()).item()


def params() -> tuple[int, float, float, float]:
    """Fresh constants for each check: the LRN term large enough to matter in the gradient."""
    return 5, random.uniform(0.05, 0.5), random.uniform(0.5, 1.0), random.uniform(1.0, 3.0)


def make(shape, layout: str, dtype: torch.dtype, spread: float = 3.0) -> torch.Tensor:
    x = (torch.randn(shape, dtype=torch.float64) * spread).to(dtype)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(DEV)


def poisoned(x: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x, float("nan"))


def reference(x: torch.Tensor, g: torch.Tensor, size, scale, beta, k, relu: bool, groups: int = 1):
    """Output and input gradient in float64 through torch's own ops and autograd."""
    xr = x.detach().double().cpu().requires_grad_()
    a = torch.relu(xr) if relu else xr
    if groups == 1:  # torch's own local_response_norm, independent of alexnet.layers' version
        y = torch.nn.functional.local_response_norm(a, size, alpha=scale * size, beta=beta, k=k)
    else:
        y = response_norm(a, size, scale, beta, k, groups)
    y.backward(g.detach().double().cpu())
    return y.detach(), xr.grad


def check(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert out.dtype == dtype, what
    assert torch.isfinite(out).all(), f"{what}: unwritten (NaN-poisoned) or non-finite elements"
    err = rel_err(out.cpu(), ref)
    assert err < TOL[dtype], f"{what}: relative error {err:.2e}"


@pytest.fixture
def small_blocks(monkeypatch):
    """Small launch blocks, so even tiny tensors take several programs (and several tiles each)."""
    if not CUDA:
        monkeypatch.setitem(rn.CONFIG, "fwd_block", 256)
        monkeypatch.setitem(rn.CONFIG, "bwd_block", 256)
        monkeypatch.setitem(rn.CONFIG, "tile_elems", 256)
        monkeypatch.setitem(rn.CONFIG, "tile_progs_per_sm", 1)


def test_exports_the_kernel():
    assert HAVE_TRITON
    assert CUDA or (rn.interpreting() and ops.INTERPRET), "CPU runs must go through Triton's interpreter"


@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("relu", [False, True], ids=["lrn", "relu_lrn"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward(layout, dtype, relu, shape, small_blocks):
    size, scale, beta, k = params()
    x = make(shape, layout, dtype)
    ref, _ = reference(x, torch.randn(shape), size, scale, beta, k, relu)
    out = poisoned(x)
    y = rn.lrn_forward(x, size, scale, beta, k, relu, out=out)
    assert y.data_ptr() == out.data_ptr()
    check(y, ref, dtype, "forward")


@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("relu", [False, True], ids=["lrn", "relu_lrn"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout,variant", [("nchw", "flat"), ("nhwc", "flat"), ("nhwc", "tile")])
def test_backward(layout, variant, dtype, relu, shape, small_blocks):
    size, scale, beta, k = params()
    x = make(shape, layout, dtype)
    g = make(shape, layout, dtype, spread=1.0)
    _, ref = reference(x, g, size, scale, beta, k, relu)
    out = poisoned(x)
    dx = rn.lrn_backward(x, g, size, scale, beta, k, relu, variant=variant, out=out)
    assert dx.data_ptr() == out.data_ptr()
    check(dx, ref, dtype, f"backward ({variant})")


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("layout,variant", [("nchw", "flat"), ("nhwc", "flat"), ("nhwc", "tile")])
def test_window_sizes(size, layout, variant, small_blocks):
    """Even windows reach one channel further back than forward, as torch pads them."""
    _, scale, beta, k = params()
    shape = (2, 9, 3, 4)
    x = make(shape, layout, torch.float32)
    g = make(shape, layout, torch.float32, spread=1.0)
    y_ref, dx_ref = reference(x, g, size, scale, beta, k, relu=True)
    check(rn.lrn_forward(x, size, scale, beta, k, True, out=poisoned(x)), y_ref, torch.float32, "fwd")
    dx = rn.lrn_backward(x, g, size, scale, beta, k, True, variant=variant, out=poisoned(x))
    check(dx, dx_ref, torch.float32, "bwd")


@pytest.mark.parametrize("groups,c", [(2, 14), (3, 15), (2, 96), (4, 8)])
@pytest.mark.parametrize("layout,variant", [("nchw", "flat"), ("nhwc", "flat"), ("nhwc", "tile")])
def test_groups(groups, c, layout, variant, small_blocks):
    """The two-column network's normalisation: no window crosses into the next group."""
    size, scale, beta, k = params()
    size = random.choice([3, 4, 5])
    shape = (2, c, 3, 5)
    x = make(shape, layout, torch.float32)
    g = make(shape, layout, torch.float32, spread=1.0)
    y_ref, dx_ref = reference(x, g, size, scale, beta, k, True, groups)
    y = rn.lrn_forward(x, size, scale, beta, k, True, groups, out=poisoned(x))
    check(y, y_ref, torch.float32, "fwd")
    dx = rn.lrn_backward(x, g, size, scale, beta, k, True, groups, variant=variant, out=poisoned(x))
    check(dx, dx_ref, torch.float32, f"bwd {variant}")


def test_groups_must_divide_channels():
    x = make((1, 7, 3, 3), "nchw", torch.float32)
    with pytest.raises(ValueError):
        ops.relu_response_norm(x, 5, 0.1, 0.75, 2.0, groups=2, relu=False)


def test_module_uses_the_kernel_with_groups():
    """The fast module hands CUDA inputs (here: interpreter CPU inputs) to the kernel."""
    x = make((2, 12, 4, 3), "nhwc", torch.bfloat16).requires_grad_()
    y = ops.relu_response_norm(x, 5, 0.2, 0.75, 2.0, groups=2, relu=False)
    y_ref, dx_ref = reference(x, torch.ones(x.shape), 5, 0.2, 0.75, 2.0, False, 2)
    check(y.detach(), y_ref, torch.bfloat16, "output")
    y.float().sum().backward()
    check(x.grad, dx_ref, torch.bfloat16, "gradient")
    norm = FusedResponseNorm(5, 0.2, 0.75, 2.0, groups=2)
    check(norm(x.detach()), y_ref, torch.bfloat16, "module")


def test_paper_constants_and_large_activations():
    """The paper's k=2, alpha=1e-4 with activations large enough that the sum matters."""
    shape = (2, 13, 5, 3)
    x = make(shape, "nhwc", torch.float32, spread=60.0)
    g = make(shape, "nhwc", torch.float32, spread=1.0)
    y_ref, dx_ref = reference(x, g, 5, 1e-4, 0.75, 2.0, relu=True)
    check(rn.lrn_forward(x, 5, 1e-4, 0.75, 2.0, True, out=poisoned(x)), y_ref, torch.float32, "fwd")
    for variant in ("flat", "tile"):
        dx = rn.lrn_backward(x, g, 5, 1e-4, 0.75, 2.0, True, variant=variant, out=poisoned(x))
        check(dx, dx_ref, torch.float32, f"bwd {variant}")


@pytest.mark.parametrize("relu", [False, True], ids=["lrn", "relu_lrn"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("strides", ["nchw", "nhwc", "permuted", "sliced"])
def test_autograd_function(strides, dtype, relu, small_blocks):
    """The operator through autograd, including inputs of neither dense layout."""
    size, scale, beta, k = params()
    if strides in ("nchw", "nhwc"):
        x = make((2, 7, 5, 3), strides, dtype)
    elif strides == "permuted":  # (N, C, H, W) view of an (N, W, C, H) tensor
        x = make((2, 3, 7, 5), "nchw", dtype).permute(0, 2, 3, 1)
    else:  # every other channel and column of a larger tensor
        x = make((2, 14, 5, 6), "nhwc", dtype)[:, ::2, :, ::2]
    assert x.shape == (2, 7, 5, 3)
    x = x.detach().requires_grad_()
    g = torch.randn(x.shape, dtype=torch.float64).to(dtype).to(DEV)
    y_ref, dx_ref = reference(x, g, size, scale, beta, k, relu)
    y = ops.relu_response_norm(x, size, scale, beta, k, relu=relu)
    y.backward(g)
    check(y.detach(), y_ref, dtype, "output")
    assert x.grad.shape == x.shape
    check(x.grad, dx_ref, dtype, "input gradient")
    if strides == "nhwc":
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_falls_back_to_reference_for_float64():
    x = torch.randn(1, 7, 3, 2, dtype=torch.float64, requires_grad=True)
    y = ops.relu_response_norm(x, 5, 0.2, 0.75, 2.0, relu=True)
    torch.testing.assert_close(y, response_norm(torch.relu(x), 5, 0.2, 0.75, 2.0))
    y.sum().backward()
    assert x.grad is not None


# ----------------------------------------------------------------------------------------------
# GPU: the layer sizes of the paper's conv1 at a small batch; correctness only.


@gpu
@needs_cuda
@pytest.mark.parametrize("relu", [False, True], ids=["lrn", "relu_lrn"])
@pytest.mark.parametrize("dtype", DTYPES + [torch.float16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gpu_conv1_size(layout, dtype, relu):
    size, scale, beta, k = params()
    groups = 2 if relu else 1  # the two-column network normalises each column's 48 maps
    shape = (8, 96, 55, 55)
    x = make(shape, layout, dtype)
    g = make(shape, layout, dtype, spread=1.0)
    y_ref, dx_ref = reference(x, g, size, scale, beta, k, relu, groups)
    y = rn.lrn_forward(x, size, scale, beta, k, relu, groups, out=poisoned(x))
    check(y, y_ref, dtype, "forward")
    variants = ["flat", "tile"] if layout == "nhwc" else ["flat"]
    for variant in variants:
        dx = rn.lrn_backward(x, g, size, scale, beta, k, relu, groups, variant=variant,
                             out=poisoned(x))
        check(dx, dx_ref, dtype, f"backward ({variant})")


@gpu
@needs_cuda
@pytest.mark.parametrize("shape", [(3, 256, 27, 27), (2, 13, 13, 13), (1, 384, 13, 13)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gpu_other_sizes(shape):
    size, scale, beta, k = params()
    for layout in LAYOUTS:
        x = make(shape, layout, torch.bfloat16)
        g = make(shape, layout, torch.bfloat16, spread=1.0)
        y_ref, dx_ref = reference(x, g, size, scale, beta, k, True)
        check(rn.lrn_forward(x, size, scale, beta, k, True, out=poisoned(x)), y_ref, x.dtype, "fwd")
        for variant in (["flat", "tile"] if layout == "nhwc" else ["flat"]):
            dx = rn.lrn_backward(x, g, size, scale, beta, k, True, variant=variant, out=poisoned(x))
            check(dx, dx_ref, x.dtype, f"bwd {variant}")


@gpu
@needs_cuda
def test_gpu_autocast_module():
    """Under bf16 autocast the conv output is bf16; the layer keeps it bf16 and matches."""
    conv = torch.nn.Conv2d(3, 96, 11, stride=4).cuda().to(memory_format=torch.channels_last)
    norm = FusedResponseNorm(5, 1e-4, 0.75, 2.0, groups=2)
    img = torch.randn(4, 3, 227, 227, device="cuda").to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        a = torch.relu(conv(img))
        y = norm(a)
        z = ops.relu_response_norm(conv(img), 5, 1e-4, 0.75, 2.0, relu=True)
    assert y.dtype == torch.bfloat16 and z.dtype == torch.bfloat16
    ref = response_norm(a.double(), 5, 1e-4, 0.75, 2.0, 2)
    ref1 = response_norm(a.double(), 5, 1e-4, 0.75, 2.0)
    assert rel_err(y, ref) < 1e-2 and rel_err(z, ref1) < 1e-2
    (y.float().square().sum() + z.float().sum()).backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


# ----------------------------------------------------------------------------------------------
# The max-pool kernels (alexnet.kernels.max_pool)


def test_max_pool_kernels():
    """The Triton max-pool kernels themselves (compiled on CUDA, the interpreter on the CPU)."""
    from alexnet.kernels import max_pool as mp

    check_pool_kernels(mp, DEV, bf16_rtol=2 ** -8 if CUDA else 2 ** -7)   # the interpreter truncates bf16


def test_max_pool_operator_runs_the_kernel():
    x = make((2, 5, 11, 11), "nhwc", torch.float32).requires_grad_()
    y = ops.max_pool(x, 3, 2)
    ref = torch.nn.functional.max_pool2d(x.detach(), 3, 2)
    assert torch.equal(y.detach(), ref)
    g = torch.randn_like(ref)
    x64 = x.detach().double().requires_grad_()
    want = torch.autograd.grad(torch.nn.functional.max_pool2d(x64, 3, 2), x64, g.double())[0]
    assert torch.allclose(torch.autograd.grad(y, x, g)[0].double(), want)


def check_pool_kernels(mp, device, bf16_rtol):
    """The max-pool kernels against F.max_pool2d and a float64 gradient (test_fast_layers.py uses it too)."""
    for (n, c, h, w, k, s) in [(2, 5, 11, 11, 3, 2), (1, 3, 9, 8, 3, 2), (2, 4, 12, 12, 2, 2), (1, 2, 7, 7, 3, 3)]:
        for dt in (torch.float32, torch.bfloat16):
            x = torch.randn(n, c, h, w, device=device).to(dt).contiguous(memory_format=torch.channels_last)
            x[0, 0, :3, :3] = 0
            y, idx = mp.pool_forward(x, k, s)
            ry = F.max_pool2d(x, k, s)
            assert torch.equal(y, ry) and y.is_contiguous(memory_format=torch.channels_last)
            g = torch.randn_like(ry)
            dx = mp.pool_backward(g, idx, h, w, k, s)
            x64 = x.double().requires_grad_()
            ref = torch.autograd.grad(F.max_pool2d(x64, k, s), x64, g.double())[0]
            err = ((dx.double() - ref).abs() / ref.abs().clamp_min(1e-30)).max().item()
            assert err <= (1e-6 if dt == torch.float32 else bf16_rtol), (err, n, c, h, w, k, s, dt)


# ----------------------------------------------------------------------------------------------
# The paper's update in one pass (alexnet.kernels.paper_update, alexnet.optim.paper_update)


def same_update(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """On CUDA the kernel gives the foreach passes' bits (compared as integers: a zero's sign counts too);
    under the interpreter (and torch's CPU foreach) a rounding may differ: within an ulp of the operands
    (w + v may cancel, so not relative to the result)."""
    if CUDA:
        bits = torch.int64 if got.dtype == torch.float64 else torch.int32
        same_bits = torch.equal(got.view(bits), want.view(bits))
        assert same_bits, f"{what}: max difference {(got - want).abs().max().item():.3g}"
    else:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("shape,layout", [((7,), "nchw"), ((10_007,), "nchw"), ((96, 48, 3, 3), "nhwc"),
                                          ((6, 5, 3, 3), "nchw"), ((40, 37), "nchw")])
@pytest.mark.parametrize("weight_decay", [5e-4, 0.05, 0.0])
def test_paper_update_kernel_gives_the_foreach_passes_result(shape, layout, weight_decay, monkeypatch):
    from alexnet.kernels import paper_update as pu
    from alexnet.optim import foreach_update

    monkeypatch.setitem(pu.CONFIG, "block", 1024)   # several programs, the last one partly masked
    w, g, v = (make(shape, layout, torch.float32, spread) if len(shape) == 4 else
               (torch.randn(shape, dtype=torch.float64) * spread).float().to(DEV) for spread in (0.05, 0.3, 0.01))
    rw, rg, rv = w.clone(), g.clone(), v.clone()
    for eps in (0.1, 0.01):                          # two steps, a drop between them
        pu.update_(w, g, v, eps, 0.9, weight_decay)
        foreach_update([rw], [rg], [rv], eps, 0.9, weight_decay)
    same_update(v, rv, "velocity")
    same_update(w, rw, "weights")
    assert torch.equal(g, rg)                        # the gradient is only read


def test_paper_update_kernel_takes_dense_float32_triples_only():
    from alexnet.kernels.paper_update import fusable

    w = torch.zeros(4, 3, 5, 5, device=DEV)
    nhwc = w.contiguous(memory_format=torch.channels_last)
    assert fusable(w, w.clone(), w.clone()) and fusable(nhwc, nhwc.clone(), nhwc.clone())
    assert not fusable(w, nhwc, w.clone())                       # the strides differ
    assert not fusable(w.double(), w.double(), w.double())
    assert not fusable(w, w.bfloat16(), w.clone())
    t = torch.zeros(6, 8, device=DEV).t()                        # dense but neither layout
    assert not fusable(t, t.clone(), t.clone())
    flat = torch.zeros(100, device=DEV)
    assert fusable(flat[10:60], flat[:50].clone(), flat[40:90])  # slices of flat weights (reduce="shard")
    assert not fusable(flat[::2], flat[::2].clone(), flat[::2].clone())


def test_paper_sgd_through_the_kernel_equals_the_foreach_passes(monkeypatch):
    """A model's parameters (channels_last convolutions, biases, a float64 one and a strided one that the
    kernel leaves to the foreach passes), two parameter groups, steps across a drop."""
    import alexnet.optim as optim
    from alexnet.kernels import paper_update as pu
    from alexnet.models import build_model

    calls = []
    kernel = pu.update_
    monkeypatch.setattr(pu, "update_", lambda w, *a: calls.append(w.shape) or kernel(w, *a))

    def trained(fused: bool):
        monkeypatch.setattr(optim, "FUSED_ON_CUDA", fused)
        torch.manual_seed(0)
        model = build_model("cifar-fig1").to(DEV).to(memory_format=torch.channels_last)
        extra = [torch.nn.Parameter(torch.randn(5, dtype=torch.float64, device=DEV)),
                 torch.nn.Parameter(torch.randn(8, 6, device=DEV).t())]
        groups = optim.param_groups(model, "cuda-convnet", 0.01)
        groups[0]["params"] += extra
        opt = optim.PaperSGD(groups, lr=0.01)
        params = [p for g in groups for p in g["params"]]
        for step in range(3):
            gen = torch.Generator().manual_seed(step)
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(DEV).as_strided(p.shape, p.stride())
            opt.step()
            if step == 1:
                optim.drop_learning_rate(opt, 10)
        return params, opt

    fused, opt = trained(True)
    assert len(calls) == 3 * (len(fused) - 2)        # every parameter but the last two, at each step
    plain, ref = trained(False)
    assert len(calls) == 3 * (len(fused) - 2)
    for a, b in zip(fused, plain):
        same_update(a.detach(), b.detach(), f"parameter {tuple(a.shape)}")
        same_update(opt.state[a]["velocity"], ref.state[b]["velocity"], f"velocity {tuple(a.shape)}")
