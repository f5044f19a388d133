"""Classify road, not frames: one frame each time the vehicle has moved `every_m` metres, and what road that
covered.

At 100 km/h a vehicle moves 28 m a second; a camera that sees `view_depth_m` metres of road ahead needs a frame
every `view_depth_m / 2` metres for each point of road to be in two classified frames, whatever the frame rate.
The distance comes from the GPS speed at each frame, or a fixed `speed_kmh` where there is no GPS; without a
speed, every frame is taken (the distance is unknown, so nothing may be skipped).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger("edge")


class DistanceGate:
    def __init__(self, every_m: float, view_depth_m: float, speed_kmh: float | None = None) -> None:
        self.every_m, self.view_depth_m = every_m, view_depth_m
        self.fixed_mps = speed_kmh / 3.6 if speed_kmh else None
        self.prev_t: float | None = None
        self.since_m = 0.0  # road driven since the last classified frame
        self.road_m = 0.0
        self.gaps: list[float] = []  # metres between consecutive classified frames
        self.taken = self.skipped = self.unknown = 0
        self.warned = False

    def take(self, t: float | None, speed_mps: float | None) -> bool:
        """Whether this frame is classified: the first, and then each once `every_m` metres were driven."""
        speed = speed_mps if speed_mps is not None else self.fixed_mps
        if t is not None and self.prev_t is not None and speed is not None and t > self.prev_t:
            step = speed * (t - self.prev_t)
            self.since_m += step
            self.road_m += step
        if t is not None:
            self.prev_t = t
        if speed is None and self.taken:
            self.unknown += 1  # no speed: take it, the road it covers is unknown
        elif self.taken and self.since_m < self.every_m - 1e-6:  # frame times carry rounding
            self.skipped += 1
            return False
        if self.taken:
            self.gaps.append(self.since_m)
            if self.since_m > self.view_depth_m and not self.warned:
                self.warned = True  # once: summary.json counts every stretch
                log.warning(
                    "road went by unseen: %.1f m between two classified frames, more than the %.1f m the view sees; "
                    "lower --every-m, or, where classifying falls behind the vehicle, use a model with fewer tiles a "
                    "frame (pt-train --test-grids 1x1+4x3)",
                    self.since_m,
                    self.view_depth_m,
                )
        self.taken += 1
        self.since_m = 0.0
        return True

    def summary(self) -> dict[str, Any]:
        gaps = np.array(self.gaps) if self.gaps else np.zeros(0)
        # a gap longer than the view's depth leaves road that no classified frame saw
        unseen = gaps[gaps > self.view_depth_m] - self.view_depth_m
        return {
            "every_m": self.every_m,
            "view_depth_m": self.view_depth_m,
            "road_m": round(self.road_m, 1),
            "frames_classified": self.taken,
            "frames_skipped": self.skipped,
            "frames_without_speed": self.unknown,
            "gap_m_p50": round(float(np.percentile(gaps, 50)), 2) if gaps.size else None,
            "gap_m_max": round(float(gaps.max()), 2) if gaps.size else None,
            "unseen_stretches": int(unseen.size),
            "unseen_m": round(float(unseen.sum()), 1),
            "unseen_longest_m": round(float(unseen.max()), 1) if unseen.size else 0.0,
        }
