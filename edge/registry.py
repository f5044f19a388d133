"""One registry of potholes across drives, in a real database: SQLite by default, any SQLAlchemy URL (a fleet's
PostgreSQL) otherwise.

A run's events with a position are sightings. A sighting within `radius_m` of a known pothole is that pothole
seen again; otherwise it is a new one. A pothole's place is the median of its sightings', which one bad fix
cannot drag away. Every run whose track passes a pothole is a pass, detected or not; a pothole missed on its
last `repaired_after` passes is marked possibly repaired. Adding a run twice changes nothing: runs are keyed on
their content.

Potholes are indexed by a grid cell of 0.001 degrees (about 111 m of latitude), so a drive loads only the
potholes in the cells around its track and its sightings, whatever the registry holds. On PostgreSQL a drive
takes a transaction lock on each of those cells, in one order, so two importers never both create one pothole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pothole_edge.edge.gps import EARTH_RADIUS_M, distance_m
from pothole_edge.errors import UsageError
from pothole_edge.redact import redact

log = logging.getLogger("edge")
M_PER_DEG = 111_195.0
SCHEMA_LOCK = 0x706F74686F6C65  # "pothole": the PostgreSQL advisory lock held while the tables are made
CELL_DEG = 0.001
_ROW = 400_000  # cells per row of the key: more than 360 / CELL_DEG
_CHUNK = 500  # keys per IN (...) query: under every database's bound-parameter limit


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


def tables(metadata: Any) -> dict[str, Any]:
    from sqlalchemy import (
        BigInteger,
        Boolean,
        Column,
        Float,
        ForeignKey,
        Index,
        Integer,
        String,
        Table,
        Text,
        UniqueConstraint,
    )

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
            Column("content", String(64)),  # Run.content when it was merged
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
            Column("cell", BigInteger),  # cell_key of (lat, lon)
            Index("potholes_cell", "cell"),
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
            Index("sightings_pothole", "pothole_id"),
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
            Index("passes_pothole", "pothole_id", "time"),
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
    key: str  # the run's identity: fixed when it starts, whatever its files have grown to since
    run_dir: Path
    started_at: str | None
    sightings: list[Sighting]
    track: list[tuple[float, float, float]]  # time, lat, lon
    distance_m: float | None
    content: str = ""  # what the files held when read: a run read again after it grew is merged again
    legacy_key: str | None = None  # the key registries before this one gave the same files


def _jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The objects of a JSON-lines file and how many lines were skipped: a bad line in the middle (a torn
    write, garbage) costs that line alone, never the lines after it. A torn last line, from a power cut, is
    expected and not counted."""
    rows, bad = [], 0
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f]
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    while lines and not lines[-1]:
        lines.pop()
    for k, line in enumerate(lines):
        if not line:
            continue
        try:
            row = json.loads(line, parse_constant=_no_constant)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif k < len(lines) - 1:
            bad += 1
    if bad:
        log.warning("%s: %d bad line(s) skipped", path, bad)
    return rows, bad


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _place(where: Any) -> bool:
    return (
        isinstance(where, dict)
        and _number(where.get("lat"))
        and _number(where.get("lon"))
        and (-90 <= where["lat"] <= 90 and -180 <= where["lon"] <= 180)
    )


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
    if not isinstance(summary, dict):
        summary = {}
    config_path = run_dir / "config.json"
    started = config_path.read_bytes() if config_path.is_file() else b""
    key = hashlib.sha256(started + str(summary.get("started_at")).encode()).hexdigest()
    sightings = []
    events, bad = _jsonl(events_path)
    for e in events:
        where = e.get("peak_position")
        if e.get("status") != "closed" or where is None or (isinstance(where, dict) and where.get("lat") is None):
            continue  # open, or seen without a fix: not a sighting, and nothing wrong
        t = e.get("peak_time")
        if not (
            isinstance(e.get("id"), int) and _place(where) and _number(t) and _number(e.get("peak_prob"))
        ) or not _number(where.get("gps_time", 0.0)):
            bad += 1
            continue
        snapshot = run_dir / "snapshots" / f"event_{e['id']:05d}.jpg"
        sightings.append(
            Sighting(
                e["id"],
                _unix(t, where),
                float(where["lat"]),
                float(where["lon"]),
                float(e["peak_prob"]),
                _text(snapshot) if snapshot.is_file() else None,
            )
        )
    rows, bad_rows = _jsonl(predictions_path)
    track = []
    for r in rows:
        if r.get("lat") is None or r.get("time") is None:
            continue
        if _place(r) and _number(r["time"]) and _number(r.get("gps_time", 0.0)):
            track.append((_unix(r["time"], r), float(r["lat"]), float(r["lon"])))
        else:
            bad_rows += 1
    if bad or bad_rows:
        log.warning("%s: %d event(s) and %d frame row(s) unusable, skipped", run_dir, bad, bad_rows)
    thinned = _thin(track)
    content = hashlib.sha256(events_path.read_bytes() + f"{len(thinned)}|{summary.get('ended_at')}".encode())
    legacy = hashlib.sha256(events_path.read_bytes() + str(summary.get("started_at")).encode()).hexdigest()
    return Run(
        key,
        run_dir,
        summary.get("started_at"),
        sightings,
        thinned,
        _gps_distance(summary),
        content.hexdigest(),
        legacy,
    )


