"""Training and test views of a batch, on the batch's own device (paper section 4.1, "Data").

Batches arrive as ``uint8`` tensors ``(B, 3, S, S)`` (typically S = 256), possibly channels_last in
memory, already on the training device. Everything here runs there, vectorised over the batch: no
Python loop over images, and only the cropped pixels are ever converted to float.

Training (``train_views``), per image, each time it is used:

1. a random ``crop x crop`` window, its offset uniform over all ``(S - crop + 1)**2`` positions;
2. a horizontal flip with probability 0.5;
3. subtraction of the training-set mean image, cropped at the same offset and flipped with the image
   (the same as subtracting the full mean image first and cropping afterwards);
4. PCA colour noise: one RGB shift ``[p1 p2 p3] [a1 w1, a2 w2, a3 w3]^T`` added to every pixel of the
   image, ``a_i ~ N(0, pca_std)`` drawn once per image, ``p_i`` the eigenvectors of the 3x3 covariance
   of RGB pixel values over the training set. What ``w_i`` is depends on ``pca_form``, see below.

The output stays in the 0-255 scale, minus the mean: the paper feeds mean-subtracted raw pixels.

The two forms of the colour noise (PAPER.md, "Two recipes"). ``eigvals`` given to this module are
always the eigenvalues of the covariance of pixel values in the **0-255 scale** (``lambda_255``);
the pixel scale decides what the paper's ``lambda_i`` means, so both forms state it:

* ``"paper"`` (the text; also fb.resnet.torch's and the torchvision-recipe ``Lighting``):
  ``w_i = lambda_i`` with ``lambda_i = lambda_255 / 255**2``, the eigenvalue in the **0-1 scale**; the
  shift is computed in 0-1 units and converted back to 0-255 (times 255), i.e.
  ``shift_255 = P (a * lambda_255) / 255``. With ImageNet's 0-1 eigenvalues
  (0.2175, 0.0188, 0.0045) and ``pca_std = 0.1`` the shift's standard deviation along p1, p2, p3 is
  0.0218, 0.0019, 0.00045 in 0-1 units = 5.5, 0.48, 0.11 grey levels. (Read in the 0-255 scale
  instead, ``a_i * lambda_255`` would be 0.1 * 14,100 = 1,400 grey levels: meaningless.)
* ``"cuda-convnet"`` (the 2012 code that produced the reported numbers):
  ``w_i = sqrt(lambda_255)``, the standard deviation along ``p_i`` in the **0-255 scale**, and the
  whole input (mean-subtracted and noised) is then divided by 1.1. With the same ImageNet statistics
  the shift's standard deviation is 0.1 * (119, 35, 17) = 11.9, 3.5, 1.7 grey levels before the
  division, 10.8, 3.2, 1.6 after it: about twice the paper form's along p1, and far more along p2, p3.

Because the cuda-convnet form scales every training input by 1/1.1, test views must be scaled the
same way: ``center_view``, ``ten_views`` and ``views`` take an explicit ``input_scale`` (default 1.0);
pass ``cfg.input_scale`` (or ``input_scale(cfg.pca_form)``), which is 1/1.1 for ``"cuda-convnet"``
and 1.0 for ``"paper"``. The scale depends on the form only, not on ``pca_std`` (it is part of the
2012 data path, not of the noise).

Randomness: ``sample_params`` draws, in this order, the crop offsets ``(B, 2)`` (``randint``), the flips
``(B,)`` (``randint``) and the noise coefficients ``(B, 3)`` (``randn``) from the given
``torch.Generator`` (which must live on the batch's device), always all three whatever the config, so
the same generator state gives the same batch exactly and the stream does not depend on options.
``train_views = apply_params(sample_params(...))``.

Memory format: when the input is channels_last, so is the output (the crop is gathered directly in
NHWC order); otherwise the output is contiguous NCHW.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alexnet.errors import ConfigError

__all__ = [
    "PCA_FORMS",
    "CUDA_CONVNET_SCALE",
    "Augment",
    "AugmentParams",
    "input_scale",
    "sample_params",
    "apply_params",
    "train_views",
    "pca_shift",
    "center_view",
    "ten_views",
    "ten_view_offsets",
    "views",
]

PCA_FORMS = ("paper", "cuda-convnet")
CUDA_CONVNET_SCALE = 1.0 / 1.1


def input_scale(pca_form: str) -> float:
    """The factor every network input is multiplied by: 1/1.1 for ``"cuda-convnet"``, 1.0 for ``"paper"``."""
    if pca_form not in PCA_FORMS:
        raise ConfigError(f"pca_form must be one of {PCA_FORMS}, not {pca_form!r}")
    return CUDA_CONVNET_SCALE if pca_form == "cuda-convnet" else 1.0


@dataclass
class Augment:
    """Training-augmentation options.

    crop: side of the square random crop (224 in the paper).
    flip: random horizontal flips with probability 0.5.
    pca_std: standard deviation of the PCA colour-noise coefficients a_i (0.1 in the paper; 0 disables).
    pca_form: ``"paper"`` (a_i * lambda_i, lambda in the 0-1 scale) or ``"cuda-convnet"``
        (a_i * sqrt(lambda_i) in the 0-255 scale, input then divided by 1.1); see the module docstring.
    """

    crop: int = 224
    flip: bool = True
    pca_std: float = 0.1
    pca_form: str = "paper"

    def __post_init__(self):
        if int(self.crop) != self.crop or self.crop < 1:
            raise ConfigError(f"crop must be a positive integer, not {self.crop!r}")
        if not self.pca_std >= 0:
            raise ConfigError(f"pca_std must be >= 0, not {self.pca_std!r}")
        input_scale(self.pca_form)  # validates the name

    @property
    def input_scale(self) -> float:
        """Scale to apply to test views so they match training inputs (1/1.1 for cuda-convnet, else 1)."""
        return input_scale(self.pca_form)


@dataclass
class AugmentParams:
    """The random choices for one batch: crop offsets (row, column), flips, noise coefficients."""

    oy: torch.Tensor  # (B,) int64, top row of the crop
    ox: torch.Tensor  # (B,) int64, left column of the crop
    flip: torch.Tensor  # (B,) bool
    alpha: torch.Tensor  # (B, 3) float32, N(0, 1) draws, multiplied by pca_std when applied


# ----------------------------------------------------------------------------------------------
# helpers


def _check_images(images: torch.Tensor, crop: int) -> int:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ConfigError(f"expected images of shape (B, 3, S, S), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h != w:
        raise ConfigError(f"expected square images, got {h}x{w}")
    if crop > h:
        raise ConfigError(f"crop {crop} is larger than the images ({h}x{w})")
    return int(h)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _mean_hwc(mean: torch.Tensor, size: int, device, cdtype) -> torch.Tensor:
    """The mean as an (S, S, 3) view in compute dtype; a (3,) per-channel mean is broadcast."""
    mean = mean.to(device=device, dtype=cdtype)
    if mean.dim() == 1:
        mean = mean.view(3, 1, 1).expand(3, size, size)
    if tuple(mean.shape) != (3, size, size):
        raise ConfigError(f"mean must have shape (3, {size}, {size}) or (3,), got {tuple(mean.shape)}")
    return mean.permute(1, 2, 0)


def _gather(images, mean, crop, bidx, oy, ox, flip, cdtype):
    """Crop ``images[bidx]`` at (oy, ox), mirror where ``flip``, convert to float and subtract the mean.

    Index arithmetic: rows ``oy + i``, columns ``ox + j`` (or ``ox + crop - 1 - j`` when flipped); only
    the gathered crop is converted to float. Returns (N, 3, crop, crop), channels_last in memory when
    the input is.
    """
    size = images.shape[-1]
    device = images.device
    ar = torch.arange(crop, device=device)
    rows = oy[:, None] + ar  # (N, c)
    cols = ox[:, None] + torch.where(flip[:, None], crop - 1 - ar, ar)  # (N, c)
    r, c = rows[:, :, None], cols[:, None, :]
    m = _mean_hwc(mean, size, device, cdtype)[r, c]  # (N, c, c, 3)
    if _is_channels_last(images):
        x = images.permute(0, 2, 3, 1)[bidx[:, None, None], r, c]  # (N, c, c, 3), NHWC contiguous
        x = x.to(cdtype).sub_(m)
        return x.permute(0, 3, 1, 2)  # channels_last view of NCHW
    ch = torch.arange(3, device=device)
    x = images[bidx[:, None, None, None], ch[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
    return x.to(cdtype).sub_(m.permute(0, 3, 1, 2))  # (N, 3, c, c) contiguous


def _fixed_views(images, mean, crop, oys, oxs, flips, cdtype):
    """Views at offsets shared by every image (test views): plain slices, no index gather.

    Returns (B * V, 3, crop, crop), rows ``V * b .. V * b + V - 1`` for image b in the given order;
    channels_last in memory when the input is.
    """
    b, size, dev = images.shape[0], images.shape[-1], images.device
    n = len(oys)
    mean = _mean_hwc(mean, size, dev, cdtype)  # (S, S, 3)
    nhwc = _is_channels_last(images)
    src = images.permute(0, 2, 3, 1) if nhwc else images
    out = torch.empty((b, n, crop, crop, 3) if nhwc else (b, n, 3, crop, crop), dtype=cdtype, device=dev)
    wdim = -2 if nhwc else -1
    for k, (y, x, f) in enumerate(zip(oys, oxs, flips)):
        patch = src[:, y : y + crop, x : x + crop] if nhwc else src[..., y : y + crop, x : x + crop]
        m = mean[y : y + crop, x : x + crop]
        if not nhwc:
            m = m.permute(2, 0, 1)
        if f:
            patch, m = patch.flip(wdim), m.flip(wdim)
        out[:, k].copy_(patch).sub_(m)
    if nhwc:
        return out.view(b * n, crop, crop, 3).permute(0, 3, 1, 2)
    return out.view(b * n, 3, crop, crop)


def _finish(x: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    if scale != 1.0:
        x = x.mul_(scale)
    return x.to(dtype)


# ----------------------------------------------------------------------------------------------
# training views


def sample_params(
    batch: int, size: int, cfg: Augment, generator: torch.Generator | None = None, device=None
) -> AugmentParams:
    """Draw the random choices for a batch of ``batch`` images of side ``size`` (see the module docstring
    for the draw order). ``generator`` must be on ``device``; with ``None`` the default one is used."""
    if cfg.crop > size:
        raise ConfigError(f"crop {cfg.crop} is larger than the images ({size}x{size})")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if generator is not None and generator.device.type != device.type:
        raise ConfigError(f"the generator is on {generator.device} but the batch is on {device}")
    off = torch.randint(0, size - cfg.crop + 1, (batch, 2), generator=generator, device=device)
    flip = torch.randint(0, 2, (batch,), generator=generator, device=device).bool()
    alpha = torch.randn((batch, 3), generator=generator, device=device, dtype=torch.float32)
    if not cfg.flip:
        flip = torch.zeros_like(flip)
    return AugmentParams(oy=off[:, 0], ox=off[:, 1], flip=flip, alpha=alpha)


def pca_shift(
    alpha: torch.Tensor, eigvals: torch.Tensor, eigvecs: torch.Tensor, pca_std: float, pca_form: str
) -> torch.Tensor:
    """Per-image RGB shift (B, 3) in 0-255 units, before the cuda-convnet 1/1.1 input scaling.

    ``alpha`` holds N(0, 1) draws; ``eigvals`` are 0-255-scale covariance eigenvalues, ``eigvecs`` has
    the eigenvectors as columns. "paper": ``255 * P (pca_std * alpha * eigvals / 255**2)``;
    "cuda-convnet": ``P (pca_std * alpha * sqrt(eigvals))``.
    """
    eigvals = eigvals.to(alpha)
    eigvecs = eigvecs.to(alpha)
    if pca_form == "paper":
        w = eigvals / 255.0  # = 255 * (lambda_255 / 255**2): 0-1 eigenvalue, shift converted to 0-255
    elif pca_form == "cuda-convnet":
        w = eigvals.clamp(min=0).sqrt()
    else:
        raise ConfigError(f"pca_form must be one of {PCA_FORMS}, not {pca_form!r}")
    return (alpha * (pca_std * w)) @ eigvecs.T  # row b: P (a_b * w)


def apply_params(
    images_u8: torch.Tensor,
    mean: torch.Tensor,
    eigvals: torch.Tensor,
    eigvecs: torch.Tensor,
    cfg: Augment,
    params: AugmentParams,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Apply given random choices: crop, flip, subtract the mean, add colour noise, scale (cuda-convnet)."""
    _check_images(images_u8, cfg.crop)
    cdtype = _compute_dtype(dtype)
    bidx = torch.arange(images_u8.shape[0], device=images_u8.device)
    x = _gather(images_u8, mean, cfg.crop, bidx, params.oy, params.ox, params.flip, cdtype)
    if cfg.pca_std > 0:
        shift = pca_shift(params.alpha.to(cdtype), eigvals, eigvecs, cfg.pca_std, cfg.pca_form)
        x = x.add_(shift[:, :, None, None])
    return _finish(x, cfg.input_scale, dtype)


