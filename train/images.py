"""Decode a photo by its content, whatever its extension says, into an upright RGB image."""

from __future__ import annotations

import os
import warnings

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# A truncated file must fail loudly here rather than train on grey padding.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageDecodeError(Exception):
    """The file is not a readable image (empty, truncated, corrupt or not an image at all)."""


def decode_image(path: str | os.PathLike) -> Image.Image:
    """Open `path` as RGB with EXIF orientation applied.

    Alpha is composited over white, so transparent padding (common in web images) reads as a
    light background instead of the black that a plain convert would give.
    """
    try:
        if os.path.getsize(path) == 0:
            raise ImageDecodeError("empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about odd EXIF and palette transparency
            with Image.open(path) as im:
                im.seek(0)  # first frame of a GIF or animated WEBP
                im.load()
                im = ImageOps.exif_transpose(im)
                return _to_rgb(im)
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(str(e) or type(e).__name__) from None


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
