"""Training and test views: crop/flip/mean/noise semantics, determinism, memory format."""

import math

import pytest
import torch

from alexnet.data import augment as A
from alexnet.errors import ConfigError

# ImageNet's RGB PCA as used by fb.resnet.torch (0-1 scale), turned into the 0-255 scale we take.
EIGVALS_01 = torch.tensor([0.2175, 0.0188, 0.0045])
EIGVALS = EIGVALS_01 * 255.0**2
EIGVECS = torch.tensor(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
)


def batch(b=6, s=12, seed=0, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, 3, s, s), generator=g, dtype=torch.uint8)
    mean = torch.rand((3, s, s), generator=g) * 255
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, mean


@pytest.mark.parametrize("channels_last", [False, True])
def test_crop_flip_and_mean_match_slices(channels_last):
    x, mean = batch(b=16, s=12, channels_last=channels_last)
    cfg = A.Augment(crop=7, flip=True, pca_std=0.0)
    g = torch.Generator().manual_seed(3)
    params = A.sample_params(16, 12, cfg, _clone(g))
    out = A.train_views(x, mean, EIGVALS, EIGVECS, cfg, g)
    assert out.shape == (16, 3, 7, 7) and out.dtype == torch.float32
    ref = x.float() - mean
    for i in range(16):
        y, xo = int(params.oy[i]), int(params.ox[i])
        want = ref[i, :, y : y + 7, xo : xo + 7]
        if params.flip[i]:
            want = want.flip(-1)
        torch.testing.assert_close(out[i], want, rtol=0, atol=1e-4)
    # both flips and several offsets occur
    assert 0 < int(params.flip.sum()) < 16
    assert len(set(params.oy.tolist())) > 2 and len(set(params.ox.tolist())) > 2


def _clone(g):
    h = torch.Generator(device=g.device)
    h.set_state(g.get_state())
    return h


def test_offsets_cover_all_positions():
    cfg = A.Augment(crop=5)
    p = A.sample_params(4000, 8, cfg, torch.Generator().manual_seed(0))
    assert set(p.oy.tolist()) == set(range(4)) and set(p.ox.tolist()) == set(range(4))
    assert abs(p.flip.float().mean().item() - 0.5) < 0.05


def test_no_flip_option():
    p = A.sample_params(200, 8, A.Augment(crop=5, flip=False), torch.Generator().manual_seed(0))
    assert not p.flip.any()


def test_flip_mirrors():
    x, mean = batch(b=4, s=9)
    cfg = A.Augment(crop=9, pca_std=0.0)
    params = A.sample_params(4, 9, cfg, torch.Generator().manual_seed(0))
    params.flip = torch.tensor([True, False, True, False])
    out = A.apply_params(x, mean, EIGVALS, EIGVECS, cfg, params)
    ref = x.float() - mean
    torch.testing.assert_close(out[0], ref[0].flip(-1))
    torch.testing.assert_close(out[1], ref[1])
    torch.testing.assert_close(out[2], ref[2].flip(-1))


@pytest.mark.parametrize("form", A.PCA_FORMS)
def test_same_generator_state_same_batch(form):
    x, mean = batch(b=8, s=16)
    cfg = A.Augment(crop=11, pca_form=form)
    g = torch.Generator().manual_seed(123)
    state = g.get_state()
    a = A.train_views(x, mean, EIGVALS, EIGVECS, cfg, g)
    b = A.train_views(x, mean, EIGVALS, EIGVECS, cfg, g)
    g.set_state(state)
    a2 = A.train_views(x, mean, EIGVALS, EIGVECS, cfg, g)
    assert torch.equal(a, a2)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("form", A.PCA_FORMS)
def test_noise_is_a_per_image_colour_shift(form):
    x, mean = batch(b=8, s=10)
    cfg = A.Augment(crop=6, pca_std=0.1, pca_form=form)
    g = torch.Generator().manual_seed(5)
    h = _clone(g)
    noised = A.train_views(x, mean, EIGVALS, EIGVECS, cfg, g)
    clean = A.train_views(x, mean, EIGVALS, EIGVECS, A.Augment(crop=6, pca_std=0.0, pca_form=form), h)
    diff = noised - clean  # same offsets/flips: same draws in the same order
    per_image = diff[:, :, :1, :1]
    torch.testing.assert_close(diff, per_image.expand_as(diff), rtol=0, atol=1e-3)
    assert (per_image.abs() > 1e-3).any()
    assert not torch.allclose(per_image[0], per_image[1])


