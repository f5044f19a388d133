"""The model's view of a frame: a region, cut into square tiles at one or more scales.

Each grid level [cols, rows] covers the region with square footprints: a 1x1 level is the centre
square (the classic whole-image view), a finer level tiles the region with at least `overlap`
between neighbours. Every footprint is resized so its side is `preprocess.resize`, then its centre
`preprocess.crop` square is the model's input, exactly as torchvision's Resize + CenterCrop does
for one image. A frame's probability pools its tiles' probabilities.

This is the only implementation; training, pt-eval, the parity gate, edge-run and pt-bench call it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def region_px(spec_view: dict[str, Any], width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = spec_view["region"]
    left, top = int(round(x0 * width)), int(round(y0 * height))
    return left, top, max(left + 1, int(round(x1 * width))), max(top + 1, int(round(y1 * height)))


def level_side(cols: int, rows: int, overlap: float, width: float, height: float) -> float:
    """The side of one level's square footprints in a width x height region."""
    if cols == rows == 1:
        return min(width, height)
    side = max(width / (cols - (cols - 1) * overlap), height / (rows - (rows - 1) * overlap))
    return min(side, width, height)


def footprints(spec_view: dict[str, Any], width: int, height: int) -> list[tuple[int, float, float, float]]:
    """(level, x, y, side) of every tile's square footprint, in frame pixels, level by level."""
    left, top, right, bottom = region_px(spec_view, width, height)
    w, h = right - left, bottom - top
    out = []
    for level, (cols, rows) in enumerate(spec_view["grids"]):
        side = level_side(cols, rows, spec_view["overlap"], w, h)
        for r in range(rows):
            for c in range(cols):
                x = left + (c * (w - side) / (cols - 1) if cols > 1 else (w - side) / 2)
                y = top + (r * (h - side) / (rows - 1) if rows > 1 else (h - side) / 2)
                out.append((level, x, y, side))
    return out


def tile_count(spec_view: dict[str, Any]) -> int:
    return sum(c * r for c, r in spec_view["grids"])


def pool(probs: np.ndarray, spec_view: dict[str, Any]) -> tuple[float, int]:
    """A frame's probability from its tiles' and the index of its hottest tile, the one reported.

    max: the hottest tile alone. top2: the mean of the two hottest, so one tile on cracks cannot
    decide a frame alone; a pothole is seen by a small tile and the wide one, or two overlapping.
    """
    i = int(np.argmax(probs))
    if spec_view["pool"] == "max" or len(probs) == 1:
        return float(probs[i]), i
    if spec_view["pool"] == "top2":
        return float(np.partition(probs, len(probs) - 2)[-2:].mean()), i
    raise ValueError(f"unknown pool {spec_view['pool']!r}")


def boxes_overlap(a: tuple[float, ...] | np.ndarray, b: tuple[float, ...] | np.ndarray) -> bool:
    """Whether two x0, y0, x1, y1 boxes share any area."""
    return bool(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])
