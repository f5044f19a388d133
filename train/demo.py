"""A procedural road-photo dataset, so the whole pipeline runs offline with no data of one's own.

The images are synthetic: asphalt texture seen from a dashcam-like angle. Potholes are irregular
dark hollows with a lighter broken rim and a shadowed side. Normal road carries the things a
pothole classifier must not fire on: cracks, lane markings, patches and cast shadows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pothole_edge.fileio import atomic_write

SIZE = 256


def _asphalt(rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(70, 130)
    img = np.full((SIZE, SIZE), base, np.float32)
    for scale, amp in ((4, 14), (16, 10), (64, 6)):
        coarse = rng.normal(0, amp, (SIZE // scale + 1, SIZE // scale + 1)).astype(np.float32)
        img += np.asarray(Image.fromarray(coarse, mode="F").resize((SIZE, SIZE), Image.BILINEAR))
    img += rng.normal(0, 9, (SIZE, SIZE))  # aggregate grain
    img *= np.linspace(0.85, 1.1, SIZE)[:, None]  # farther road is hazier
    tint = rng.uniform(0.95, 1.05, 3)
    return np.clip(img[..., None] * tint, 0, 255)


def _blob(
    rng: np.random.Generator, cx: float, cy: float, r: float, squash: float, points: int = 28
) -> list[tuple[float, float]]:
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    radius = r * (1 + 0.25 * np.convolve(rng.normal(0, 1, points), np.ones(3) / 3, "same"))
    return [(cx + rr * np.cos(a), cy + rr * np.sin(a) * squash) for a, rr in zip(angles, radius)]


def _shade(img: np.ndarray, mask: Image.Image, factor: float, blur: float) -> np.ndarray:
    m = np.asarray(mask.filter(ImageFilter.GaussianBlur(blur)), np.float32)[..., None] / 255
    return img * (1 - m) + img * factor * m


def _lane(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mask = Image.new("L", (SIZE, SIZE))
    x0, x1 = rng.uniform(40, 216), rng.uniform(0, 256)
    dashed = rng.random() < 0.5
    for y in range(0, SIZE, 32 if dashed else SIZE):
        t0, t1 = y / SIZE, min(y + (18 if dashed else SIZE), SIZE) / SIZE
        ImageDraw.Draw(mask).line(
            [(x0 + (x1 - x0) * t0, y), (x0 + (x1 - x0) * t1, y + (18 if dashed else SIZE))],
            fill=255,
            width=int(rng.integers(5, 10)),
        )
    m = np.asarray(mask.filter(ImageFilter.GaussianBlur(1)), np.float32)[..., None] / 255
    paint = np.array([235, 235, 225] if rng.random() < 0.7 else [230, 200, 60], np.float32)
    return img * (1 - 0.8 * m) + paint * 0.8 * m


def _crack(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mask = Image.new("L", (SIZE, SIZE))
    draw = ImageDraw.Draw(mask)
    p = rng.uniform(0, SIZE, 2)
    heading = rng.uniform(0, 2 * np.pi)
    for _ in range(int(rng.integers(15, 40))):
        heading += rng.normal(0, 0.5)
        q = p + rng.uniform(4, 12) * np.array([np.cos(heading), np.sin(heading)])
        draw.line([tuple(p), tuple(q)], fill=255, width=int(rng.integers(1, 3)))
        p = q
    return _shade(img, mask, 0.45, 0.6)


def _shadow(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mask = Image.new("L", (SIZE, SIZE))
    pts = [tuple(rng.uniform(-60, SIZE + 60, 2)) for _ in range(int(rng.integers(3, 6)))]
    ImageDraw.Draw(mask).polygon(pts, fill=255)
    return _shade(img, mask, rng.uniform(0.5, 0.75), 6)


def _patch(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mask = Image.new("L", (SIZE, SIZE))
    x, y = rng.uniform(20, 180, 2)
    ImageDraw.Draw(mask).rectangle([x, y, x + rng.uniform(30, 80), y + rng.uniform(20, 60)], fill=255)
    return _shade(img, mask, rng.uniform(0.8, 1.15), 1)


def _pothole(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cx, cy = rng.uniform(50, 206), rng.uniform(90, 220)
    r = rng.uniform(18, 48)
    squash = rng.uniform(0.45, 0.8)  # seen at an angle
    outline = _blob(rng, cx, cy, r, squash)
    rim, hole, shadow = (Image.new("L", (SIZE, SIZE)) for _ in range(3))
    ImageDraw.Draw(rim).polygon(_blob(rng, cx, cy, r * 1.18, squash), fill=255)
    ImageDraw.Draw(hole).polygon(outline, fill=255)
    ImageDraw.Draw(shadow).polygon(_blob(rng, cx, cy - r * 0.25 * squash, r * 0.8, squash * 0.8), fill=255)
    img = _shade(img, rim, rng.uniform(1.15, 1.35), 2)  # broken, lighter edge
    img = _shade(img, hole, rng.uniform(0.35, 0.55), 1.5)
    img = _shade(img, shadow, 0.6, 3)  # far wall casts into the hollow
    m = np.asarray(hole, np.float32)[..., None] / 255
    img = img + m * rng.normal(0, 18, (SIZE, SIZE, 1))  # gravel at the bottom
    if rng.random() < 0.3:  # standing water reflects the sky
        water = Image.new("L", (SIZE, SIZE))
        ImageDraw.Draw(water).polygon(_blob(rng, cx, cy + r * 0.1, r * 0.6, squash * 0.7), fill=255)
        wm = np.asarray(water.filter(ImageFilter.GaussianBlur(2)), np.float32)[..., None] / 255
        img = img * (1 - 0.6 * wm) + np.array([150, 160, 175], np.float32) * 0.6 * wm
    return img


def render(positive: bool, rng: np.random.Generator) -> Image.Image:
    img = _asphalt(rng)
    for _ in range(int(rng.integers(0, 3))):
        img = _crack(img, rng)
    if rng.random() < 0.5:
        img = _lane(img, rng)
    if rng.random() < 0.3:
        img = _patch(img, rng)
    if rng.random() < 0.4:
        img = _shadow(img, rng)
    if positive:
        for _ in range(int(rng.integers(1, 3))):
            img = _pothole(img, rng)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_dataset(root: str | Path, per_class: int = 100, seed: int = 0) -> Path:
    """Write `per_class` images into root/normal and root/pothole; existing files are kept."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for label, name in ((False, "normal"), (True, "pothole")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = render(label, rng)
            path = root / name / f"{name}_{i:04d}.jpg"
            if not path.exists():
                atomic_write(path, lambda tmp, img=img: img.save(tmp, format="JPEG", quality=90))
    return root
