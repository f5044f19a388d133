"""Copy-paste: a pothole cut from one training frame's box, blended into a tile of a frame without one.

A frame label ties each pothole to its own road, light and camera. Pasting the surveyed potholes onto other
frames' pavement (the cracks and patches the model confused with a pothole among them) shows the same pothole
on many roads, and the same cracks with and without a pothole, which is what a new road asks of the model.
The pothole keeps the pixel scale of the frame it came from (jittered), its edge is feathered and its
brightness matched to the pavement around it, and the tile's augmentation runs after the paste, so blur,
noise and JPEG cover the seam as they cover the rest.
"""

from __future__ import annotations

import numpy as np

from pothole_edge.train.data import Box
from pothole_edge.train.tiles import SCALE_JITTER

MARGIN = 0.3  # pavement kept around the box on each side, as a share of its size, for the feathered edge


def paste(tile: np.ndarray, donor: np.ndarray, box: Box, scale: float, seed: int) -> np.ndarray:
    """`tile` (crop x crop RGB) with the pothole inside `box` of `donor` blended in at a random place.

    `scale` is the tile's pixels per host-frame pixel; the pothole is resized by it (jittered), so it
    keeps the size it had in its own frame when the two frames share a camera.
    """
    import cv2

    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = box
    bw, bh = max(1, x1 - x0), max(1, y1 - y0)
    mx, my = MARGIN * bw, MARGIN * bh
    h, w = donor.shape[:2]
    px0, py0 = int(max(0, x0 - mx)), int(max(0, y0 - my))
    px1, py1 = int(min(w, x1 + mx)), int(min(h, y1 + my))
    patch = donor[py0:py1, px0:px1]
    side = tile.shape[0]
    f = scale * rng.uniform(*SCALE_JITTER)
    f = min(f, 0.6 * side / max(patch.shape[:2]))  # a pothole larger than the tile would hide the pavement
    pw, ph = max(3, int(round(patch.shape[1] * f))), max(3, int(round(patch.shape[0] * f)))
    patch = cv2.resize(patch, (pw, ph), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    ox, oy = int(rng.integers(0, side - pw + 1)), int(rng.integers(0, side - ph + 1))
    alpha = _feathered_ellipse(pw, ph, (x0 - px0) * f, (y0 - py0) * f, bw * f, bh * f)
    host = tile[oy : oy + ph, ox : ox + pw].astype(np.float32)
    p = patch.astype(np.float32)
    # the pavement around the pothole takes the host's brightness, so no bright or dark square shows
    ring = alpha < 0.5
    if ring.any():
        gain = np.clip(host[ring].mean(axis=0) / np.maximum(p[ring].mean(axis=0), 1.0), 0.7, 1.4)
        p *= gain
    a = alpha[..., None]
    out = tile.copy()
    out[oy : oy + ph, ox : ox + pw] = np.clip(a * p + (1 - a) * host + 0.5, 0, 255).astype(np.uint8)
    return out


def _feathered_ellipse(w: int, h: int, bx: float, by: float, bw: float, bh: float) -> np.ndarray:
    """1 over the box's ellipse (grown a little, since boxes are tight), falling to 0 inside the margin, so
    the patch's own edge never shows."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = bx + bw / 2, by + bh / 2
    r = np.sqrt(((xx + 0.5 - cx) / (0.55 * bw + 0.5)) ** 2 + ((yy + 0.5 - cy) / (0.55 * bh + 0.5)) ** 2)
    # the margin ends at 0.8 of the box's size from its centre, r = 1.45: the blend is 0 from r = 1.4
    return np.clip((1.4 - r) / 0.4, 0.0, 1.0)
