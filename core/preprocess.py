"""Frames to model inputs with OpenCV, following the spec's preprocessing and view.

Frames are RGB uint8 arrays (H, W, 3) everywhere in pothole-edge; video readers convert from
OpenCV's BGR once. Scaling, normalisation and layout happen inside the ONNX graph (and in
`Deployable` for PyTorch), so inputs stay uint8 NHWC RGB.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pothole_edge import view as views


def _interpolation(name: str, shrinking: bool) -> int:
    import cv2

    if shrinking:
        return cv2.INTER_AREA  # OpenCV's antialiased downscale, the nearest match to PIL's filters
    return cv2.INTER_CUBIC if name == "bicubic" else cv2.INTER_LINEAR


def resize(image: np.ndarray, width: int, height: int, interpolation: str) -> np.ndarray:
    import cv2

    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrinking = width < image.shape[1] or height < image.shape[0]
    return cv2.resize(image, (width, height), interpolation=_interpolation(interpolation, shrinking))


def cut(image: np.ndarray, x: float, y: float, side: float, prep: dict[str, Any]) -> np.ndarray:
    """One square footprint (x, y, side) as a model input: resized to `resize`, centre `crop` kept."""
    h, w = image.shape[:2]
    x0, y0 = int(round(max(0.0, x))), int(round(max(0.0, y)))
    x1, y1 = min(w, max(x0 + 1, int(round(x + side)))), min(h, max(y0 + 1, int(round(y + side))))
    size, crop = prep["resize"], prep["crop"]
    patch = resize(image[y0:y1, x0:x1], size, size, prep["interpolation"])
    o = (size - crop) // 2
    return np.ascontiguousarray(patch[o : o + crop, o : o + crop])


def tiles(
    image: np.ndarray, spec: dict[str, Any], region: tuple[float, float, float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every tile of the spec's view as one uint8 batch (N, crop, crop, 3), and what each tile saw.

    Each grid level resizes the region once, so overlapping tiles share that work; the boxes are
    the (x0, y0, x1, y1) frame pixels of each tile's input. `region` overrides the view's region.
    """
    prep, v = spec["preprocess"], dict(spec["view"])
    if region is not None:
        v["region"] = list(region)
    h, w = image.shape[:2]
    left, top, right, bottom = views.region_px(v, w, h)
    area = image[top:bottom, left:right]
    rw, rh = right - left, bottom - top
    size, crop = prep["resize"], prep["crop"]
    o = (size - crop) // 2
    batch = np.empty((views.tile_count(v), crop, crop, 3), np.uint8)
    boxes = np.empty((len(batch), 4), np.float64)
    i = 0
    for cols, rows in v["grids"]:
        side = views.level_side(cols, rows, v["overlap"], rw, rh)
        f = size / side
        # the whole region at this level's scale; footprints become slices of it
        sw, sh = max(size, int(round(rw * f))), max(size, int(round(rh * f)))
        scaled = resize(area, sw, sh, prep["interpolation"])
        for r in range(rows):
            for c in range(cols):
                sx = int(round(c * (sw - size) / (cols - 1))) if cols > 1 else (sw - size) // 2
                sy = int(round(r * (sh - size) / (rows - 1))) if rows > 1 else (sh - size) // 2
                batch[i] = scaled[sy + o : sy + o + crop, sx + o : sx + o + crop]
                boxes[i] = (
                    left + (sx + o) * rw / sw,
                    top + (sy + o) * rh / sh,
                    left + (sx + o + crop) * rw / sw,
                    top + (sy + o + crop) * rh / sh,
                )
                i += 1
    return batch, boxes
