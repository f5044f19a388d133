"""One registry of potholes across drives, in a real database: SQLite by default, any SQLAlchemy URL (a fleet's
PostgreSQL) otherwise.

A run's events with a position are sightings. A sighting within `radius_m` of a known pothole is that pothole
seen again; otherwise it is a new one. A pothole's place is the median of its sightings', which one bad fix
cannot drag away. Every run whose track passes a pothole is a pass, detected or not; a pothole missed on its
last `repaired_after` passes is marked possibly repaired. Adding a run twice changes nothing: runs are keyed on
their content.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pothole_edge.edge.gps import distance_m
from pothole_edge.errors import UsageError

log = logging.getLogger("edge")
M_PER_DEG = 111_195.0


def tables(metadata: Any) -> dict[str, Any]:
    from sqlalchemy import Boolean, Column, Float, ForeignKey, Integer, String, Table, Text, UniqueConstraint

    return {
        "runs": Table(
            "runs",
            metadata,
            Column("id", Integer, primary_key=True),
            Column("key", String(64), nullable=False, unique=True),
            Column("run_dir", Text, nullable=False),
            Column("started_at", String(40)),
            Column("first_time", Float),
            Column("distance_m", Float),
            Column("track", Text),  # JSON [[lat, lon], ...], thinned to a point every few metres
        ),
        "potholes": Table(
            "potholes",
            metadata,
            Column("id", Integer, primary_key=True),
            Column("lat", Float, nullable=False),
            Column("lon", Float, nullable=False),
            Column("sightings", Integer, nullable=False),
            Column("first_seen", Float, nullable=False),
            Column("last_seen", Float, nullable=False),
            Column("max_prob", Float, nullable=False),
            Column("best_snapshot", Text),
            Column("possibly_repaired", Boolean, nullable=False, default=False),
        ),
        "sightings": Table(
            "sightings",
            metadata,
            Column("id", Integer, primary_key=True),
            Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
            Column("pothole_id", Integer, ForeignKey("potholes.id"), nullable=False),
            Column("event_id", Integer, nullable=False),
            Column("time", Float, nullable=False),
            Column("lat", Float, nullable=False),
            Column("lon", Float, nullable=False),
            Column("prob", Float, nullable=False),
            Column("snapshot", Text),
        ),
        "passes": Table(
            "passes",
            metadata,
            Column("id", Integer, primary_key=True),
            Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
            Column("pothole_id", Integer, ForeignKey("potholes.id"), nullable=False),
            Column("time", Float, nullable=False),
            Column("detected", Boolean, nullable=False),
            UniqueConstraint("run_id", "pothole_id"),
        ),
    }


@dataclass
class Sighting:
    event_id: int
    time: float
    lat: float
    lon: float
    prob: float
    snapshot: str | None


@dataclass
class Run:
    key: str
    run_dir: Path
    started_at: str | None
    sightings: list[Sighting]
    track: list[tuple[float, float, float]]  # time, lat, lon
    distance_m: float | None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn last line from a power cut: everything before it is whole
    return rows


def read_run(run_dir: Path) -> Run:
    """An edge-run output folder: its positioned events, and the track its frames drove."""
    events_path, predictions_path, summary_path = (
        run_dir / n for n in ("events.jsonl", "predictions.jsonl", "summary.json")
    )
    if not events_path.is_file() or not predictions_path.is_file():
        raise UsageError(
            f"{run_dir} is not an edge-run output folder (no events.jsonl or predictions.jsonl); "
            "pass the folders edge-run wrote"
        )
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    except (OSError, ValueError):
        summary = {}
    key = hashlib.sha256(events_path.read_bytes() + str(summary.get("started_at")).encode()).hexdigest()
    sightings = []
    for e in _jsonl(events_path):
        where = e.get("peak_position") or {}
        if e.get("status") != "closed" or where.get("lat") is None or e.get("peak_time") is None:
            continue
        snapshot = run_dir / "snapshots" / f"event_{e['id']:05d}.jpg"
        sightings.append(
            Sighting(
                e["id"],
                _unix(e["peak_time"], where),
                where["lat"],
                where["lon"],
                e["peak_prob"],
                str(snapshot) if snapshot.is_file() else None,
            )
        )
    track = [
        (_unix(r["time"], r), r["lat"], r["lon"])
        for r in _jsonl(predictions_path)
        if r.get("lat") is not None and r.get("time") is not None
    ]
    return Run(
        key, run_dir, summary.get("started_at"), sightings, _thin(track), (summary.get("gps") or {}).get("distance_m")
    )


def _unix(t: float, where: dict[str, Any]) -> float:
    """Frame times are the file's clock for videos; the position carries GPS time when it was set."""
    return float(where.get("gps_time", t))


def _thin(track: list[tuple[float, float, float]], step_m: float = 3.0) -> list[tuple[float, float, float]]:
    kept: list[tuple[float, float, float]] = []
    for p in track:
        if not kept or distance_m(kept[-1][1], kept[-1][2], p[1], p[2]) >= step_m:
            kept.append(p)
    return kept


def engine_for(url: str | None, out: Path) -> Any:
    from sqlalchemy import create_engine
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    url = url or f"sqlite:///{out / 'potholes.sqlite'}"
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]  # psycopg 3, not the old psycopg2
    try:
        return create_engine(url)
    except (ArgumentError, NoSuchModuleError, ImportError) as e:
        raise UsageError(
            f"--db {url}: {str(e).splitlines()[0][:160]}; give an SQLAlchemy URL such as sqlite:///potholes.sqlite "
            "or postgresql://user@host/db (pip install 'pothole-edge[fleet]')"
        ) from None


