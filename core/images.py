"""Decode a photo by its content, whatever its extension says, into an upright RGB array.

The one still-image decoder: training, evaluation, the export's proof and edge-run's image
folders all read files through it, so a photo gives the same pixels everywhere. Untrusted files
meet limits first: regular files only, at most MAX_BYTES on disk and MAX_PIXELS decoded, and a
truncated file is an error rather than an image padded with grey.
"""

from __future__ import annotations

import io
import os
import stat
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False
MAX_BYTES = 256 * 1024 * 1024
MAX_PIXELS = 64_000_000  # 8K x 8K: past this a file is a decompression bomb, not a road photo


class ImageDecodeError(Exception):
    """The file is not a readable image (empty, truncated, corrupt, too large or not a regular file)."""


def read_file(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """A regular file's bytes; FIFOs, devices and oversized files are refused without reading them."""
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    try:
        with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK)) as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ImageDecodeError("not a regular file")
            if info.st_size > max_bytes:
                raise ImageDecodeError(f"{info.st_size} bytes, over the {max_bytes} byte limit")
            if info.st_size == 0:
                raise ImageDecodeError("empty file")
            return f.read(max_bytes + 1)
    except OSError as e:
        raise ImageDecodeError(e.strerror or str(e)) from None


def decode(data: bytes) -> np.ndarray:
    """Encoded image bytes to an RGB uint8 array with EXIF orientation applied.

    Alpha is composited over white, so transparent padding (common in web images) reads as a
    light background instead of the black that a plain convert would give.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about odd EXIF and palette transparency
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageDecodeError(f"{im.width}x{im.height} pixels, over the {MAX_PIXELS} pixel limit")
                im.seek(0)  # first frame of a GIF or animated WEBP
                im.load()
                im = ImageOps.exif_transpose(im)
                return np.asarray(_to_rgb(im))
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(str(e) or type(e).__name__) from None


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """The image at `path` as RGB uint8 (H, W, 3); ImageDecodeError says why not."""
    return decode(read_file(path))


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im.copy()
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of clipping
        im = im.point(lambda v: v / 256).convert("L")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")
