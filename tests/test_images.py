from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train.images import ImageDecodeError, decode_image


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> Path:
    img.save(path, format=fmt, **kw)
    return path


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF", "BMP"])
def test_content_not_extension_decides(tmp_path, fmt):
    path = _save(Image.new("RGB", (20, 10), (200, 30, 30)), tmp_path / "really_not_a.jpg", fmt)
    im = decode_image(path)
    assert im.mode == "RGB" and im.size == (20, 10)
    assert im.getpixel((5, 5))[0] > 150


def test_rgba_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    img.putpixel((0, 0), (10, 20, 30, 255))
    im = decode_image(_save(img, tmp_path / "a.jpg", "PNG"))
    assert im.mode == "RGB"
    assert im.getpixel((4, 4)) == (255, 255, 255)
    assert im.getpixel((0, 0)) == (10, 20, 30)


def test_palette_and_grey_become_rgb(tmp_path):
    pal = Image.new("RGB", (8, 8), (0, 128, 255)).convert("P")
    grey = Image.new("L", (8, 8), 77)
    assert decode_image(_save(pal, tmp_path / "p.png", "PNG")).mode == "RGB"
    im = decode_image(_save(grey, tmp_path / "g.jpg", "PNG"))
    assert im.mode == "RGB" and im.getpixel((1, 1)) == (77, 77, 77)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im = decode_image(_save(img, tmp_path / "o.jpg", "JPEG", exif=exif))
    assert im.size == (20, 40)


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_unreadable_files_raise(tmp_path, content):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        full = tmp_path / "full.jpg"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
        content = full.read_bytes()[: full.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError):
        decode_image(path)
