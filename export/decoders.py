"""How much OpenCV's JPEG decoder (what a camera's MJPEG or a cv2 pipeline uses) changes labels against
PIL's, which every still image goes through. The tiles come from the same view code either way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pothole_edge import preprocess
from pothole_edge import view as views
from pothole_edge.images import ImageDecodeError, read_file


def opencv_rgb(path: Path) -> np.ndarray | None:
    import cv2

    try:
        data = np.frombuffer(read_file(path), np.uint8)
    except ImageDecodeError:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def compare_decoders(
    probs: Callable[[np.ndarray], np.ndarray], paths: Sequence[Path], pil_tiles: np.ndarray, spec: dict[str, Any]
) -> dict[str, Any]:
    """Run both decoders' tiles through the same model; report frame label flips and probability drift."""
    threshold = spec["threshold"]
    keep, cv_tiles = [], []
    for i, p in enumerate(paths):
        image = opencv_rgb(p)
        if image is not None:
            keep.append(i)
            cv_tiles.append(preprocess.tiles(image, spec)[0])
    unreadable = [str(paths[i]) for i in range(len(paths)) if i not in set(keep)]
    if not keep:
        return {"n": 0, "unreadable_by_opencv": unreadable}
    pil, cv = pil_tiles[keep], np.stack(cv_tiles)
    n = pil.shape[1]
    p_pil = probs(pil.reshape(-1, *pil.shape[2:])).reshape(-1, n)
    p_cv = probs(cv.reshape(-1, *cv.shape[2:])).reshape(-1, n)
    f_pil = np.array([views.pool(r, spec["view"])[0] for r in p_pil])
    f_cv = np.array([views.pool(r, spec["view"])[0] for r in p_cv])
    flips = (f_pil >= threshold) != (f_cv >= threshold)
    return {
        "n": len(keep),
        "unreadable_by_opencv": unreadable,
        "label_differences": int(flips.sum()),
        "label_difference_rate": float(flips.mean()),
        "max_abs_prob_diff": float(np.abs(f_pil - f_cv).max(initial=0)),
        "mean_abs_pixel_diff": float(np.abs(pil.astype(np.int16) - cv).mean()),
        "target_rate": 0.005,
    }
