"""The fast formulations (alexnet.fastconv) compute exactly the plain layers' functions.

On the CPU in float64 (where the only difference is the order of the sums); the `gpu` tests repeat
the comparison on CUDA, through the fused Triton kernel, in float32 and under bf16 autocast, and
through torch.compile.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from alexnet import fastconv
from alexnet.layers import response_norm
from alexnet.models import build_model

CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("size,kernel,stride", [(224, 11, 4), (227, 11, 4), (35, 11, 4), (20, 5, 2), (17, 3, 3)])
def test_space_to_depth_conv_is_the_overhang_conv(size, kernel, stride):
    g = torch.Generator().manual_seed(size)
    x = torch.randn(2, 3, size, size, generator=g, dtype=torch.float64) * 50
    w = torch.randn(6, 3, kernel, kernel, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    pad = (-(-(size - kernel) // stride)) * stride + kernel - size       # cuda-convnet's overhang
    ref = F.conv2d(F.pad(x, (0, pad, 0, pad)), w, b, stride=stride)
    out = fastconv.space_to_depth_conv(x, w, b, stride)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-9)
    gy = torch.randn_like(ref)
    gw_ref, gb_ref = torch.autograd.grad(ref, (w, b), gy)
    gw, gb = torch.autograd.grad(out, (w, b), gy)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-12, atol=1e-8)
    torch.testing.assert_close(gb, gb_ref, rtol=1e-12, atol=1e-8)


def test_space_to_depth_conv_channels_last_input():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 224, 224, generator=g, dtype=torch.float64) * 50
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 3, 11, 11, generator=g, dtype=torch.float64)
    out = fastconv.space_to_depth_conv(x, w, None, 4)
    torch.testing.assert_close(out, F.conv2d(F.pad(x, (0, 3, 0, 3)), w, stride=4), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("mode", fastconv.GROUPED_MODES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_grouped_modes_equal_groups_2(mode, channels_last):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 8, 9, 9, generator=g, dtype=torch.float64, requires_grad=True)
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, w, b, padding=1, groups=2)
    out = fastconv.grouped_conv(x, w, b, 1, 2, mode)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-10)
    gy = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(out, (x, w, b), gy), torch.autograd.grad(ref, (x, w, b), gy)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-10)


def test_blockdiag_weight_is_zero_off_the_diagonal():
    w = torch.arange(1, 6 * 4 * 1 * 1 + 1, dtype=torch.float64).view(6, 4, 1, 1)
    d = fastconv.blockdiag_weight(w, 2)
    assert d.shape == (6, 8, 1, 1)
    assert torch.equal(d[:3, :4], w[:3]) and torch.equal(d[3:, 4:], w[3:])
    assert not d[:3, 4:].any() and not d[3:, :4].any()


@pytest.mark.parametrize("relu,groups", [(True, 2), (False, 1), (True, 1)])
def test_relu_lrn_custom_op_forward_and_backward_on_cpu(relu, groups):
    """The operator's CPU fallback and its registered backward equal the reference's autograd."""
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(2, 8, 5, 5, generator=g, dtype=torch.float64) * 30).requires_grad_()
    y = fastconv._relu_lrn_op(x, 5, 1e-4, 0.75, 2.0, relu, groups)
    ref = response_norm(torch.relu(x) if relu else x, 5, 1e-4, 0.75, 2.0, groups)
    torch.testing.assert_close(y, ref)
    gy = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, x, gy)[0], torch.autograd.grad(ref, x, gy)[0])


def test_relu_lrn_custom_op_passes_opcheck():
    """Schema, fake tensor (what torch.compile traces with) and autograd registration."""
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(fastconv._relu_lrn_op, (x, 5, 1e-4, 0.75, 2.0, True, 2))


@pytest.mark.parametrize("size,kernel,stride", [(11, 3, 2), (13, 3, 2), (12, 2, 2), (9, 3, 3)])
def test_max_pool_op_on_cpu_equals_max_pool2d(size, kernel, stride):
    """The operator's CPU fallback (argmax as a window position) and its registered backward."""
    g = torch.Generator().manual_seed(size)
    x = torch.randn(2, 3, size, size, generator=g, dtype=torch.float64)
    x[0, 0, :4, :4] = 0.0                                              # ties: the first maximum wins
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    y, idx = fastconv._max_pool_op(x, kernel, stride)
    ref = F.max_pool2d(x, kernel, stride)
    assert torch.equal(y, ref) and idx.dtype == torch.int8 and int(idx.max()) < kernel * kernel
    gy = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(y, x, gy)[0], torch.autograd.grad(ref, x, gy)[0])


def test_max_pool_op_passes_opcheck():
    x = torch.randn(2, 3, 11, 11, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(fastconv._max_pool_op, (x.requires_grad_(), 3, 2))


def test_max_pool_kernels_in_the_triton_interpreter(monkeypatch):
    """The Triton kernels themselves, on the CPU through Triton's interpreter (where Triton is)."""
    pytest.importorskip("triton")
    if CUDA:
        pytest.skip("the gpu test covers the compiled kernels")
    import importlib
    import sys

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    sys.modules.pop("alexnet.kernels.max_pool", None)
    mp = importlib.import_module("alexnet.kernels.max_pool")
    try:
        _check_pool_kernels(mp, "cpu", bf16_rtol=2 ** -7)   # the interpreter truncates to bf16
    finally:
        sys.modules.pop("alexnet.kernels.max_pool", None)


def _check_pool_kernels(mp, device, bf16_rtol):
    torch.manual_seed(0)
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


def test_parse_options():
    assert fastconv.parse_options(None) == fastconv.DEFAULTS
    o = fastconv.parse_options("conv1=direct, conv4=blockdiag,relu_lrn=0")
    assert o["conv1"] == "direct" and o["conv4"] == "blockdiag" and o["relu_lrn"] is False
    with pytest.raises(ValueError, match="unknown fast option"):
        fastconv.parse_options("conv3=blockdiag")
    with pytest.raises(ValueError, match="conv2 mode"):
        fastconv.parse_options("conv2=winograd")


def _options(full: bool = False):
    """Combinations of fast options; by default three that cover every mode of every option."""
    combos = (itertools.product(fastconv.CONV1_MODES, fastconv.GROUPED_MODES, (True, False)) if full else
              [("s2d", "grouped", True), ("s2d", "blockdiag", False), ("direct", "split", True)])
    for k, (conv1, gmode, fuse) in enumerate(combos):
        yield {"conv1": conv1, "conv2": gmode, "conv4": gmode, "conv5": gmode, "relu_lrn": fuse,
               "pool": fastconv.POOL_MODES[k % 2]}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["paper", "cuda-convnet"])
