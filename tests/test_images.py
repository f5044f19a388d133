"""The one still-image decoder: content decides the format, odd modes become RGB, untrusted files meet limits."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pothole_edge import images
from pothole_edge.images import ImageDecodeError, read_rgb


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> Path:
    img.save(path, format=fmt, **kw)
    return path


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF", "BMP"])
def test_content_not_extension_decides(tmp_path, fmt):
    a = read_rgb(_save(Image.new("RGB", (20, 10), (200, 30, 30)), tmp_path / "really_not_a.jpg", fmt))
    assert a.shape == (10, 20, 3) and a.dtype == np.uint8 and a[5, 5, 0] > 150


def test_rgba_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    img.putpixel((0, 0), (10, 20, 30, 255))
    a = read_rgb(_save(img, tmp_path / "a.jpg", "PNG"))
    assert a[4, 4].tolist() == [255, 255, 255] and a[0, 0].tolist() == [10, 20, 30]


def test_palette_and_grey_become_rgb(tmp_path):
    pal = Image.new("RGB", (8, 8), (0, 128, 255)).convert("P")
    assert read_rgb(_save(pal, tmp_path / "p.png", "PNG")).shape == (8, 8, 3)
    a = read_rgb(_save(Image.new("L", (8, 8), 77), tmp_path / "g.jpg", "PNG"))
    assert a[1, 1].tolist() == [77, 77, 77]


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    assert read_rgb(_save(Image.new("RGB", (40, 20)), tmp_path / "o.jpg", "JPEG", exif=exif)).shape == (40, 20, 3)


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_unreadable_files_raise(tmp_path, content):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        full = tmp_path / "full.jpg"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
        content = full.read_bytes()[: full.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError):
        read_rgb(path)


def test_pipes_devices_and_bombs_are_refused_without_reading(tmp_path, monkeypatch):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening it to read would block forever
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        read_rgb(fifo)
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        read_rgb(tmp_path / "zero.jpg")
    big = _save(Image.new("L", (300, 300)), tmp_path / "big.png", "PNG")
    monkeypatch.setattr(images, "MAX_PIXELS", 300 * 300 - 1)
    with pytest.raises(ImageDecodeError, match="pixel limit"):
        read_rgb(big)
    monkeypatch.setattr(images, "MAX_BYTES", 10)
    with pytest.raises(ImageDecodeError, match="byte limit"):
        read_rgb(big)