def train_views(
    images_u8: torch.Tensor,
    mean: torch.Tensor,
    eigvals: torch.Tensor,
    eigvecs: torch.Tensor,
    cfg: Augment,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Random training views (B, 3, crop, crop) of a uint8 batch (B, 3, S, S), in 0-255 scale minus the
    mean (times 1/1.1 for the cuda-convnet form). ``mean`` is the (3, S, S) mean image (0-255),
    ``eigvals`` (3,) and ``eigvecs`` (3, 3, columns) the PCA of RGB pixel values in the 0-255 scale.

    Deterministic given the state of ``generator`` (on the batch's device). Noise magnitudes for each
    ``pca_form`` are in the module docstring.
    """
    size = _check_images(images_u8, cfg.crop)
    params = sample_params(images_u8.shape[0], size, cfg, generator, images_u8.device)
    return apply_params(images_u8, mean, eigvals, eigvecs, cfg, params, dtype)


# ----------------------------------------------------------------------------------------------
# test views


def _center_offset(size: int, crop: int) -> int:
    # torchvision's center_crop: int(round((S - crop) / 2.0)), Python's round-half-even included.
    return int(round((size - crop) / 2.0))


def center_view(
    images_u8: torch.Tensor,
    mean: torch.Tensor,
    crop: int = 224,
    dtype: torch.dtype = torch.float32,
    input_scale: float = 1.0,
) -> torch.Tensor:
    """The central crop (B, 3, crop, crop) of (image - mean), times ``input_scale``.

    The offset is torchvision's ``center_crop``'s: ``int(round((S - crop) / 2))``. Pass
    ``input_scale = Augment.input_scale`` (1/1.1 for a net trained with the cuda-convnet form).
    """
    size = _check_images(images_u8, crop)
    o = _center_offset(size, crop)
    return _finish(_fixed_views(images_u8, mean, crop, [o], [o], [False], _compute_dtype(dtype)), input_scale, dtype)


def ten_view_offsets(size: int, crop: int):
    """Offsets (oy, ox, flip) of the 10 test views of one image, as three lists of length 10.

    Order (torchvision's ``ten_crop`` with ``vertical_flip=False``): views 0-4 are the top-left,
    top-right, bottom-left, bottom-right corners and the centre of the image; views 5-9 are the same
    five crops taken from the horizontally mirrored image, so view 5 (mirrored image's top-left) is the
    mirror of view 1 (top-right), 6 of 0, 7 of 3, 8 of 2, and 9 the mirrored centre.
    """
    e = size - crop
    c = _center_offset(size, crop)
    five = [(0, 0), (0, e), (e, 0), (e, e), (c, c)]
    # a crop at column ox of the mirrored image is the mirror of the crop at column e - ox of the image
    oy = [y for y, _ in five] * 2
    ox = [x for _, x in five] + [e - x for _, x in five]
    flip = [False] * 5 + [True] * 5
    return oy, ox, flip


def ten_views(
    images_u8: torch.Tensor,
    mean: torch.Tensor,
    crop: int = 224,
    dtype: torch.dtype = torch.float32,
    input_scale: float = 1.0,
) -> torch.Tensor:
    """The paper's 10 test patches of each image: (B * 10, 3, crop, crop), times ``input_scale``.

    Rows ``10 * b .. 10 * b + 9`` belong to image ``b``, in the order of ``ten_view_offsets``: four
    corners (top-left, top-right, bottom-left, bottom-right) and the centre, then the same five crops
    of the mirrored image (exactly ``torchvision.transforms.v2.functional.ten_crop(image - mean)``).
    Average the softmax over ``out.view(B, 10, ...)``.
    """
    size = _check_images(images_u8, crop)
    x = _fixed_views(images_u8, mean, crop, *ten_view_offsets(size, crop), _compute_dtype(dtype))
    return _finish(x, input_scale, dtype)


def views(
    images_u8: torch.Tensor,
    mean: torch.Tensor,
    crop: int = 224,
    n_crops: int = 1,
    dtype: torch.dtype = torch.float32,
    input_scale: float = 1.0,
) -> torch.Tensor:
    """Test views: ``n_crops = 1`` gives ``center_view`` (B, ...), ``10`` gives ``ten_views`` (B * 10, ...)."""
    if n_crops == 1:
        return center_view(images_u8, mean, crop, dtype, input_scale)
    if n_crops == 10:
        return ten_views(images_u8, mean, crop, dtype, input_scale)
    raise ConfigError(f"n_crops must be 1 or 10, not {n_crops!r}")
