"""Images in: decode any photo to RGB (EXIF orientation applied), rescale and centre-crop it; and the
store's own JPEGs, out and back in.

Routes: JPEG, PNG, GIF and WEBP through torchvision (libjpeg-turbo, libpng, ...); through PIL
what torchvision does not do or does differently between versions: CMYK/YCCK JPEGs (PIL inverts
Adobe CMYK correctly), JPEGs cut short (PIL rejects them), BMP, TIFF and anything unrecognised. A
PNG named ``.JPEG`` (ImageNet has one) is recognised by its signature. Grayscale comes out as three
equal channels, alpha is dropped, 16-bit is scaled to 8 bits, an animated GIF gives its first
frame. The EXIF orientation tag, when present, is applied (torchvision for JPEG and PNG, PIL's
``exif_transpose`` otherwise), so that a photo stands the way its camera meant.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
import torch

from alexnet.errors import DataError

__all__ = ["BadImage", "decode_bytes", "decode_image_file", "resize_center_crop", "load_image", "read_photo",
           "encode_store_jpeg", "OPTIMIZE_HUFFMAN", "decode_store_jpeg", "store_jpeg_decoder", "CPU_DECODERS", "TV_CODEC_DEPRECATION"]

# torchvision 0.29 announces the removal of its image codecs (present up to 0.29, which is what
# pyproject allows). Only this one message is silenced.
TV_CODEC_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"


class BadImage(Exception):
    """An image file that cannot be decoded; ``str(e)`` is the problem, for the user."""


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _sniff(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _jpeg_components(data: bytes) -> int | None:
    """Number of colour components in the JPEG frame header (4 = CMYK/YCCK), None if not found."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            i += 1
            continue
        m = data[i + 1]
        if m == 0xFF:
            i += 1
            continue
        if m in _SOF:
            return data[i + 9] if i + 9 < n else None
        if m in (0x01, 0xD8) or 0xD0 <= m <= 0xD7:
            i += 2
            continue
        if m in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _pil_array(im) -> np.ndarray:
    from PIL import ImageOps

    im.load()
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale: scale, not clip
        a = np.asarray(im, dtype=np.int64)
        a = np.clip(a >> 8 if a.max() > 255 else a, 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def _pil_decode(data: bytes) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage("not an image (format not recognised)") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"image too large ({e})") from None
    except Exception as e:
        raise BadImage(f"truncated or corrupt image data ({str(e) or type(e).__name__})") from None
    try:
        arr = _pil_array(im)
    except Image.DecompressionBombError as e:
        raise BadImage(f"image too large ({e})") from None
    except Exception as e:
        raise BadImage(f"truncated or corrupt image data ({str(e) or type(e).__name__})") from None
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)


def _torchvision_decode(data: bytes, kind: str) -> torch.Tensor | None:
    """torchvision's decoding, or None where it fails (PIL then decodes or names the problem)."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                               apply_exif_orientation=kind in ("jpeg", "png"))
    except Exception:
        return None
    if img.ndim == 4:  # animated GIF: first frame
        img = img[0]
    if img.dtype != torch.uint8:  # 16-bit PNG
        img = (img.to(torch.int32) >> 8).to(torch.uint8)
    return img


def decode_bytes(data: bytes) -> torch.Tensor:
    """Decode image bytes to a uint8 RGB tensor (3,H,W), EXIF orientation applied; raises BadImage."""
    if len(data) == 0:
        raise BadImage("empty file (0 bytes)")
    kind = _sniff(data)
    use_pil = kind is None  # BMP, TIFF, ... and anything unknown: PIL says what it is
    if kind == "jpeg":
        # CMYK/YCCK: PIL (torchvision's handling differs between versions). A JPEG that does not
        # end with the end-of-image marker is checked by PIL, which rejects truncated data.
        if _jpeg_components(data) == 4 or not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
            use_pil = True
    if not use_pil:
        img = _torchvision_decode(data, kind)
        if img is not None:
            return img
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _pil_decode(data)


def decode_image_file(path) -> torch.Tensor:
    """Decode an image file to uint8 RGB (3,H,W); raises :class:`BadImage` with the problem."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadImage(f"cannot be read ({e.strerror or e})") from None
    return decode_bytes(data)


