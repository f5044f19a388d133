"""A threshold from the score distribution of unlabelled frames of one road and camera.

On a surveyed road potholes are rare, so nearly every frame is a negative, and the share of frames
that score at or above a threshold is, nearly, its false-alarm rate there. The threshold for a
budget of `max_fpr` false alarms is therefore an upper quantile of those frames' scores; a known
share of pothole frames among them (`pothole_share`) is added to the share allowed above it.
pt-calibrate and the cross-validation's replay of it both call this one function.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pothole_edge.errors import UsageError


def frames_needed(max_fpr: float) -> int:
    """The fewest frames in which one false alarm is a rate of at most `max_fpr`."""
    return math.ceil(1 / max_fpr - 1e-9)


def threshold_for_budget(
    scores: np.ndarray, max_fpr: float, pothole_share: float = 0.0
) -> tuple[float, dict[str, Any]]:
    """The lowest threshold that flags at most (max_fpr + pothole_share) of `scores`, and what it rests on.

    Raises UsageError when there are too few frames to resolve the budget: with n frames the
    smallest rate that can be told from zero is 1/n.
    """
    scores = np.asarray(scores, dtype=float)
    if not (0 < max_fpr < 1) or not (0 <= pothole_share < 1) or max_fpr + pothole_share >= 1:
        raise UsageError(f"--max-fpr ({max_fpr:g}) and --pothole-share ({pothole_share:g}) must leave room below 1")
    scores = scores[np.isfinite(scores)]
    n = scores.size
    if n < frames_needed(max_fpr):
        raise UsageError(
            f"{n} frame(s) cannot resolve a false-alarm rate of {max_fpr:g} (one false alarm is already "
            f"{1 / max(n, 1):.3g}); give at least {frames_needed(max_fpr)} frames"
        )
    allowed = int(math.floor(n * (max_fpr + pothole_share) + 1e-9))
    ranked = np.sort(scores)[::-1]
    # the threshold sits between two distinct scores, so ties fall on one side together
    while 0 < allowed < n and ranked[allowed - 1] == ranked[allowed]:
        allowed -= 1
    above = ranked[allowed - 1] if allowed > 0 else 1.0
    below = ranked[allowed] if allowed < n else 0.0
    threshold = float((above + below) / 2) if allowed > 0 else float(min(1.0, (ranked[0] + 1.0) / 2))
    flagged = float((scores >= threshold).mean())
    return threshold, {
        "frames": int(n),
        "max_fpr": float(max_fpr),
        "pothole_share": float(pothole_share),
        "flagged_share": flagged,
        "quantile": 1 - (max_fpr + pothole_share),
        "score_percentiles": {str(q): float(np.percentile(scores, q)) for q in (50, 90, 95, 98, 99)},
    }
