"""How much the edge's OpenCV path (decode, BGR, cv2 resize) changes labels against training's PIL path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def compare_decoders(session: Any, paths: Sequence[Path], pil_inputs: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    """Run both paths' inputs through the same session; report label flips and probability drift."""
    from edge.preprocess import read_image, to_input
    from export.ort import predict

    frames = [read_image(str(p)) for p in paths]
    unreadable = [str(p) for p, f in zip(paths, frames) if f is None]
    keep = [i for i, f in enumerate(frames) if f is not None]
    cv_inputs = np.stack([to_input(frames[i], meta["preprocess"]) for i in keep])
    pos, t = meta["positive_index"], meta["threshold"]
    p_pil = predict(session, pil_inputs[keep], pos)
    p_cv = predict(session, cv_inputs, pos)
    flips = (p_pil >= t) != (p_cv >= t)
    return {
        "n": len(keep),
        "unreadable_by_opencv": unreadable,
        "label_differences": int(flips.sum()),
        "label_difference_rate": float(flips.mean()) if keep else 0.0,
        "max_abs_prob_diff": float(np.abs(p_pil - p_cv).max(initial=0)),
        "mean_abs_pixel_diff": float(np.abs(pil_inputs[keep].astype(np.int16) - cv_inputs).mean()) if keep else 0.0,
        "target_rate": 0.005,
    }
