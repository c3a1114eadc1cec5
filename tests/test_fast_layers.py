"""The fast layers (alexnet.models.fast, alexnet.kernels.ops) compute exactly the reference layers'
functions, and `impl` chooses between them when a model is built.

On the CPU in float64 (where the only difference is the order of the sums); the `gpu` tests repeat
the comparison on CUDA, through the Triton kernels, in float32 and under bf16 autocast, and through
torch.compile. The kernels themselves: test_kernels.py.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from alexnet.errors import ConfigError
from alexnet.kernels import ops
from alexnet.layers import OverhangConv2d, ResponseNorm, response_norm
from alexnet.models import build_model, fast

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
    out = fast.space_to_depth_conv(x, w, b, stride)
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
    out = fast.space_to_depth_conv(x, w, None, 4)
    torch.testing.assert_close(out, F.conv2d(F.pad(x, (0, 3, 0, 3)), w, stride=4), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("mode", fast.GROUPED_MODES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_grouped_modes_equal_groups_2(mode, channels_last):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 8, 9, 9, generator=g, dtype=torch.float64, requires_grad=True)
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, w, b, padding=1, groups=2)
    layer = fast.conv_layer("conv2", 8, 6, 3, 1, 1, 2, fast.parse_choices(f"conv2={mode}")).double()
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    out = layer(x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-10)
    gy = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(out, (x, layer.weight, layer.bias), gy), torch.autograd.grad(ref, (x, w, b), gy)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-10)


def test_blockdiag_weight_is_zero_off_the_diagonal():
    w = torch.arange(1, 6 * 4 * 1 * 1 + 1, dtype=torch.float64).view(6, 4, 1, 1)
    d = fast.blockdiag_weight(w, 2)
    assert d.shape == (6, 8, 1, 1)
    assert torch.equal(d[:3, :4], w[:3]) and torch.equal(d[3:, 4:], w[3:])
    assert not d[:3, 4:].any() and not d[3:, :4].any()


@pytest.mark.parametrize("relu,groups", [(True, 2), (False, 1), (True, 1)])
def test_relu_lrn_custom_op_forward_and_backward_on_cpu(relu, groups):
    """The operator's CPU fallback and its registered backward equal the reference's autograd."""
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(2, 8, 5, 5, generator=g, dtype=torch.float64) * 30).requires_grad_()
    y = ops._relu_lrn(x, 5, 1e-4, 0.75, 2.0, relu, groups)
    ref = response_norm(torch.relu(x) if relu else x, 5, 1e-4, 0.75, 2.0, groups)
    torch.testing.assert_close(y, ref)
    gy = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, x, gy)[0], torch.autograd.grad(ref, x, gy)[0])


def test_relu_lrn_custom_op_passes_opcheck():
    """Schema, fake tensor (what torch.compile traces with) and autograd registration."""
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops._relu_lrn, (x, 5, 1e-4, 0.75, 2.0, True, 2))


@pytest.mark.parametrize("size,kernel,stride", [(11, 3, 2), (13, 3, 2), (12, 2, 2), (9, 3, 3)])
def test_max_pool_op_on_cpu_equals_max_pool2d(size, kernel, stride):
    """The operator's CPU fallback (argmax as a window position) and its registered backward."""
    g = torch.Generator().manual_seed(size)
    x = torch.randn(2, 3, size, size, generator=g, dtype=torch.float64)
    x[0, 0, :4, :4] = 0.0                                              # ties: the first maximum wins
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    y, idx = ops._max_pool(x, kernel, stride)
    ref = F.max_pool2d(x, kernel, stride)
    assert torch.equal(y, ref) and idx.dtype == torch.int8 and int(idx.max()) < kernel * kernel
    gy = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(y, x, gy)[0], torch.autograd.grad(ref, x, gy)[0])


def test_max_pool_op_passes_opcheck():
    x = torch.randn(2, 3, 11, 11, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(ops._max_pool, (x.requires_grad_(), 3, 2))


def test_parse_choices():
    assert fast.parse_choices(None) == fast.DEFAULTS
    o = fast.parse_choices("conv1=direct, conv4=blockdiag,relu_lrn=0")
    assert o["conv1"] == "direct" and o["conv4"] == "blockdiag" and o["relu_lrn"] is False
    assert fast.parse_choices(fast.format_choices(o)) == o
    with pytest.raises(ConfigError, match="unknown fast option"):
        fast.parse_choices("conv3=blockdiag")
    with pytest.raises(ConfigError, match="conv2 mode"):
        fast.parse_choices("conv2=winograd")


def _options(full: bool = False):
    """Combinations of fast options; by default three that cover every mode of every option."""
    combos = (itertools.product(fast.CONV1_MODES, fast.GROUPED_MODES, (True, False)) if full else
              [("s2d", "grouped", True), ("s2d", "blockdiag", False), ("direct", "split", True)])
    for k, (conv1, gmode, fuse) in enumerate(combos):
        yield {"conv1": conv1, "conv2": gmode, "conv4": gmode, "conv5": gmode, "relu_lrn": fuse,
               "pool": fast.POOL_MODES[k % 2]}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["paper", "cuda-convnet"])