class Registry:
    def __init__(self, engine: Any, radius_m: float = 8.0, repaired_after: int = 3) -> None:
        from sqlalchemy import MetaData

        self.engine, self.radius_m, self.repaired_after = engine, radius_m, repaired_after
        self.meta = MetaData()
        self.t = tables(self.meta)
        self.meta.create_all(engine)

    def add(self, run: Run) -> bool:
        """Merge one run; False when it was already there. One transaction: a failure adds nothing."""
        from sqlalchemy import select

        runs, potholes, sightings, passes = (self.t[n] for n in ("runs", "potholes", "sightings", "passes"))
        with self.engine.begin() as db:
            if db.execute(select(runs.c.id).where(runs.c.key == run.key)).first():
                return False
            first = run.track[0][0] if run.track else (run.sightings[0].time if run.sightings else None)
            run_id = db.execute(
                runs.insert().values(
                    key=run.key,
                    run_dir=str(run.run_dir),
                    started_at=run.started_at,
                    first_time=first,
                    distance_m=run.distance_m,
                    track=json.dumps([[round(a, 7), round(b, 7)] for _, a, b in run.track]),
                )
            ).inserted_primary_key[0]
            known = [dict(r._mapping) for r in db.execute(select(potholes))]
            touched = set()
            for s in sorted(run.sightings, key=lambda s: s.time):
                near = min(known, key=lambda p: distance_m(p["lat"], p["lon"], s.lat, s.lon), default=None)
                if near is None or distance_m(near["lat"], near["lon"], s.lat, s.lon) > self.radius_m:
                    row = {
                        "lat": s.lat,
                        "lon": s.lon,
                        "sightings": 0,
                        "first_seen": s.time,
                        "last_seen": s.time,
                        "max_prob": s.prob,
                        "best_snapshot": s.snapshot,
                        "possibly_repaired": False,
                    }
                    row["id"] = db.execute(potholes.insert().values(**row)).inserted_primary_key[0]
                    known.append(row)
                    near = row
                db.execute(
                    sightings.insert().values(
                        run_id=run_id,
                        pothole_id=near["id"],
                        event_id=s.event_id,
                        time=s.time,
                        lat=s.lat,
                        lon=s.lon,
                        prob=s.prob,
                        snapshot=s.snapshot,
                    )
                )
                touched.add(near["id"])
                self._refresh(db, near, s)
            self._record_passes(db, run_id, run, known, touched)
        return True

    def _refresh(self, db: Any, pothole: dict[str, Any], s: Sighting) -> None:
        from sqlalchemy import select

        sightings, potholes = self.t["sightings"], self.t["potholes"]
        rows = db.execute(select(sightings.c.lat, sightings.c.lon).where(sightings.c.pothole_id == pothole["id"])).all()
        pothole["lat"] = statistics.median(r.lat for r in rows)
        pothole["lon"] = statistics.median(r.lon for r in rows)
        better = s.prob > pothole["max_prob"] or pothole["best_snapshot"] is None
        values = {
            "lat": pothole["lat"],
            "lon": pothole["lon"],
            "sightings": len(rows),
            "first_seen": min(pothole["first_seen"], s.time),
            "last_seen": max(pothole["last_seen"], s.time),
            "max_prob": max(pothole["max_prob"], s.prob),
        }
        if better and s.snapshot:
            values["best_snapshot"] = s.snapshot
        pothole.update(values)
        db.execute(potholes.update().where(potholes.c.id == pothole["id"]).values(**values))

    def _record_passes(self, db: Any, run_id: int, run: Run, known: list[dict[str, Any]], detected: set[int]) -> None:
        """A pass is a run whose positioned frames came within the radius of a pothole, seen there or not."""
        from sqlalchemy import select

        passes, potholes = self.t["passes"], self.t["potholes"]
        for p in known:
            close = [t for t, lat, lon in run.track if distance_m(lat, lon, p["lat"], p["lon"]) <= self.radius_m]
            if not close and p["id"] not in detected:
                continue
            when = close[0] if close else p["last_seen"]
            db.execute(
                passes.insert().values(run_id=run_id, pothole_id=p["id"], time=when, detected=p["id"] in detected)
            )
            history = db.execute(
                select(passes.c.detected)
                .where(passes.c.pothole_id == p["id"])
                .order_by(passes.c.time.desc(), passes.c.id.desc())
                .limit(self.repaired_after)
            ).all()
            repaired = len(history) == self.repaired_after and not any(h.detected for h in history)
            db.execute(potholes.update().where(potholes.c.id == p["id"]).values(possibly_repaired=repaired))

    def potholes(self) -> list[dict[str, Any]]:
        from sqlalchemy import select

        potholes, sightings, runs = self.t["potholes"], self.t["sightings"], self.t["runs"]
        with self.engine.connect() as db:
            rows = [dict(r._mapping) for r in db.execute(select(potholes).order_by(potholes.c.id))]
            seen_by: dict[int, list[str]] = {}
            for r in db.execute(
                select(sightings.c.pothole_id, runs.c.run_dir).join(runs, runs.c.id == sightings.c.run_id).distinct()
            ):
                seen_by.setdefault(r.pothole_id, []).append(r.run_dir)
        for r in rows:
            r["runs"] = sorted(seen_by.get(r["id"], []))
        return rows

    def tracks(self) -> list[dict[str, Any]]:
        from sqlalchemy import select

        runs = self.t["runs"]
        with self.engine.connect() as db:
            return [
                {"run_dir": r.run_dir, "points": json.loads(r.track or "[]")}
                for r in db.execute(select(runs.c.run_dir, runs.c.track).order_by(runs.c.id))
            ]