def _gps_distance(summary: dict[str, Any]) -> float | None:
    gps = summary.get("gps")
    distance = gps.get("distance_m") if isinstance(gps, dict) else None
    return float(distance) if _number(distance) else None


def _unix(t: float, where: dict[str, Any]) -> float:
    """Frame times are the file's clock for videos; the position carries GPS time when it was set."""
    return float(where.get("gps_time", t))


def _thin(track: list[tuple[float, float, float]], step_m: float = 3.0) -> list[tuple[float, float, float]]:
    kept: list[tuple[float, float, float]] = []
    for p in track:
        if not kept or distance_m(kept[-1][1], kept[-1][2], p[1], p[2]) >= step_m:
            kept.append(p)
    return kept


def engine_for(url: str | None, out: Path, password_env: str | None = None) -> Any:
    """An engine for --db; a password for a URL without one comes from the environment variable `password_env`,
    so it never sits in a command line, config.json or an error message."""
    import os

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    text = url or f"sqlite:///{out / 'potholes.sqlite'}"
    if text.startswith("postgresql://"):
        text = "postgresql+psycopg://" + text[len("postgresql://") :]  # psycopg 3, not the old psycopg2
    try:
        parsed = make_url(text)
        if parsed.password is None and password_env and os.environ.get(password_env):
            parsed = parsed.set(password=os.environ[password_env])
        return create_engine(parsed)
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as e:
        raise UsageError(
            f"--db {redact(text)}: {redact(str(e).splitlines()[0][:160])}; give an SQLAlchemy URL such as "
            "sqlite:///potholes.sqlite or postgresql://user@host/db, with the password in $POTHOLE_EDGE_DB_PASSWORD "
            "(pip install '.[fleet]' in a clone)"
        ) from None


