"""Response normalisation equals the paper's formula, in both conventions."""

import pytest
import torch

from alexnet.layers import ResponseNorm, lrn_scale, overhang, response_norm, within_map_norm


def direct_lrn(a, n, alpha, beta, k):
    """b[c] = a[c] / (k + alpha * sum_{j=max(0,c-n/2)}^{min(C-1,c+n/2)} a[j]^2)^beta, literally."""
    C = a.shape[1]
    out = torch.empty_like(a)
    for c in range(C):
        lo, hi = max(0, c - n // 2), min(C - 1, c + n // 2)
        s = (a[:, lo:hi + 1] ** 2).sum(1)
        out[:, c] = a[:, c] / (k + alpha * s) ** beta
    return out


@pytest.mark.parametrize("convention,torch_alpha", [("paper", 5e-4), ("cuda-convnet", 1e-4)])
def test_response_norm_matches_the_formula_and_torch(convention, torch_alpha):
    a = torch.randn(2, 11, 4, 3, dtype=torch.float64) * 30
    scale = lrn_scale(1e-4, 5, convention)
    expected = direct_lrn(a, 5, scale, 0.75, 2.0)
    torch.testing.assert_close(response_norm(a, 5, scale, 0.75, 2.0), expected)
    # The two conventions in torch's own terms (torch divides its alpha by n).
    lrn = torch.nn.LocalResponseNorm(5, alpha=torch_alpha, beta=0.75, k=2.0)
    torch.testing.assert_close(lrn(a), expected)


def test_conventions_differ_by_the_window_size():
    assert lrn_scale(1e-4, 5, "paper") == pytest.approx(5 * lrn_scale(1e-4, 5, "cuda-convnet"))
    with pytest.raises(ValueError):
        lrn_scale(1e-4, 5, "caffe")


def test_grouped_response_norm_is_per_group():
    a = torch.randn(2, 12, 3, 3, dtype=torch.float64) * 30
    expected = torch.cat([direct_lrn(a[:, :6], 5, 1e-4, 0.75, 2.0), direct_lrn(a[:, 6:], 5, 1e-4, 0.75, 2.0)], 1)
    torch.testing.assert_close(ResponseNorm(5, 1e-4, 0.75, 2.0, groups=2)(a), expected)


def test_within_map_norm_matches_a_direct_sum():
    a = torch.randn(1, 2, 6, 7, dtype=torch.float64) * 10
    out = within_map_norm(a, 5, 1e-3 / 25, 0.75, 1.0)
    i, j = 0, 3  # a border position: the patch is cut by the edge, the divisor stays 25
    patch = a[0, 1, max(0, i - 2):i + 3, max(0, j - 2):j + 3]
    expected = a[0, 1, i, j] / (1.0 + 1e-3 / 25 * (patch ** 2).sum()) ** 0.75
    torch.testing.assert_close(out[0, 1, i, j], expected)


@pytest.mark.parametrize("size,pad", [(224, 3), (227, 0), (225, 2), (228, 3)])
def test_overhang(size, pad):
    assert overhang(size, 11, 4) == pad
    assert (size + pad - 11) % 4 == 0
