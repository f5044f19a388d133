"""edge-map's library function: edge-run output folders in, one pothole registry and its map out."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pothole_edge.errors import UsageError
from pothole_edge.fileio import ensure_writable_dir, write_json

log = logging.getLogger("edge")


@dataclass(frozen=True)
class MapConfig:
    runs: tuple[str, ...]  # edge-run output folders
    out: str = "runs/map"
    db: str | None = None  # an SQLAlchemy URL; None: sqlite in --out
    db_password_env: str = "POTHOLE_EDGE_DB_PASSWORD"  # the password for a --db URL without one comes from here
    radius: float = 8.0  # metres within which two sightings are one pothole
    repaired_after: int = 3  # passes without a detection before a pothole is possibly repaired
    service_code: str = "pothole"  # Open311 service code

    def check(self) -> None:
        if not self.runs:
            raise UsageError("give at least one edge-run output folder, e.g. edge-map runs/edge/drive1 --out runs/map")
        if not (math.isfinite(self.radius) and 0.5 <= self.radius <= 500):
            raise UsageError(f"--radius must be from 0.5 to 500 metres, got {self.radius}")
        if self.repaired_after < 1:
            raise UsageError(f"--repaired-after must be 1 or more passes, got {self.repaired_after}")


def _add(registry: Any, run: Any) -> bool:
    from sqlalchemy.exc import DBAPIError

    from pothole_edge.edge.registry import db_error

    try:
        return registry.add(run)
    except DBAPIError as e:
        raise UsageError(
            f"--db {db_error(registry.engine, e)}: adding {run.run_dir} failed; nothing of that run was written: "
            "check the database is writable and whole, then run again"
        ) from None


def build(config: MapConfig) -> dict[str, Any]:
    """Merge each run into the registry (idempotent), then write potholes.geojson, .csv, map.html and open311.json."""
    from pothole_edge.edge import mapfiles
    from pothole_edge.edge.registry import Registry, engine_for, read_run

    config.check()
    runs = [read_run(Path(r)) for r in config.runs]
    if (Path(config.out) / "predictions.jsonl").exists() or (Path(config.out) / "events.jsonl").exists():
        raise UsageError(
            f"--out {config.out} holds an edge-run's output, which the map would overwrite; give a new --out"
        )
    out = ensure_writable_dir(config.out, "output directory")
    registry = Registry(engine_for(config.db, out, config.db_password_env), config.radius, config.repaired_after)
    added = 0
    for run in runs:
        if _add(registry, run):
            added += 1
            log.info("%s: %d positioned sighting(s), %d track points", run.run_dir, len(run.sightings), len(run.track))
        else:
            log.info("%s is in the registry already; nothing changes", run.run_dir)
    potholes, tracks = registry.potholes(), registry.tracks()
    mapfiles.write_all(out, potholes, tracks, config.service_code)
    summary = {
        "runs_given": len(runs),
        "runs_added": added,
        "potholes": len(potholes),
        "possibly_repaired": sum(1 for p in potholes if p["possibly_repaired"]),
        "drives": len(tracks),
    }
    write_json(out / "config.json", dataclasses.asdict(config))
    log.info(
        "%d pothole(s) from %d drive(s) -> %s (map.html, potholes.geojson, potholes.csv, open311.json)",
        len(potholes),
        len(tracks),
        out,
    )
    return summary