def test_fast_network_equals_reference_on_cpu(recipe):
    """The whole network, fast options covering every mode, forward and all parameter gradients."""
    torch.manual_seed(5)
    ref = build_model("alexnet2012", recipe=recipe, impl="reference", num_classes=10, dropout=0.0).double()
    fast = build_model("alexnet2012", recipe=recipe, impl="fast", num_classes=10, dropout=0.0).double()
    fast.load_state_dict(ref.state_dict())
    assert list(fast.state_dict()) == list(ref.state_dict())          # same names: checkpoints load
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64) * 50
    y_ref = ref(x)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), list(ref.parameters()))
    for opts in _options() if recipe == "paper" else [fastconv.DEFAULTS]:
        fast.fast_options = opts
        y = fast(x)
        assert rel(y, y_ref) < 1e-10, opts
        grads = torch.autograd.grad(y.square().sum(), list(fast.parameters()))
        for (name, _), a, r in zip(fast.named_parameters(), grads, grads_ref):
            assert rel(a, r) < 1e-9, (opts, name)


def test_reference_impl_is_the_plain_path_and_auto_is_plain_on_cpu():
    m = build_model("alexnet2012")
    assert m.config.impl == "auto" and m._fast(torch.zeros(1)) is None
    assert build_model("alexnet2012", impl="reference")._fast(torch.zeros(1)) is None
    assert build_model("alexnet2012", impl="fast")._fast(torch.zeros(1)) == fastconv.DEFAULTS
    from alexnet.errors import ConfigError

    with pytest.raises(ConfigError, match="impl"):
        build_model("alexnet2012", impl="turbo")


# ------------------------------------------------------------------------------------------ GPU


@gpu
@needs_cuda
def test_max_pool_kernels_on_cuda():
    from alexnet.kernels import max_pool as mp

    _check_pool_kernels(mp, "cuda", bf16_rtol=2 ** -8)
    x = (torch.randn(256, 96, 55, 55, device="cuda") * 3).to(torch.bfloat16).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    y = fastconv.max_pool(x, 3, 2)
    ref = F.max_pool2d(x, 3, 2)
    assert torch.equal(y, ref)
    gy = torch.randn_like(y)
    a, r = torch.autograd.grad(y, x, gy)[0], torch.autograd.grad(ref, x, gy)[0]
    assert rel(a, r) < 1e-2


@gpu
@needs_cuda
@pytest.mark.parametrize("relu,groups", [(True, 2), (False, 2)])
def test_relu_lrn_op_on_cuda_equals_reference(relu, groups):
    x = (torch.randn(4, 96, 13, 13, device="cuda") * 30).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y = fastconv.relu_response_norm(x, 5, 1e-4, 0.75, 2.0, groups, relu=relu)
    assert y.is_contiguous(memory_format=torch.channels_last)
    xr = x.detach().double().requires_grad_()
    ref = response_norm(torch.relu(xr) if relu else xr, 5, 1e-4, 0.75, 2.0, groups)
    assert rel(y, ref) < 1e-5
    gy = torch.randn_like(y)
    assert rel(torch.autograd.grad(y, x, gy)[0], torch.autograd.grad(ref, xr, gy.double())[0]) < 1e-5


def _gpu_pair(**kw):
    torch.manual_seed(0)
    ref = build_model("alexnet2012", impl="reference", dropout=0.0, **kw).cuda().to(memory_format=torch.channels_last)
    fast = build_model("alexnet2012", dropout=0.0, **kw).cuda().to(memory_format=torch.channels_last)
    fast.load_state_dict(ref.state_dict())
    x = (torch.randn(8, 3, 224, 224, device="cuda") * 50).contiguous(memory_format=torch.channels_last)
    return ref, fast, x


@gpu
@needs_cuda
@pytest.mark.parametrize("opts", list(_options(full=True)), ids=str)
def test_fast_network_equals_reference_on_cuda_fp32(opts):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    ref, fast, x = _gpu_pair()
    fast.fast_options = opts
    y_ref, y = ref(x), fast(x)
    assert rel(y, y_ref) < 1e-4, opts
    ga = torch.autograd.grad(y.square().sum(), list(fast.parameters()))
    gr = torch.autograd.grad(y_ref.square().sum(), list(ref.parameters()))
    for (name, _), a, r in zip(fast.named_parameters(), ga, gr):
        assert rel(a, r) < 1e-3, (opts, name)


@gpu
@needs_cuda
def test_fast_network_under_bf16_autocast_and_compile():
    ref, fast, x = _gpu_pair()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y_ref = ref(x).float()
        y = fast(x).float()
        compiled = torch.compile(fast)
        y_c = compiled(x).float()
        loss = y_c.square().mean()
    assert rel(y, y_ref) < 2e-2 and rel(y_c, y_ref) < 2e-2
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fast.parameters())
