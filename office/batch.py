"""What one batch of messages changes in the registry, worked out in memory before anything is written.

The registry loads the potholes near the batch and their sightings' places, hands each new message to a `Batch`,
then writes what the batch holds in a few statements per table. On PostgreSQL every statement is a round trip,
and one drive is hundreds of messages: a statement per message was most of a drive's time.

Potholes are dicts of their table's columns; one made in this batch has `id` None until it is written, so the
batch keys potholes by the dict's identity, not by id.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pothole_edge.geo import EARTH_RADIUS_M, M_PER_DEG, distance_m

CELL_DEG = 0.001
_ROW = 400_000  # cells per row of the key: more than 360 / CELL_DEG
MOVED = ("lat", "lon", "cell", "sightings", "first_seen", "last_seen", "max_prob", "best_snapshot")
Pass = tuple[dict[str, Any], float, bool]  # pothole, when, detected


def cell_of(lat: float, lon: float) -> tuple[int, int]:
    return math.floor(lat / CELL_DEG), math.floor(lon / CELL_DEG)


def cell_key(i: int, j: int) -> int:
    """One integer per cell; longitude wraps, so the cells either side of 180 degrees are neighbours."""
    cols = round(360 / CELL_DEG)
    return (i + round(90 / CELL_DEG)) * _ROW + (j + cols // 2) % cols


def near_cells(i: int, j: int, radius_m: float) -> set[int]:
    """The keys of every cell that can hold a point within `radius_m` of any point in cell (i, j)."""
    di = math.ceil(radius_m / (M_PER_DEG * CELL_DEG))
    # a degree of longitude is shortest at the band's edge nearer the pole; beyond 89.9 degrees no road runs
    edge = min(89.9, max(abs(i), abs(i + 1)) * CELL_DEG + di * CELL_DEG)
    dj = math.ceil(radius_m / (M_PER_DEG * CELL_DEG * math.cos(math.radians(edge))))
    return {cell_key(a, b) for a in range(i - di, i + di + 1) for b in range(j - dj, j + dj + 1)}


class CellIndex:
    """The potholes a batch loaded, by cell key, kept current as sightings add and move them."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.cells: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            self.put(r)

    def put(self, pothole: dict[str, Any]) -> None:
        self.cells.setdefault(pothole["cell"], []).append(pothole)

    def move(self, pothole: dict[str, Any], was: int) -> None:
        if pothole["cell"] != was:
            self.cells[was].remove(pothole)
            self.put(pothole)

    def near(self, keys: set[int]) -> list[dict[str, Any]]:
        return [p for k in keys for p in self.cells.get(k, ())]