def resize_center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Rescale the short side to ``size`` (antialiased bilinear) and keep the central square.

    Same geometry as ``torchvision.transforms.v2.functional.resize(img, size)`` followed by
    ``center_crop(img, size)``. Returns uint8 (3,size,size).
    """
    h, w = img.shape[-2:]
    if min(h, w) != size:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2.functional import resize

        if h <= w:
            nh, nw = size, int(size * w / h)
        else:
            nh, nw = int(size * h / w), size
        img = resize(img, [nh, nw], interpolation=InterpolationMode.BILINEAR, antialias=True)
        h, w = nh, nw
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img[:, top : top + size, left : left + size]


def load_image(path, size: int) -> np.ndarray:
    """Decode (EXIF orientation applied), rescale and centre-crop one image: uint8 (size,size,3) HWC.

    Raises :class:`BadImage` with the problem (``predict`` and ``prepare`` add the file name)."""
    img = resize_center_crop(decode_image_file(path), size)
    return np.ascontiguousarray(img.permute(1, 2, 0).numpy())


def read_photo(path, size: int) -> np.ndarray:
    """:func:`load_image` for one photo a user names (``predict``): a bad file is a one-line
    DataError naming it."""
    try:
        return load_image(path, size)
    except BadImage as e:
        raise DataError(path, str(e)) from None


# ---------------------------------------------------------------------------- the store's JPEGs


# The store's JPEGs carry Huffman tables optimised for each image (libjpeg's ``optimize_coding``: a
# second pass over the coefficients). Lossless: the same pixels as the standard tables (tested), about 3%
# fewer bytes and less entropy decoding, which dominates at 20 kB an image (docs/notes-data.md).
OPTIMIZE_HUFFMAN = True


def encode_store_jpeg(img_hwc: np.ndarray, quality: int, optimize: bool | None = None) -> bytes:
    """One uint8 (S,S,3) image as a baseline JPEG of ``quality`` (libjpeg-turbo, 4:2:0 chroma).
    ``optimize`` (None: :data:`OPTIMIZE_HUFFMAN`): Huffman tables made for the image (through PIL)
    rather than the standard ones (through torchvision); the decoded pixels are the same."""
    if optimize is None:
        optimize = OPTIMIZE_HUFFMAN
    if optimize:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img_hwc)).save(buf, "JPEG", quality=quality, subsampling=2, optimize=True)
        return buf.getvalue()
    from torchvision.io import encode_jpeg

    chw = torch.from_numpy(np.ascontiguousarray(img_hwc)).permute(2, 0, 1).contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return encode_jpeg(chw, quality=quality).numpy().tobytes()


def _one_line(e: Exception) -> str:
    """torchvision's message without its C++ source location, on one line."""
    text = re.sub(r"^\w+, \S+:\d+, ", "", " ".join((str(e) or type(e).__name__).split()))
    return text[:200]


def decode_store_jpeg(data: torch.Tensor, size: int, path, index: int) -> torch.Tensor:
    """Image ``index`` of a store's JPEG file as uint8 (S,S,3) HWC (a view, no copy).

    ``data``: its bytes as a 1-D uint8 tensor. Raises a one-line DataError naming the store file
    and the image. torchvision returns (3,S,S) as a permuted view of HWC data, so the permute back
    costs nothing.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=TV_CODEC_DEPRECATION, category=DeprecationWarning)
            img = decode_jpeg(data, mode=ImageReadMode.RGB)
    except Exception as e:
        raise DataError(path, f"image {index} cannot be decoded ({_one_line(e)}); prepare the data again") from None
    if tuple(img.shape) != (3, size, size):
        raise DataError(path, f"image {index} is {tuple(img.shape)}, expected (3, {size}, {size}); "
                              "prepare the data again")
    return img.permute(1, 2, 0)


CPU_DECODERS = ("auto", "simplejpeg", "torchvision")


def _simplejpeg():
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def store_jpeg_decoder(name: str = "auto"):
    """``(name, decode_into)``: the CPU decoder the loader's workers use for the store's JPEGs.
    ``decode_into(data, out, path, index)`` decodes ``data`` (bytes-like) into ``out``, a writable
    uint8 (S,S,3) array, or raises a one-line DataError naming the store file and the image.

    ``simplejpeg`` (libjpeg-turbo, as torchvision; the same pixels, tested) decodes straight into
    ``out`` with less overhead per call: 1.2x the images/s of a worker on one core (notes-data.md).
    ``auto``: simplejpeg when installed (a dependency of this package), else torchvision."""
    if name not in CPU_DECODERS:
        raise ValueError(f"unknown CPU decoder {name!r}: {', '.join(CPU_DECODERS)}")
    sj = _simplejpeg() if name != "torchvision" else None
    if name == "simplejpeg" and sj is None:
        raise RuntimeError("simplejpeg is not installed: pip install simplejpeg")
    if sj is None:
        def decode_into(data, out: np.ndarray, path, index: int) -> None:
            t = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())  # ~20 kB; a writable copy
            out[...] = decode_store_jpeg(t, out.shape[0], path, index).numpy()

        return "torchvision", decode_into

    def decode_into(data, out: np.ndarray, path, index: int) -> None:
        size = out.shape[0]
        try:
            height, width, _, _ = sj.decode_jpeg_header(data)
            if (height, width) != (size, size):
                raise DataError(path, f"image {index} is {height}x{width}, expected {size}x{size}; "
                                      "prepare the data again")
            sj.decode_jpeg(data, colorspace="RGB", buffer=out)
        except DataError:
            raise
        except Exception as e:
            text = " ".join((str(e) or type(e).__name__).split())[:200]
            raise DataError(path, f"image {index} cannot be decoded ({text}); prepare the data again") from None

    return "simplejpeg", decode_into
