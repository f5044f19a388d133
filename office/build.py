"""edge-map's library function: edge-run output folders in, through the office's one ingest path, one pothole
registry and its map out."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pothole_edge.errors import UsageError
from pothole_edge.fileio import ensure_writable_dir, write_json

log = logging.getLogger("office")


@dataclass(frozen=True)
class MapConfig:
    runs: tuple[str, ...]  # edge-run output folders
    out: str = "runs/map"  # the office's data folder: the registry (SQLite), snapshots, the map files
    db: str | None = None  # an SQLAlchemy URL; None: sqlite in --out
    db_password_env: str = "POTHOLE_EDGE_DB_PASSWORD"  # the password for a --db URL without one comes from here
    radius: float = 8.0  # metres within which two sightings are one pothole
    repaired_after: int = 3  # passes without a detection before a pothole is possibly repaired
    service_code: str = "pothole"  # Open311 service code

    def check(self) -> None:
        if not self.runs:
            raise UsageError("give at least one edge-run output folder, e.g. edge-map runs/edge/drive1 --out runs/map")
        check_registry_flags(self.radius, self.repaired_after)


def check_registry_flags(radius: float, repaired_after: int) -> None:
    if not (math.isfinite(radius) and 0.5 <= radius <= 500):
        raise UsageError(f"--radius must be from 0.5 to 500 metres, got {radius}")
    if repaired_after < 1:
        raise UsageError(f"--repaired-after must be 1 or more passes, got {repaired_after}")


def open_registry(db: str | None, out: Path, password_env: str, radius: float, repaired_after: int) -> Any:
    from pothole_edge.office.registry import Registry, engine_for

    return Registry(engine_for(db, str(out / "potholes.sqlite"), password_env), radius, repaired_after)


def write_map(registry: Any, out: Path, service_code: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from pothole_edge.office import mapfiles

    potholes, tracks = registry.potholes(), registry.tracks()
    mapfiles.write_all(out, potholes, tracks, service_code)
    return potholes, tracks


def build(config: MapConfig) -> dict[str, Any]:
    """Feed each folder's messages to the registry (a folder given twice changes nothing), then write
    potholes.geojson, .csv, map.html and open311.json."""
    from sqlalchemy.exc import DBAPIError

    from pothole_edge.messages import MessageError
    from pothole_edge.office.folders import run_messages
    from pothole_edge.office.ingest import Office
    from pothole_edge.office.registry import db_error

    config.check()
    runs = {r: run_messages(Path(r)) for r in config.runs}
    if (Path(config.out) / "predictions.jsonl").exists() or (Path(config.out) / "events.jsonl").exists():
        raise UsageError(
            f"--out {config.out} holds an edge-run's output, which the map would overwrite; give a new --out"
        )
    out = ensure_writable_dir(config.out, "output directory")
    registry = open_registry(config.db, out, config.db_password_env, config.radius, config.repaired_after)
    office = Office(registry, out)
    added = 0
    for run_dir, messages in runs.items():
        items = []
        for m in messages:
            try:
                items.append(office.parse(m, run_dir))
            except MessageError:
                continue  # logged and counted by parse; the rest of the run still goes in
        try:
            outcome = office.ingest(items)
        except DBAPIError as e:
            raise UsageError(
                f"--db {db_error(registry.engine, e)}: adding {run_dir} failed; nothing of that run was written: "
                "check the database is writable and whole, then run again"
            ) from None
        new = outcome.count("added")
        added += bool(new)
        if new:
            log.info("%s: %d new message(s) of %d", run_dir, new, len(outcome))
        else:
            log.info("%s is in the registry already; nothing changes", run_dir)
    potholes, tracks = write_map(registry, out, config.service_code)
    write_json(out / "config.json", dataclasses.asdict(config))
    log.info(
        "%d pothole(s) from %d drive(s) -> %s (map.html, potholes.geojson, potholes.csv, open311.json)",
        len(potholes),
        len(tracks),
        out,
    )
    return {
        "runs_given": len(runs),
        "runs_added": added,
        "potholes": len(potholes),
        "possibly_repaired": sum(1 for p in potholes if p["possibly_repaired"]),
        "drives": len(tracks),
    }
