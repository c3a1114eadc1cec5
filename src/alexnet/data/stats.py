"""The colour statistics of a split, exactly: the mean image and the eigen-decomposition of the 3x3
covariance of RGB pixel values (paper, section 4.1), both in the 0-255 scale.

Sums are accumulated per image in float64 (of integer values, so exact below 2**53 and the same
in any order: chunks can be added up in whatever order workers finish) and the mean image in
integers.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ColorSums", "color_stats"]


class ColorSums:
    """Running exact sums over uint8 HWC images of one size."""

    def __init__(self, size: int):
        self.sum = np.zeros((size, size, 3), dtype=np.int64)
        self._chunk = np.zeros((size, size, 3), dtype=np.uint32)  # exact for 2**24 images of 255
        self._in_chunk = 0
        self.rgb = np.zeros(3, dtype=np.float64)
        self.outer = np.zeros((3, 3), dtype=np.float64)
        self.count = 0
        self.pixels = 0

    def add(self, img: np.ndarray) -> None:
        """One uint8 (S,S,3) image."""
        # (3, pixels) in float64, per image so that the copy stays in the cache
        pix = np.ascontiguousarray(img.reshape(-1, 3).T, dtype=np.float64)
        self.rgb += pix.sum(axis=1)
        self.outer += pix @ pix.T
        np.add(self._chunk, img, out=self._chunk)
        self._in_chunk += 1
        if self._in_chunk == 1 << 24:
            self._flush()
        self.count += 1
        self.pixels += pix.shape[1]

    def _flush(self) -> None:
        self.sum += self._chunk
        self._chunk[:] = 0
        self._in_chunk = 0

    def arrays(self) -> dict:
        """The sums as arrays (for a chunk record): sum, rgb, outer, pixels."""
        self._flush()
        return {"sum": self.sum, "rgb": self.rgb, "outer": self.outer, "pixels": np.array(self.pixels)}

    def merge(self, arrays) -> None:
        """Add the sums of another accumulator (``arrays()`` or a loaded record)."""
        self._flush()
        self.sum += arrays["sum"]
        self.rgb += arrays["rgb"]
        self.outer += arrays["outer"]
        self.pixels += int(arrays["pixels"])


def color_stats(mean_sum: np.ndarray, rgb: np.ndarray, outer: np.ndarray, count: int, pixels: int):
    """Mean image (3,S,S) and the eigen-decomposition of the RGB covariance, from exact sums.

    Returns float32 (mean, eigvals descending, eigvecs as columns with their largest component
    positive)."""
    mean = (mean_sum.astype(np.float64) / max(count, 1)).transpose(2, 0, 1)
    m = rgb / max(pixels, 1)
    cov = outer / max(pixels, 1) - np.outer(m, m)
    cov = (cov + cov.T) / 2
    vals, vecs = np.linalg.eigh(cov)
    vals, vecs = vals[::-1].copy(), vecs[:, ::-1].copy()
    for j in range(3):  # deterministic sign: the largest component of each eigenvector positive
        if vecs[np.argmax(np.abs(vecs[:, j])), j] < 0:
            vecs[:, j] = -vecs[:, j]
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731 (safetensors writes raw buffers)
    return f32(mean), f32(np.maximum(vals, 0)), f32(vecs)