@dataclass
class Batch:
    """The batch's changes: potholes made and moved, sightings, track chunks, run totals, passes, message rows."""

    index: CellIndex
    radius_m: float
    fetch: Callable[[dict[str, Any]], list[tuple[float, float]]]  # a loaded pothole's places, from the database
    places: dict[int, list[tuple[float, float]]] = field(default_factory=dict)  # id(pothole) -> in the order seen
    new: list[dict[str, Any]] = field(default_factory=list)
    moved: dict[int, dict[str, Any]] = field(default_factory=dict)
    sightings: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    chunks: list[tuple[dict[str, Any], set[int]]] = field(default_factory=list)  # row, its cells
    runs: dict[int, list[float]] = field(default_factory=dict)  # run id -> [earliest time, metres]
    passes: dict[int, dict[int, Pass]] = field(default_factory=dict)  # run id -> id(pothole) -> its pass
    messages: list[dict[str, Any]] = field(default_factory=list)

    def passed(self, run_id: int, pothole: dict[str, Any], when: float, detected: bool) -> None:
        """A run's pass of a pothole keeps its earliest time and whether any message saw it."""
        seen = self.passes.setdefault(run_id, {})
        earlier = seen.get(id(pothole))
        if earlier:
            when, detected = min(when, earlier[1]), detected or earlier[2]
        seen[id(pothole)] = (pothole, when, detected)

    def candidates(self, lat: float, lon: float) -> list[dict[str, Any]]:
        return self.index.near(near_cells(*cell_of(lat, lon), self.radius_m))

    def sighting(
        self, run_id: int, event: int, point: tuple[float, float, float], prob: float, snapshot: str | None
    ) -> dict[str, Any]:
        """Match the sighting to the nearest pothole within the radius, or make one."""
        when, lat, lon = point
        near = min(self.candidates(lat, lon), key=lambda p: distance_m(p["lat"], p["lon"], lat, lon), default=None)
        if near is None or distance_m(near["lat"], near["lon"], lat, lon) > self.radius_m:
            near = {
                "id": None,
                "lat": lat,
                "lon": lon,
                "sightings": 0,
                "first_seen": when,
                "last_seen": when,
                "max_prob": prob,
                "best_snapshot": None,
                "possibly_repaired": False,
                "cell": cell_key(*cell_of(lat, lon)),
            }
            self.index.put(near)
            self.new.append(near)
            self.places[id(near)] = []
        row = {"run_id": run_id, "event_id": event, "time": when, "lat": lat, "lon": lon, "prob": prob}
        self.sightings.append((near, {**row, "snapshot": snapshot}))
        was = near["cell"]
        self._refresh(near, point, prob, snapshot)
        self.index.move(near, was)
        self.passed(run_id, near, when, True)
        return near

    def _refresh(
        self, pothole: dict[str, Any], point: tuple[float, float, float], prob: float, snapshot: str | None
    ) -> None:
        """The pothole moves to its sightings' median, which one bad fix cannot drag away."""
        when, lat, lon = point
        places = self.places.get(id(pothole))
        if places is None:
            places = self.places[id(pothole)] = self.fetch(pothole)
        places.append((lat, lon))
        lat, lon = median_place(places)
        better = snapshot and (prob > pothole["max_prob"] or pothole["best_snapshot"] is None)
        pothole.update(
            lat=lat,
            lon=lon,
            cell=cell_key(*cell_of(lat, lon)),
            sightings=len(places),
            first_seen=min(pothole["first_seen"], when),
            last_seen=max(pothole["last_seen"], when),
            max_prob=max(pothole["max_prob"], prob),
            best_snapshot=snapshot if better else pothole["best_snapshot"],
        )
        if pothole["id"] is not None:
            self.moved[id(pothole)] = pothole

    def track(self, run_id: int, chunk: int, points: list[tuple[float, float, float]]) -> None:
        """Keep the chunk; every pothole it came within the radius of has been passed by this run."""
        import numpy as np

        row = {
            "run_id": run_id,
            "chunk": chunk,
            "points": json.dumps([[round(t, 3), round(a, 7), round(b, 7)] for t, a, b in points]),
        }
        cells = {cell_of(lat, lon) for _, lat, lon in points}
        self.chunks.append((row, {cell_key(*c) for c in cells}))
        if not points:
            return
        total = self.runs.setdefault(run_id, [points[0][0], 0.0])
        total[0] = min(total[0], points[0][0])
        total[1] += sum(distance_m(a[1], a[2], b[1], b[2]) for a, b in zip(points, points[1:]))
        near = self.index.near(set().union(*(near_cells(*c, self.radius_m) for c in cells)))
        if near:
            places = np.array([[p["lat"], p["lon"]] for p in near])
            for p, when in zip(near, first_within(np.array(points, dtype=np.float64), places, self.radius_m)):
                if math.isfinite(when):
                    self.passed(run_id, p, when, False)


def first_within(points: Any, places: Any, radius_m: float) -> list[float]:
    """For each place, the earliest time at which the (n, 3) array of time, lat, lon came within the radius
    (inf where it never did): every place against every point at once."""
    import numpy as np

    metres = metres_between(points[None, :, 1], points[None, :, 2], places[:, 0, None], places[:, 1, None])
    return np.where(metres <= radius_m, points[None, :, 0], np.inf).min(axis=1).tolist()


def metres_between(lat: Any, lon: Any, lat0: Any, lon0: Any) -> Any:
    """distance_m between numpy arrays of points (broadcast): the same haversine, vectorised."""
    import numpy as np

    p1, p2 = np.radians(lat), np.radians(lat0)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon0 - lon) / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.minimum(1.0, np.sqrt(a)))


def median_place(places: list[tuple[float, float]]) -> tuple[float, float]:
    """The median of sightings' places; longitudes as offsets from the first sighting's, so sightings either
    side of 180 degrees stay together."""
    lat = statistics.median(a for a, _ in places)
    first = places[0][1]
    offset = statistics.median((b - first + 180) % 360 - 180 for _, b in places)
    return lat, (first + offset + 180) % 360 - 180