class Registry:
    def __init__(self, engine: Any, radius_m: float = 8.0, repaired_after: int = 3) -> None:
        from sqlalchemy import MetaData
        from sqlalchemy.exc import DBAPIError

        self.engine, self.radius_m, self.repaired_after = engine, radius_m, repaired_after
        self.meta = MetaData()
        self.t = tables(self.meta)
        try:
            self._create()
        except DBAPIError as e:
            raise UsageError(
                f"--db {db_error(engine, e)}: cannot open the registry; check that the server runs, the user and "
                "the password (from --db-password-env), or that the SQLite file is a database this process may write"
            ) from None

    def _create(self) -> None:
        """Tables, then what a registry written before the cell index lacks. Importers starting together on a new
        database would race to create the tables: on PostgreSQL one waits for the other on a lock; SQLite's
        losing CREATE fails with "already exists", and a second look finds the tables there."""
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError

        for attempt in range(3):
            try:
                with self.engine.begin() as db:
                    if db.dialect.name == "postgresql":
                        db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
                    self.meta.create_all(db)
                    self._upgrade(db)
                return
            except DBAPIError as e:
                if attempt == 2 or "already exists" not in str(e):
                    raise

    def _upgrade(self, db: Any) -> None:
        """A registry written before the cell index gets the column, its values and every index."""
        from sqlalchemy import inspect, select, text

        potholes = self.t["potholes"]
        if "cell" not in {c["name"] for c in inspect(db).get_columns("potholes")}:
            db.execute(text("ALTER TABLE potholes ADD COLUMN cell BIGINT"))
        if "content" not in {c["name"] for c in inspect(db).get_columns("runs")}:
            db.execute(text("ALTER TABLE runs ADD COLUMN content VARCHAR(64)"))
        missing = select(potholes.c.id, potholes.c.lat, potholes.c.lon).where(potholes.c.cell.is_(None))
        for r in db.execute(missing).all():
            db.execute(potholes.update().where(potholes.c.id == r.id).values(cell=cell_key(*cell_of(r.lat, r.lon))))
        for table in self.t.values():
            for index in table.indexes:
                index.create(db, checkfirst=True)

    def add(self, run: Run) -> bool:
        """Merge one run; False when it was already there as it is now. A run added while it was still being
        written, and again once it grew, is the same drive: what it added before is taken back and merged anew.
        One transaction: a failure adds nothing."""
        from sqlalchemy import select
        from sqlalchemy.exc import IntegrityError

        runs = self.t["runs"]
        first = run.track[0][0] if run.track else (run.sightings[0].time if run.sightings else None)
        values = {
            "run_dir": _text(run.run_dir),
            "started_at": run.started_at,
            "first_time": first,
            "distance_m": run.distance_m,
            "track": json.dumps([[round(a, 7), round(b, 7)] for _, a, b in run.track]),
            "content": run.content,
        }
        try:
            with self.engine.begin() as db:
                keys = [run.key, run.legacy_key] if run.legacy_key else [run.key]
                known = db.execute(select(runs.c.id, runs.c.key, runs.c.content).where(runs.c.key.in_(keys))).first()
                if known is not None and (known.key != run.key or known.content == run.content):
                    return False  # a legacy key matches only the same events; the same content changes nothing
                track_cells, cells = self._cells(run)
                self._lock(db, cells)
                if known is None:
                    run_id = db.execute(runs.insert().values(key=run.key, **values)).inserted_primary_key[0]
                else:
                    run_id = known.id
                    self._forget(db, run_id)
                    db.execute(runs.update().where(runs.c.id == run_id).values(**values))
                    log.info("%s grew since it was added: merged again", run.run_dir)
                self._merge(db, run_id, run, track_cells, cells)
        except IntegrityError:
            # another importer added this run between our check and our insert: its key is unique
            log.info("%s was added by another importer meanwhile", run.run_dir)
            return False
        return True

    def _cells(self, run: Run) -> tuple[dict[tuple[int, int], list[tuple[float, float, float]]], list[int]]:
        """The run's track points by cell, and the keys of every cell it can read or write."""
        track_cells: dict[tuple[int, int], list[tuple[float, float, float]]] = {}
        for point in run.track:
            track_cells.setdefault(cell_of(point[1], point[2]), []).append(point)
        around = {c: near_cells(*c, self.radius_m) for c in {cell_of(s.lat, s.lon) for s in run.sightings}}
        around.update((c, near_cells(*c, self.radius_m)) for c in track_cells if c not in around)
        return track_cells, sorted(set().union(*around.values())) if around else []

    def _forget(self, db: Any, run_id: int) -> None:
        """Take back what a run added: its sightings and passes; a pothole left with no sighting goes too."""
        from sqlalchemy import select

        sightings, passes, potholes = self.t["sightings"], self.t["passes"], self.t["potholes"]
        ids = [r[0] for r in db.execute(select(sightings.c.pothole_id).where(sightings.c.run_id == run_id).distinct())]
        db.execute(sightings.delete().where(sightings.c.run_id == run_id))
        db.execute(passes.delete().where(passes.c.run_id == run_id))
        for pothole_id in ids:
            rows = db.execute(select(sightings).where(sightings.c.pothole_id == pothole_id)).all()
            if not rows:
                db.execute(passes.delete().where(passes.c.pothole_id == pothole_id))
                db.execute(potholes.delete().where(potholes.c.id == pothole_id))
                continue
            lat, lon = _median_place(rows)
            best = max(rows, key=lambda r: r.prob)
            db.execute(
                potholes.update()
                .where(potholes.c.id == pothole_id)
                .values(
                    lat=lat,
                    lon=lon,
                    cell=cell_key(*cell_of(lat, lon)),
                    sightings=len(rows),
                    first_seen=min(r.time for r in rows),
                    last_seen=max(r.time for r in rows),
                    max_prob=best.prob,
                    best_snapshot=best.snapshot or next((r.snapshot for r in rows if r.snapshot), None),
                )
            )

    def _merge(
        self,
        db: Any,
        run_id: int,
        run: Run,
        track_cells: dict[tuple[int, int], list[tuple[float, float, float]]],
        cells: list[int],
    ) -> None:
        index = _CellIndex(self._load(db, cells))
        touched = set()
        for s in sorted(run.sightings, key=lambda s: s.time):
            c = cell_of(s.lat, s.lon)
            near = min(
                index.near(near_cells(*c, self.radius_m)),
                key=lambda p: distance_m(p["lat"], p["lon"], s.lat, s.lon),
                default=None,
            )
            if near is None or distance_m(near["lat"], near["lon"], s.lat, s.lon) > self.radius_m:
                near = self._new(db, s)
                index.put(near)
            self._sighting(db, run_id, near["id"], s)
            touched.add(near["id"])
            index.move(near, self._refresh(db, near, s))
        self._record_passes(db, run_id, index, track_cells, touched)

    def _lock(self, db: Any, keys: list[int]) -> None:
        """PostgreSQL: hold every cell this drive reads or writes until commit, taken in key order so two
        importers cannot deadlock. SQLite writes one transaction at a time anyway."""
        if keys and db.dialect.name == "postgresql":
            from sqlalchemy import text

            db.execute(
                text(
                    "SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT unnest(CAST(:keys AS bigint[])) AS k "
                    "ORDER BY 1) AS cells"
                ),
                {"keys": keys},
            )

    def _load(self, db: Any, keys: list[int]) -> list[dict[str, Any]]:
        from sqlalchemy import select

        potholes = self.t["potholes"]
        rows = []
        for n in range(0, len(keys), _CHUNK):
            chunk = keys[n : n + _CHUNK]
            rows += [dict(r._mapping) for r in db.execute(select(potholes).where(potholes.c.cell.in_(chunk)))]
        return rows

    def _new(self, db: Any, s: Sighting) -> dict[str, Any]:
        row = {
            "lat": s.lat,
            "lon": s.lon,
            "sightings": 0,
            "first_seen": s.time,
            "last_seen": s.time,
            "max_prob": s.prob,
            "best_snapshot": s.snapshot,
            "possibly_repaired": False,
            "cell": cell_key(*cell_of(s.lat, s.lon)),
        }
        row["id"] = db.execute(self.t["potholes"].insert().values(**row)).inserted_primary_key[0]
        return row

    def _sighting(self, db: Any, run_id: int, pothole_id: int, s: Sighting) -> None:
        db.execute(
            self.t["sightings"]
            .insert()
            .values(
                run_id=run_id,
                pothole_id=pothole_id,
                event_id=s.event_id,
                time=s.time,
                lat=s.lat,
                lon=s.lon,
                prob=s.prob,
                snapshot=s.snapshot,
            )
        )

    def _refresh(self, db: Any, pothole: dict[str, Any], s: Sighting) -> int:
        """Move the pothole to its sightings' median; returns the cell it was in before."""
        from sqlalchemy import select

        sightings, potholes = self.t["sightings"], self.t["potholes"]
        rows = db.execute(select(sightings.c.lat, sightings.c.lon).where(sightings.c.pothole_id == pothole["id"])).all()
        was = pothole["cell"]
        lat, lon = _median_place(rows)
        better = s.prob > pothole["max_prob"] or pothole["best_snapshot"] is None
        values = {
            "lat": lat,
            "lon": lon,
            "cell": cell_key(*cell_of(lat, lon)),
            "sightings": len(rows),
            "first_seen": min(pothole["first_seen"], s.time),
            "last_seen": max(pothole["last_seen"], s.time),
            "max_prob": max(pothole["max_prob"], s.prob),
        }
        if better and s.snapshot:
            values["best_snapshot"] = s.snapshot
        pothole.update(values)
        db.execute(potholes.update().where(potholes.c.id == pothole["id"]).values(**values))
        return was

    def _record_passes(
        self,
        db: Any,
        run_id: int,
        index: _CellIndex,
        track_cells: dict[tuple[int, int], list[tuple[float, float, float]]],
        detected: set[int],
    ) -> None:
        """A pass is a run whose positioned frames came within the radius of a pothole, seen there or not."""
        import numpy as np
        from sqlalchemy import select

        passes, potholes = self.t["passes"], self.t["potholes"]
        by_key = {cell_key(*c): np.array(points, dtype=np.float64) for c, points in track_cells.items()}
        for p in index.all():
            near = [by_key[k] for k in near_cells(*cell_of(p["lat"], p["lon"]), self.radius_m) if k in by_key]
            points = np.concatenate(near) if near else np.empty((0, 3))
            close = points[_metres(points[:, 1], points[:, 2], p["lat"], p["lon"]) <= self.radius_m, 0]
            if not close.size and p["id"] not in detected:
                continue
            when = float(close.min()) if close.size else p["last_seen"]
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
            if repaired != p["possibly_repaired"]:
                db.execute(potholes.update().where(potholes.c.id == p["id"]).values(possibly_repaired=repaired))
                p["possibly_repaired"] = repaired

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