@pytest.mark.parametrize("form", A.PCA_FORMS)
def test_noise_covariance_matches_form(form):
    n, s = 20000, 2
    x = torch.zeros((n, 3, s, s), dtype=torch.uint8)
    mean = torch.zeros((3, s, s))
    cfg = A.Augment(crop=1, pca_std=0.1, pca_form=form)
    out = A.train_views(x, mean, EIGVALS, EIGVECS, cfg, torch.Generator().manual_seed(0))
    shift = out[:, :, 0, 0].double()
    cov = shift.T @ shift / n  # zero-mean noise
    P = EIGVECS.double()
    if form == "paper":
        # a_i * lambda_i in the 0-1 scale, times 255: std along p1 about 5.5 grey levels
        sd = 0.1 * EIGVALS_01.double() * 255
    else:
        # a_i * sqrt(lambda_i) in the 0-255 scale, then the input is divided by 1.1
        sd = 0.1 * EIGVALS.double().sqrt() / 1.1
    expected = P @ torch.diag(sd**2) @ P.T
    err = (cov - expected).norm() / expected.norm()
    assert err < 0.05, (form, err.item(), cov, expected)
    # the other form's covariance is far away: the check can fail
    other = P @ torch.diag((0.1 * EIGVALS.double().sqrt() / 1.1 if form == "paper" else 0.1 * EIGVALS_01.double() * 255) ** 2) @ P.T
    assert (cov - other).norm() / expected.norm() > 0.5
    # documented magnitudes along p1
    along_p1 = (shift @ P[:, 0]).std().item()
    assert math.isclose(along_p1, 5.5 if form == "paper" else 10.8, rel_tol=0.05)


def test_cuda_convnet_scales_whole_input():
    x, mean = batch(b=4, s=10)
    g = torch.Generator().manual_seed(1)
    h = _clone(g)
    a = A.train_views(x, mean, EIGVALS, EIGVECS, A.Augment(crop=6, pca_std=0.0, pca_form="cuda-convnet"), g)
    b = A.train_views(x, mean, EIGVALS, EIGVECS, A.Augment(crop=6, pca_std=0.0, pca_form="paper"), h)
    torch.testing.assert_close(a, b / 1.1)
    assert A.Augment(pca_form="cuda-convnet").input_scale == pytest.approx(1 / 1.1)
    assert A.Augment().input_scale == 1.0


@pytest.mark.parametrize("channels_last", [False, True])
def test_ten_views_match_torchvision_ten_crop(channels_last):
    from torchvision.transforms.v2 import functional as F

    x, mean = batch(b=3, s=13, channels_last=channels_last)
    out = A.ten_views(x, mean, crop=8)
    assert out.shape == (30, 3, 8, 8)
    ref = x.float() - mean
    for i in range(3):
        want = torch.stack(F.ten_crop(ref[i], [8, 8]))
        torch.testing.assert_close(out[10 * i : 10 * i + 10], want, rtol=0, atol=1e-4)
    # documented relation: view 5 (mirrored image's top-left) is the mirror of view 1 (top-right)
    torch.testing.assert_close(out[5], out[1].flip(-1))
    scaled = A.views(x, mean, crop=8, n_crops=10, input_scale=1 / 1.1)
    torch.testing.assert_close(scaled, out / 1.1)


@pytest.mark.parametrize("s,crop", [(13, 8), (12, 8), (14, 9)])
def test_center_view_matches_torchvision(s, crop):
    from torchvision.transforms.v2 import functional as F

    x, mean = batch(b=2, s=s)
    out = A.views(x, mean, crop=crop, n_crops=1)
    torch.testing.assert_close(out, F.center_crop(x.float() - mean, [crop, crop]), rtol=0, atol=1e-4)
    with pytest.raises(ConfigError):
        A.views(x, mean, crop=crop, n_crops=5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dtype_shape_memory_format(dtype, channels_last):
    x, mean = batch(b=4, s=10, channels_last=channels_last)
    outs = [
        A.train_views(x, mean, EIGVALS, EIGVECS, A.Augment(crop=6), torch.Generator().manual_seed(0), dtype=dtype),
        A.center_view(x, mean, 6, dtype),
        A.ten_views(x, mean, 6, dtype),
    ]
    for out in outs:
        assert out.dtype == dtype and out.shape[1:] == (3, 6, 6)
        if channels_last:
            assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
        else:
            assert out.is_contiguous()


def test_per_channel_mean_and_errors():
    x, _ = batch(b=2, s=8)
    m = torch.tensor([100.0, 110.0, 120.0])
    out = A.center_view(x, m, 8)
    torch.testing.assert_close(out, x.float() - m.view(3, 1, 1))
    with pytest.raises(ConfigError):
        A.center_view(x, m, 9)
    with pytest.raises(ConfigError):
        A.Augment(pca_form="alexnet")
    with pytest.raises(ConfigError):
        A.Augment(pca_std=-1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_given_params():
    x, mean = batch(b=8, s=16, channels_last=True)
    cfg = A.Augment(crop=11)
    g = torch.Generator(device="cuda").manual_seed(0)
    xc = x.cuda()
    p = A.sample_params(8, 16, cfg, _clone(g), "cuda")
    out = A.train_views(xc, mean.cuda(), EIGVALS.cuda(), EIGVECS.cuda(), cfg, g)
    assert out.device.type == "cuda" and out.is_contiguous(memory_format=torch.channels_last)
    pc = A.AugmentParams(p.oy.cpu(), p.ox.cpu(), p.flip.cpu(), p.alpha.cpu())
    ref = A.apply_params(x, mean, EIGVALS, EIGVECS, cfg, pc)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=1e-3)
