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