def _metres(lat: Any, lon: Any, lat0: float, lon0: float) -> Any:
    """distance_m from many points (numpy arrays) to one: the same haversine, vectorised."""
    import numpy as np

    p1, p2 = np.radians(lat), math.radians(lat0)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * math.cos(p2) * np.sin(np.radians(lon0 - lon) / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.minimum(1.0, np.sqrt(a)))


def db_error(engine: Any, error: Any) -> str:
    """ "URL (reason)" for an error line: the URL without its password, the driver's first line masked too."""
    text = str(error.orig or error).strip()
    reason = redact(text.splitlines()[0][:200]) if text else type(error).__name__
    return f"{redact(engine.url.render_as_string(hide_password=True))} ({reason})"


def _median_place(rows: list[Any]) -> tuple[float, float]:
    """The median of sightings' places; longitudes as offsets from the first sighting's, so sightings either
    side of 180 degrees stay together."""
    lat = statistics.median(r.lat for r in rows)
    offset = statistics.median((r.lon - rows[0].lon + 180) % 360 - 180 for r in rows)
    return lat, (rows[0].lon + offset + 180) % 360 - 180


def _text(path: Path | str) -> str:
    """A path for the database: a name that is not UTF-8 keeps its bytes as \\x escapes instead of failing."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class _CellIndex:
    """The potholes a drive loaded, by cell key, kept current as sightings add and move them."""

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

    def all(self) -> list[dict[str, Any]]:
        return [p for rows in self.cells.values() for p in rows]
