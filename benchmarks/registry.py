"""The pothole registry at city scale: the time to add one 40 km drive to a registry that already holds N potholes.

    python -m pothole_edge.benchmarks.registry --sizes 1000,10000,100000 [--db postgresql://...] --out DIR

A drive is the messages a van sends (170 events, then its track in one-minute chunks), taken the two ways the
office takes them: as one batch (MQTT: whatever arrived, in one transaction) and one message per transaction
(webhooks).
The city is a grid of streets 100 m apart whose size grows with N, so the potholes per kilometre of street stay the
same (10) and a drive passes about as many potholes in every registry: what changes with N is only what the
registry must not scan. Each drive is a random walk along the streets, a track point every 3 m (about 13,000),
and 170 events at random points of it with 2 m of GPS noise. Times are the median of --drives. --db must name an
empty database: the benchmark writes its own tables there and drops them between sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from pothole_edge.geo import M_PER_DEG
from pothole_edge.messages import check, event_message, track_message
from pothole_edge.office.registry import Incoming, Registry, cell_key, cell_of, engine_for

ORIGIN = (48.0, 11.0)
BLOCK_M = 100.0
PER_KM = 10  # potholes per kilometre of street
STEP_M = 3.0


def _city_side(potholes: int) -> int:
    """Blocks per side: a grid of n x n blocks has 2 n (n + 1) blocks' length of street."""
    street_km = potholes / PER_KM
    return max(4, math.ceil(math.sqrt(street_km * 1000 / BLOCK_M / 2)))


def _to_deg(north_m: np.ndarray, east_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lat = ORIGIN[0] + north_m / M_PER_DEG
    return lat, ORIGIN[1] + east_m / (M_PER_DEG * math.cos(math.radians(ORIGIN[0])))


def _street_points(n: int, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n random points on the streets of a side x side grid, in metres."""
    along = rng.uniform(0, side * BLOCK_M, n)
    line = rng.integers(0, side + 1, n) * BLOCK_M
    east_west = rng.random(n) < 0.5
    return np.where(east_west, line, along), np.where(east_west, along, line)


def fill(registry: Registry, n: int, side: int, rng: np.random.Generator) -> None:
    """N potholes written straight into the table, as years of drives would have left them."""
    north, east = _street_points(n, side, rng)
    lat, lon = _to_deg(north, east)
    potholes = registry.t["potholes"]
    rows = [
        {
            "lat": float(a),
            "lon": float(b),
            "sightings": 1,
            "first_seen": 0.0,
            "last_seen": 0.0,
            "max_prob": 0.9,
            "best_snapshot": None,
            "possibly_repaired": False,
            "cell": cell_key(*cell_of(float(a), float(b))),
        }
        for a, b in zip(lat, lon)
    ]
    with registry.engine.begin() as db:
        for k in range(0, len(rows), 5000):
            db.execute(potholes.insert(), rows[k : k + 5000])


def drive(name: str, side: int, rng: np.random.Generator, t0: float) -> list[Incoming]:
    """A 40 km random walk along the streets, as the van's messages: its events, then its track."""
    x, y = rng.integers(0, side + 1, 2) * BLOCK_M
    track_m = []
    while len(track_m) * STEP_M < 40_000:
        dx, dy = [(1, 0), (-1, 0), (0, 1), (0, -1)][rng.integers(4)]
        if not (0 <= x + dx * BLOCK_M <= side * BLOCK_M and 0 <= y + dy * BLOCK_M <= side * BLOCK_M):
            continue
        steps = int(BLOCK_M / STEP_M)
        track_m += [(y + dy * BLOCK_M * k / steps, x + dx * BLOCK_M * k / steps) for k in range(steps)]
        x, y = x + dx * BLOCK_M, y + dy * BLOCK_M
    north, east = np.array(track_m).T
    lat, lon = _to_deg(north, east)
    track = [(t0 + k * 0.12, float(a), float(b)) for k, (a, b) in enumerate(zip(lat, lon))]
    messages = []
    for n, k in enumerate(sorted(rng.choice(len(track), 170, replace=False))):
        t, a, b = track[k]
        jitter = rng.normal(0, 2.0, 2) / M_PER_DEG
        where = {"lat": a + jitter[0], "lon": b + jitter[1], "gps_time": t}
        messages.append(event_message("bench", name, n, 0.9, where, {}))
    per_chunk = 500  # a minute at 25 m/s, a point every 3 m
    for k in range(0, len(track), per_chunk):
        end = k + per_chunk >= len(track)
        messages.append(track_message("bench", name, k // per_chunk + 1, track[max(0, k - 1) : k + per_chunk], end))
    return [Incoming(m, check(m), t0) for m in messages]


def _timed(registry: Registry, items: list[Incoming], batch: int) -> float:
    started = time.perf_counter()
    for k in range(0, len(items), batch):
        registry.ingest(items[k : k + batch])
    return time.perf_counter() - started


def measure(db: str | None, sizes: list[int], drives: int, out: Path) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        rng = np.random.default_rng(n)
        folder = out / f"{n}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "potholes.sqlite").unlink(missing_ok=True)
        engine = engine_for(db, str(folder / "potholes.sqlite"))
        registry = Registry(engine)
        side = _city_side(n)
        started = time.perf_counter()
        fill(registry, n, side, rng)
        filled = time.perf_counter() - started
        batched, single = [], []
        for d in range(drives):
            items = drive(f"drive-{n}-{d}", side, rng, t0=1e6 * (2 * d + 1))
            batched.append(_timed(registry, items, len(items)))
            single.append(_timed(registry, drive(f"drive-{n}-{d}-single", side, rng, t0=1e6 * (2 * d + 2)), 1))
        # memory on one more drive, untimed: tracing allocations slows Python down
        tracemalloc.start()
        items = drive(f"drive-{n}-memory", side, rng, t0=1e6 * (2 * drives + 1))
        registry.ingest(items)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        rows.append(
            {
                "potholes": n,
                "city_km": round(side * BLOCK_M / 1000, 1),
                "postgis": registry.postgis,
                "fill_s": round(filled, 2),
                "drive_s_median": round(statistics.median(batched), 3),
                "drive_s": [round(t, 3) for t in batched],
                "drive_one_by_one_s_median": round(statistics.median(single), 3),
                "peak_python_mib": round(peak, 1),
                "track_points": sum(len(i.message.get("points", ())) for i in items),
                "messages": len(items),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        registry.meta.drop_all(engine)
        engine.dispose()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pothole_edge.benchmarks.registry", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sizes", default="1000,10000,100000", help="potholes already held (default: %(default)s)")
    parser.add_argument("--drives", type=int, default=3, help="drives timed per size (default: %(default)s)")
    parser.add_argument("--db", help="an SQLAlchemy URL; its tables are dropped first (default: SQLite in --out)")
    parser.add_argument("--out", default="runs/bench-registry", help="report folder (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes {args.sizes!r} must be whole numbers separated by commas")
    out = Path(args.out)
    if args.db:
        from sqlalchemy import inspect

        if inspect(engine_for(args.db, "")).get_table_names():
            parser.error(f"--db {args.db.split('@')[-1]} is not empty: give an empty database, its tables are dropped")
    rows = measure(args.db, sizes, args.drives, out)
    (out / "registry.json").write_text(
        json.dumps({"db": "postgresql" if args.db else "sqlite", "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
