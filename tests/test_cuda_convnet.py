"""cuda-convnet's CIFAR-10 nets (the paper's 13% / 11%): the locally connected layer, the nets as in
their configuration files, and their recipe (update rule, schedule, multiview test)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from alexnet.layers import LocallyConnected

# ============================================================================ locally connected layer


def local_loop(x, weight, bias, kernel, padding, stride, groups, out_size):
    """The definition, one output position and one group at a time: x (N, C, H, W) zero-padded,
    weight (positions, groups, Cg*k*k, Fg), bias (F, S, S)."""
    n, c, h, w = x.shape
    cg, fg = c // groups, weight.shape[-1]
    need = (out_size - 1) * stride + kernel
    xp = torch.zeros(n, c, max(need, h + 2 * padding), max(need, w + 2 * padding), dtype=x.dtype)
    xp[:, :, padding:padding + h, padding:padding + w] = x
    out = torch.zeros(n, groups * fg, out_size, out_size, dtype=x.dtype)
    for i in range(out_size):
        for j in range(out_size):
            for g in range(groups):
                patch = xp[:, g * cg:(g + 1) * cg, i * stride:i * stride + kernel, j * stride:j * stride + kernel]
                wij = weight[i * out_size + j, g]                  # (Cg*k*k, Fg), rows channel-major
                out[:, g * fg:(g + 1) * fg, i, j] = patch.reshape(n, -1) @ wij
    return out + bias


CASES = [  # in_channels, out_channels, size, kernel, padding, stride, groups
    (4, 6, 6, 3, 1, 1, 1),
    (6, 4, 7, 3, 0, 2, 2),     # stride 2 over 7: 1 + ceil(4/2) = 3 positions
    (3, 5, 8, 5, 2, 3, 1),     # 1 + ceil(7/3) = 4: the last window overhangs the padding
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_local_layer_equals_loop_forward_and_gradients(case, dtype):
    cin, cout, size, k, pad, stride, groups = case
    torch.manual_seed(0)
    m = LocallyConnected(cin, cout, size, k, padding=pad, stride=stride, groups=groups, init_std=0.3).to(dtype)
    with torch.no_grad():
        m.bias.normal_()
    assert m.out_size == 1 + math.ceil((2 * pad + size - k) / stride)
    x = torch.randn(3, cin, size, size, dtype=dtype, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    w2, b2 = m.weight.detach().clone().requires_grad_(True), m.bias.detach().clone().requires_grad_(True)
    out, ref = m(x), local_loop(x2, w2, b2, k, pad, stride, groups, m.out_size)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, ref, **tol)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, **tol)
    torch.testing.assert_close(m.weight.grad, w2.grad, **tol)
    torch.testing.assert_close(m.bias.grad, b2.grad, **tol)


def test_local_layer_gradcheck_float64():
    torch.manual_seed(1)
    m = LocallyConnected(2, 4, 5, 3, padding=1, stride=2, groups=2, init_std=0.5).double()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: torch.func.functional_call(m, {"weight": w, "bias": b}, (x,))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, m.weight.detach().requires_grad_(), m.bias.detach().requires_grad_()))


def test_local_layer_weights_are_not_shared():
    """Unlike a convolution, changing the filter at one position changes that position only."""
    m = LocallyConnected(3, 2, 4, 3, padding=1)
    x = torch.randn(1, 3, 4, 4)
    before = m(x).detach()
    with torch.no_grad():
        m.weight[5].add_(1.0)                       # position (1, 1)
    changed = (m(x).detach() - before).abs().sum(1)[0] > 0
    assert changed.sum() == 1 and changed[1, 1]


def test_local_layer_init_is_cuda_convnet_initw():
    torch.manual_seed(0)
    m = LocallyConnected(64, 64, 6, 3, padding=1, init_std=0.04)
    assert m.weight.shape == (36, 1, 64 * 9, 64) and m.bias.shape == (64, 6, 6)
    assert abs(m.weight.std().item() - 0.04) < 0.001 and abs(m.weight.mean().item()) < 0.001
    assert torch.count_nonzero(m.bias) == 0


def test_local_layer_bf16_autocast_cpu():
    torch.manual_seed(0)
    m = LocallyConnected(16, 8, 6, 3, padding=1, init_std=0.1)
    x = torch.randn(4, 16, 6, 6)
    ref = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())
    out.float().sum().backward()
    assert torch.isfinite(m.weight.grad).all()


# ============================================================================ the nets


def _conv(cin, cout, k):
    return cin * k * k * cout + cout                          # shared biases: one per filter


def _local(cin, cout, k, positions):
    return positions * cin * k * k * cout + positions * cout  # unshared: per position, biases too


# By hand from layers-conv-local-{11,13}pct.cfg, 24x24 input: pools 24 -> 12 -> 6 (36 positions).
PARAMS_11PCT = _conv(3, 64, 5) + _conv(64, 64, 5) + _local(64, 64, 3, 36) + _local(64, 32, 3, 36) + 32 * 36 * 10 + 10
PARAMS_13PCT = _conv(3, 64, 5) + _conv(64, 64, 5) + _local(64, 32, 3, 36) + _local(32, 32, 3, 36) + 32 * 36 * 10 + 10


@pytest.mark.parametrize("arch, params, norms", [("cuda-convnet-11pct", PARAMS_11PCT, 2),
                                                 ("cuda-convnet-13pct", PARAMS_13PCT, 0),
                                                 ("cuda-convnet-11pct-no-norm", PARAMS_11PCT, 0)])
def test_nets_shapes_and_parameter_counts(arch, params, norms):
    from alexnet.layers import ResponseNorm
    from alexnet.models import build_model
    from alexnet.summary import summarize

    assert (PARAMS_11PCT, PARAMS_13PCT) == (2_112_970, 1_116_490)
    model = build_model(arch)
    assert sum(p.numel() for p in model.parameters()) == params
    rows = {r.name: r for r in summarize(model, 24)}
    assert rows["conv1"].output_shape == [64, 24, 24]
    assert rows["pool1"].output_shape == [64, 12, 12] and rows["pool2"].output_shape == [64, 6, 6]
    assert rows["local3"].output_shape == [64 if "11pct" in arch else 32, 6, 6]
    assert rows["local4"].output_shape == [32, 6, 6] and rows["fc10"].output_shape == [10]
    assert rows["local4"].macs == 36 * 32 * (64 if "11pct" in arch else 32) * 9
    assert sum(isinstance(m, ResponseNorm) for m in model.modules()) == norms
    assert model(torch.zeros(2, 3, 24, 24)).shape == (2, 10)


def test_11pct_order_of_layers_and_the_clean_ablation():
    """11pct: pool1 then rnorm1; rnorm2 then pool2. The no-norm net differs in those two only."""
    from alexnet.models import build_model

    a, b = build_model("cuda-convnet-11pct"), build_model("cuda-convnet-11pct-no-norm")
    names_a = [n for n, _ in a.named_children()]
    assert names_a.index("pool1") < names_a.index("rnorm1") < names_a.index("conv2")
    assert names_a.index("rnorm2") < names_a.index("pool2")
    assert vars(build_model("cuda-convnet-11pct", response_norm=False).config) == vars(b.config)
    b.load_state_dict(a.state_dict())             # the same parameters, by name and shape
    x = torch.randn(3, 3, 24, 24) * 60
    assert not torch.allclose(a(x), b(x))
    for m in (a.rnorm1, a.rnorm2):
        m.scale = 0.0                               # denominator 1: the norm layers become identities
    torch.testing.assert_close(a(x), b(x))


def test_norm_is_cuda_convnet_cmrnorm():
    """cmrnorm size 9, scale 0.001, pow 0.75: b = a / (1 + 0.001/9 * sum_9 a^2)^0.75, window centred."""
    from alexnet.models import build_model

    norm = build_model("cuda-convnet-11pct").rnorm1
    x = torch.randn(2, 64, 5, 5) * 30
    torch.testing.assert_close(norm(x), torch.nn.LocalResponseNorm(9, alpha=0.001, beta=0.75, k=1.0)(x))
    c = 10
    window = (x[:, c - 4:c + 5] ** 2).sum(1)
    torch.testing.assert_close(norm(x)[:, c], x[:, c] / (1 + 0.001 / 9 * window) ** 0.75)


def test_init_scales_neurons_and_pooling():
    from alexnet.models import build_model

    torch.manual_seed(0)
    model = build_model("cuda-convnet-11pct")
    for name, std in (("conv1", 1e-4), ("conv2", 0.01), ("local3", 0.04), ("local4", 0.04), ("fc10", 0.01)):
        w = getattr(model, name).weight
        assert abs(w.std().item() / std - 1) < 0.05, name
        assert torch.count_nonzero(getattr(model, name).bias) == 0
    # Max pooling over windows clipped at the edge: 24 -> 12 with the last window at 22..23.
    x = torch.zeros(1, 64, 24, 24)
    x[0, 0, 23, 23] = 5.0
    assert model.pool1(x)[0, 0, 11, 11] == 5.0 and model.pool1(x).shape[-1] == 12
    # fc10 has no neuron: logits of either sign.
    with torch.no_grad():
        model.fc10.bias.copy_(torch.linspace(-1, 1, 10))
    assert (model(torch.zeros(1, 3, 24, 24)) < 0).any()


@pytest.mark.parametrize("arch", ["cuda-convnet-11pct", "cuda-convnet-13pct"])
def test_replicas_are_independent_copies_of_the_single_net(arch):
    """Replica r of a stacked model computes exactly what a single net built with seed r does:
    outputs, and gradients of the summed per-replica losses."""
    from alexnet.models import build_model
    from alexnet.models.cuda_convnet import replica_bias, replica_slice

    seeds = (3, 7)
    stacked = build_model(arch, replicas=2, init_seeds=seeds).double()
    singles = [build_model(arch, init_seeds=(s,)).double() for s in seeds]
    x = [torch.randn(2, 3, 24, 24, dtype=torch.float64) * 50 for _ in seeds]
    y = [torch.randint(0, 10, (2,)) for _ in seeds]
    out = stacked(torch.cat(x, 1)).view(2, 2, 10)
    loss = sum(F.cross_entropy(out[:, r], y[r]) for r in range(2))
    loss.backward()
    for r, net in enumerate(singles):
        torch.testing.assert_close(out[:, r], net(x[r]))
        F.cross_entropy(net(x[r]), y[r]).backward()
        for name, layer in net.weight_layers().items():
            big = getattr(stacked, name)
            torch.testing.assert_close(replica_slice(big.weight, name, r, 2), replica_slice(layer.weight, name, 0, 1))
            torch.testing.assert_close(replica_slice(big.weight.grad, name, r, 2),
                                       replica_slice(layer.weight.grad, name, 0, 1))
            torch.testing.assert_close(replica_bias(big.bias.grad, r, 2), layer.bias.grad)
