"""The road a run drove, as track messages for the office: thinned to a point every few metres, a chunk about
every minute of GPS time and one at the end."""

from __future__ import annotations

from typing import Any

from pothole_edge.edge.gps import distance_m
from pothole_edge.messages import track_message

STEP_M = 3.0
CHUNK_S = 60.0


class TrackChunks:
    def __init__(self, vehicle: str, run: str, step_m: float = STEP_M, chunk_s: float | None = None) -> None:
        self.vehicle, self.run, self.step_m, self.chunk_s = vehicle, run, step_m, chunk_s or CHUNK_S
        self.points: list[tuple[float, float, float]] = []
        self.last: tuple[float, float, float] | None = None
        self.chunk = 0

    def add(self, where: dict[str, Any] | None) -> dict[str, Any] | None:
        """A frame's position; returns a track message when a chunk is full."""
        if not where or where.get("lat") is None or where.get("gps_time") is None:
            return None
        point = (float(where["gps_time"]), float(where["lat"]), float(where["lon"]))
        if self.last is not None and distance_m(self.last[1], self.last[2], point[1], point[2]) < self.step_m:
            return None
        self.last = point
        self.points.append(point)
        if point[0] - self.points[0][0] >= self.chunk_s:
            return self._flush(final=False)
        return None

    def finish(self) -> dict[str, Any]:
        """The last chunk, sent even when empty, so the office knows the run's track is complete."""
        return self._flush(final=True)

    def _flush(self, final: bool) -> dict[str, Any]:
        self.chunk += 1
        message = track_message(self.vehicle, self.run, self.chunk, self.points, final)
        # the next chunk starts where this one ended, so the office's line has no gap between chunks
        self.points = self.points[-1:] if not final else []
        return message