def test_fast_network_equals_reference_on_cpu(recipe):
    """The whole network, fast options covering every mode, forward and all parameter gradients."""
    torch.manual_seed(5)
    ref = build_model("alexnet2012", recipe=recipe, impl="reference", num_classes=10, dropout=0.0).double()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64) * 50
    y_ref = ref(x)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), list(ref.parameters()))
    for opts in _options() if recipe == "paper" else [fast.DEFAULTS]:
        model = build_model("alexnet2012", recipe=recipe, impl="fast", fast=fast.format_choices(opts),
                            num_classes=10, dropout=0.0).double()
        model.load_state_dict(ref.state_dict())
        assert list(model.state_dict()) == list(ref.state_dict())      # same names: checkpoints load
        y = model(x)
        assert rel(y, y_ref) < 1e-10, opts
        grads = torch.autograd.grad(y.square().sum(), list(model.parameters()))
        for (name, _), a, r in zip(model.named_parameters(), grads, grads_ref):
            assert rel(a, r) < 1e-9, (opts, name)


def test_impl_is_chosen_when_built_and_reference_means_the_torch_formulas_everywhere():
    """The choice is resolved at build time and saved in the config; `reference` builds only the
    reference classes (no Triton anywhere, on any device); auto is the reference on a CPU machine."""
    fast_classes = (fast.SpaceToDepthConv2d, fast.BlockDiagonalConv2d, fast.SplitConv2d, fast.FusedResponseNorm,
                    fast.TritonMaxPool2d)
    ref = build_model("alexnet2012", impl="reference")
    assert ref.config.impl == "reference" and ref.config.fast == ""
    assert not any(isinstance(m, fast_classes) for m in ref.modules())
    assert type(ref.conv1) is OverhangConv2d and type(ref.norm1) is ResponseNorm and type(ref.pool1) is torch.nn.MaxPool2d
    auto = build_model("alexnet2012")
    assert auto.config.impl == ("fast" if CUDA else "reference")
    f = build_model("alexnet2012", impl="fast", fast="pool=torch")
    assert f.config.fast == fast.format_choices(fast.parse_choices("pool=torch"))
    assert isinstance(f.conv1, fast.SpaceToDepthConv2d) and isinstance(f.conv2, fast.BlockDiagonalConv2d)
    assert isinstance(f.norm1, fast.FusedResponseNorm) and type(f.pool1) is torch.nn.MaxPool2d
    assert build_model("alexnet2012", **{k: v for k, v in vars(f.config).items()}).config == f.config   # saved = rebuilt
    with pytest.raises(ConfigError, match="impl"):
        build_model("alexnet2012", impl="turbo")


# ------------------------------------------------------------------------------------------ GPU


@gpu
@needs_cuda
def test_max_pool_kernels_on_cuda():
    from alexnet.kernels import max_pool as mp
    from test_kernels import check_pool_kernels

    check_pool_kernels(mp, "cuda", bf16_rtol=2 ** -8)
    x = (torch.randn(256, 96, 55, 55, device="cuda") * 3).to(torch.bfloat16).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    y = ops.max_pool(x, 3, 2)
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
    y = ops.relu_response_norm(x, 5, 1e-4, 0.75, 2.0, groups, relu=relu)
    assert y.is_contiguous(memory_format=torch.channels_last)
    xr = x.detach().double().requires_grad_()
    ref = response_norm(torch.relu(xr) if relu else xr, 5, 1e-4, 0.75, 2.0, groups)
    assert rel(y, ref) < 1e-5
    gy = torch.randn_like(y)
    assert rel(torch.autograd.grad(y, x, gy)[0], torch.autograd.grad(ref, xr, gy.double())[0]) < 1e-5


def _gpu_pair(**kw):
    torch.manual_seed(0)
    ref = build_model("alexnet2012", impl="reference", dropout=0.0, **kw).cuda().to(memory_format=torch.channels_last)
    model = build_model("alexnet2012", dropout=0.0, **kw).cuda().to(memory_format=torch.channels_last)
    model.load_state_dict(ref.state_dict())
    x = (torch.randn(8, 3, 224, 224, device="cuda") * 50).contiguous(memory_format=torch.channels_last)
    return ref, model, x


@gpu
@needs_cuda
@pytest.mark.parametrize("opts", list(_options(full=True)), ids=str)
def test_fast_network_equals_reference_on_cuda_fp32(opts, plain_fp32_cuda):
    ref, _, x = _gpu_pair()
    model = build_model("alexnet2012", dropout=0.0, impl="fast", fast=fast.format_choices(opts)).cuda()
    model.to(memory_format=torch.channels_last).load_state_dict(ref.state_dict())
    y_ref, y = ref(x), model(x)
    assert rel(y, y_ref) < 1e-4, opts
    ga = torch.autograd.grad(y.square().sum(), list(model.parameters()))
    gr = torch.autograd.grad(y_ref.square().sum(), list(ref.parameters()))
    for (name, _), a, r in zip(model.named_parameters(), ga, gr):
        assert rel(a, r) < 1e-3, (opts, name)


@gpu
@needs_cuda
def test_fast_network_under_bf16_autocast_and_compile():
    ref, model, x = _gpu_pair()
    assert model.config.impl == "fast"
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y_ref = ref(x).float()
        y = model(x).float()
        compiled = torch.compile(model)
        y_c = compiled(x).float()
        loss = y_c.square().mean()
    assert rel(y, y_ref) < 2e-2 and rel(y_c, y_ref) < 2e-2
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
