"""One registry of potholes for a fleet, built from the vans' messages alone, in a real database: SQLite by
default, any SQLAlchemy URL (a fleet's PostgreSQL, with PostGIS where it is installed) otherwise.

An event message with a position is a sighting. A sighting within `radius_m` of a known pothole is that pothole
seen again; otherwise it is a new one. A pothole's place is the median of its sightings', which one bad fix
cannot drag away. A run whose track came within the radius of a pothole passed it, seen or not; a pothole missed
on its last `repaired_after` passes is marked possibly repaired.

Every message is written once, keyed by its id, in the same transaction as what it changes, so a message
delivered twice (a retry, or both MQTT and a webhook) changes nothing the second time. A batch is worked out in
memory (`office.batch`) and written in a few statements per table, whatever its size.

Potholes are indexed by a grid cell of 0.001 degrees (about 111 m of latitude); a batch of messages loads only
the potholes near its points. On PostgreSQL with PostGIS that search is `ST_DWithin` on a `geography` column
with a GiST index; without PostGIS, and on SQLite, it is the cell key's B-tree. On PostgreSQL a batch takes a
transaction lock on each cell, run and message it touches, in one order, so two workers never create one pothole
twice and never deadlock.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from pothole_edge.errors import UsageError
from pothole_edge.messages import event_time
from pothole_edge.office.batch import MOVED, Batch, CellIndex, cell_key, cell_of, first_within, near_cells
from pothole_edge.redact import redact

log = logging.getLogger("office")
SCHEMA_LOCK = 0x706F74686F6C65  # "pothole": the PostgreSQL advisory lock held while the tables are made
_PIECE = 16  # track points per PostGIS probe: about 50 m of road at a point every 3 m
_CHUNK = 500  # keys per IN (...) query: under every database's bound-parameter limit
_LOCK_SPACE = 1 << 40  # run and message locks sit above every cell key (at most 180k * 400k < 2^37)

# PostGIS keeps `geog` in step with lat/lon itself, so every write path stays plain SQL
POSTGIS_SETUP = """
ALTER TABLE potholes ADD COLUMN IF NOT EXISTS geog geography(Point, 4326);
CREATE INDEX IF NOT EXISTS potholes_geog ON potholes USING gist (geog);
CREATE OR REPLACE FUNCTION potholes_set_geog() RETURNS trigger AS $$
BEGIN NEW.geog := ST_SetSRID(ST_MakePoint(NEW.lon, NEW.lat), 4326)::geography; RETURN NEW; END
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS potholes_geog ON potholes;
CREATE TRIGGER potholes_geog BEFORE INSERT OR UPDATE OF lat, lon ON potholes
    FOR EACH ROW EXECUTE FUNCTION potholes_set_geog();
UPDATE potholes SET geog = ST_SetSRID(ST_MakePoint(lon, lat), 4326)::geography WHERE geog IS NULL;
"""


def tables(metadata: Any) -> dict[str, Any]:
    """The registry's tables: what the vans sent (runs, messages, tracks), and what it knows (potholes)."""
    return _drive_tables(metadata) | _pothole_tables(metadata)


def _drive_tables(metadata: Any) -> dict[str, Any]:
    from sqlalchemy import (
        BigInteger,
        Column,
        Float,
        ForeignKey,
        Index,
        Integer,
        String,
        Table,
        Text,
    )

    return {
        "runs": Table(
            "runs",
            metadata,
            Column("id", Integer, primary_key=True),
            Column("key", String(64), nullable=False, unique=True),
            Column("run_dir", Text, nullable=False),  # the run's name: VEHICLE/RUN
            Column("started_at", String(40)),
            Column("first_time", Float),
            Column("distance_m", Float),
            Column("track", Text),  # registries before messages: JSON [[lat, lon], ...]
            Column("content", String(64)),  # registries before messages: what the folder held when merged
        ),
        "messages": Table(
            "messages",
            metadata,
            Column("id", String(36), primary_key=True),  # the message's UUID: each is written once
            Column("kind", String(8), nullable=False),
            Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
            Column("received", Float, nullable=False),
        ),
        "track_chunks": Table(
            "track_chunks",
            metadata,
            Column("id", Integer, primary_key=True),
            Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
            Column("chunk", Integer, nullable=False),
            Column("points", Text, nullable=False),  # JSON [[unix_time, lat, lon], ...]
            Index("track_chunks_run", "run_id", "chunk"),
        ),
        "track_cells": Table(  # the cells each chunk crossed: a pothole found later looks up who passed it before
            "track_cells",
            metadata,
            Column("chunk_id", Integer, ForeignKey("track_chunks.id"), nullable=False),
            Column("cell", BigInteger, nullable=False),
            Index("track_cells_cell", "cell"),
        ),
    }


def _pothole_tables(metadata: Any) -> dict[str, Any]:
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
            Column("best_snapshot", Text),  # relative to the office's data folder
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
        "open311": Table(  # what pothole-office open311 sent the city, one row per pothole
            "open311",
            metadata,
            Column("pothole_id", Integer, ForeignKey("potholes.id"), primary_key=True),
            Column("state", String(12), nullable=False),  # pending, submitted, failed
            Column("service_request_id", Text),
            Column("token", Text),
            Column("updated", Float, nullable=False),
            Column("last_error", Text),
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
class Incoming:
    """A checked message as the registry takes it: `snapshot` is the stored JPEG's path in the data folder."""

    message: dict[str, Any]
    kind: str
    received: float
    snapshot: str | None = None

    @property
    def id(self) -> str:
        return self.message["id" if self.kind == "track" else "event_id"]

    @property
    def run_name(self) -> str:
        return f"{self.message['vehicle']}/{self.message['run']}"

    def points(self) -> list[tuple[float, float, float]]:
        """time, lat, lon: a track's points, or an event's one place."""
        if self.kind == "track":
            return [(float(t), float(a), float(b)) for t, a, b in self.message["points"]]
        where = self.message.get("position")
        if not where:
            return []
        return [(event_time(self.message, self.received), float(where["lat"]), float(where["lon"]))]


def engine_for(url: str | None, default: str, password_env: str | None = None) -> Any:
    """An engine for --db (`default`, an SQLite path, without one); a password for a URL without one comes from
    the environment variable `password_env`, so it never sits in a command line, config.json or an error."""
    import os

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    text = url or f"sqlite:///{default}"
    if text.startswith("postgresql://"):
        text = "postgresql+psycopg://" + text[len("postgresql://") :]  # psycopg 3, not the old psycopg2
    try:
        parsed = make_url(text)
        if parsed.password is None and password_env and os.environ.get(password_env):
            parsed = parsed.set(password=os.environ[password_env])
        if parsed.get_backend_name() == "sqlite":
            # a second writer (edge-map beside a running office) waits its turn instead of failing at once
            return create_engine(parsed, connect_args={"timeout": 30})
        return create_engine(parsed, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as e:
        raise UsageError(
            f"--db {redact(text)}: {redact(str(e).splitlines()[0][:160])}; give an SQLAlchemy URL such as "
            "sqlite:///potholes.sqlite or postgresql://user@host/db, with the password in $POTHOLE_EDGE_DB_PASSWORD "
            "(pip install '.[office]' in a clone)"
        ) from None


def db_error(engine: Any, error: Any) -> str:
    """ "URL (reason)" for an error line: the URL without its password, the driver's first line masked too."""
    text = str(error.orig or error).strip()
    reason = redact(text.splitlines()[0][:200]) if text else type(error).__name__
    return f"{redact(engine.url.render_as_string(hide_password=True))} ({reason})"


class Registry:
    def __init__(self, engine: Any, radius_m: float = 8.0, repaired_after: int = 3, use_postgis: bool = True) -> None:
        """`use_postgis`: on a PostgreSQL that has PostGIS, search potholes with it (else by grid cell)."""
        from sqlalchemy import MetaData
        from sqlalchemy.exc import DBAPIError

        self.engine, self.radius_m, self.repaired_after = engine, radius_m, repaired_after
        self.meta = MetaData()
        self.t = tables(self.meta)
        self.postgis, self.use_postgis = False, use_postgis
        self.q = self._statements()
        try:
            self._create()
        except DBAPIError as e:
            raise UsageError(
                f"--db {db_error(engine, e)}: cannot open the registry; check that the server runs, the user and "
                "the password (from --db-password-env), or that the SQLite file is a database this process may write"
            ) from None

    def _statements(self) -> dict[str, Any]:
        """The statements a batch runs for every message, built once with bound parameters: SQLAlchemy then
        compiles each once, instead of once per value (which cost more than SQLite's own work)."""
        from sqlalchemy import bindparam, case, func, or_, select

        t = self.t
        potholes, sightings, passes, chunks, cells, runs = (
            t["potholes"],
            t["sightings"],
            t["passes"],
            t["track_chunks"],
            t["track_cells"],
            t["runs"],
        )
        order = func.row_number().over(
            partition_by=passes.c.pothole_id, order_by=(passes.c.time.desc(), passes.c.id.desc())
        )
        latest = (
            select(passes.c.pothole_id, passes.c.detected, order.label("k"))
            .where(passes.c.pothole_id.in_(bindparam("ids", expanding=True)))
            .subquery()
        )
        return {
            "known": select(t["messages"].c.id).where(t["messages"].c.id.in_(bindparam("ids", expanding=True))),
            "places": select(sightings.c.pothole_id, sightings.c.lat, sightings.c.lon)
            .where(sightings.c.pothole_id.in_(bindparam("ids", expanding=True)))
            .order_by(sightings.c.id),
            "move": potholes.update().where(potholes.c.id == bindparam("pid")).values({c: bindparam(c) for c in MOVED}),
            "repass": passes.update()
            .where(passes.c.id == bindparam("pass_id"))
            .values(time=bindparam("new_time"), detected=bindparam("new_detected")),
            "repaired": potholes.update()
            .where(potholes.c.id == bindparam("pid"))
            .values(possibly_repaired=bindparam("repaired")),
            "drove": runs.update()
            .where(runs.c.id == bindparam("run"))
            .values(
                first_time=case(
                    (or_(runs.c.first_time.is_(None), runs.c.first_time > bindparam("start")), bindparam("start")),
                    else_=runs.c.first_time,
                ),
                distance_m=func.coalesce(runs.c.distance_m, 0.0) + bindparam("metres"),
            ),
            "passed": select(passes.c.id, passes.c.pothole_id, passes.c.time, passes.c.detected).where(
                passes.c.run_id == bindparam("run"), passes.c.pothole_id.in_(bindparam("ids", expanding=True))
            ),
            "history": select(latest.c.pothole_id, latest.c.detected).where(latest.c.k <= bindparam("n")),
            "crossed": select(chunks.c.run_id, chunks.c.points)
            .where(chunks.c.id.in_(select(cells.c.chunk_id).where(cells.c.cell.in_(bindparam("keys", expanding=True)))))
            .order_by(chunks.c.id),
        }

    def _create(self) -> None:
        """Tables, then what an older registry lacks. Workers starting together on a new database would race to
        create the tables: on PostgreSQL one waits for the other on a lock; SQLite's losing CREATE fails with
        "already exists", and a second look finds the tables there."""
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError

        for attempt in range(3):
            try:
                with self.engine.begin() as db:
                    if db.dialect.name == "postgresql":
                        db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
                    self.meta.create_all(db)
                    self._upgrade(db)
                    self.postgis = self._postgis(db)
                return
            except DBAPIError as e:
                if attempt == 2 or "already exists" not in str(e):
                    raise

    def _postgis(self, db: Any) -> bool:
        """PostGIS where the server has it (CREATE EXTENSION needs a privileged user once per database)."""
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError

        if db.dialect.name != "postgresql" or not self.use_postgis:
            return False
        available = db.execute(text("SELECT 1 FROM pg_available_extensions WHERE name = 'postgis'")).first()
        if available is None:
            log.warning(
                "PostgreSQL has no PostGIS: potholes are found by their grid cell (apt postgresql-15-postgis-3)"
            )
            return False
        try:
            with db.begin_nested():
                db.execute(text("CREATE EXTENSION IF NOT EXISTS postgis"))
        except DBAPIError as e:
            log.warning("cannot enable PostGIS (%s): potholes are found by their grid cell", db_error(self.engine, e))
            return False
        db.exec_driver_sql(POSTGIS_SETUP)
        return True

    def _upgrade(self, db: Any) -> None:
        """A registry written before the cell index gets the column, its values and every index."""
        from sqlalchemy import select, text

        potholes = self.t["potholes"]
        # the columns by a query, not inspect(): SQLAlchemy's reflection warns on PostGIS's geography type
        if "cell" not in db.execute(text("SELECT * FROM potholes WHERE 1 = 0")).keys():
            db.execute(text("ALTER TABLE potholes ADD COLUMN cell BIGINT"))
        if "content" not in db.execute(text("SELECT * FROM runs WHERE 1 = 0")).keys():
            db.execute(text("ALTER TABLE runs ADD COLUMN content VARCHAR(64)"))
        missing = select(potholes.c.id, potholes.c.lat, potholes.c.lon).where(potholes.c.cell.is_(None))
        for r in db.execute(missing).all():
            db.execute(potholes.update().where(potholes.c.id == r.id).values(cell=cell_key(*cell_of(r.lat, r.lon))))
        for table in self.t.values():
            for index in table.indexes:
                index.create(db, checkfirst=True)

    def ingest(self, batch: list[Incoming]) -> list[str]:
        """Write each message once: "added", or "duplicate" for an id the registry holds. One transaction for
        the batch; if another worker raced it on an id, the batch is rolled back and taken one by one."""
        from sqlalchemy.exc import DBAPIError, IntegrityError

        if not batch:
            return []
        try:
            with self.engine.begin() as db:
                return self._ingest(db, batch)
        except (IntegrityError, DBAPIError) as e:
            if len(batch) == 1 and isinstance(e, IntegrityError):
                return ["duplicate"]  # another worker wrote this id between our look and our insert
            if len(batch) == 1:
                raise
            log.info("a batch of %d raced another worker (%s); taking it one message at a time", len(batch), e.orig)
        return [self.ingest([one])[0] for one in batch]

    def _ingest(self, db: Any, batch: list[Incoming]) -> list[str]:
        """Work the batch out in memory, then write it: a few statements per table, whatever its size."""
        self._lock(db, batch)
        ids = [m.id for m in batch]
        known = set()
        for n in range(0, len(ids), _CHUNK):
            known |= {r[0] for r in db.execute(self.q["known"], {"ids": ids[n : n + _CHUNK]})}
        fresh = [m for m in batch if m.id not in known]
        work = Batch(CellIndex(self._load(db, fresh)), self.radius_m, lambda p: self._places(db, [p])[id(p)])
        # the places of every loaded pothole an event can match, at once: a pothole that moves into reach during
        # the batch is looked up on its own
        reach = {id(p): p for m in fresh if m.kind == "event" for _, a, b in m.points() for p in work.candidates(a, b)}
        work.places.update(self._places(db, list(reach.values())))
        runs: dict[str, int] = {}
        outcome = []
        for m in batch:
            if m.id in known:
                outcome.append("duplicate")
                continue
            known.add(m.id)  # the same id twice in one batch is written once
            run_id = runs.get(m.run_name) or self._run(db, m, runs)
            work.messages.append({"id": m.id, "kind": m.kind, "run_id": run_id, "received": m.received})
            if m.kind == "track":
                work.track(run_id, int(m.message.get("chunk", 0)), m.points())
            elif m.message.get("position"):
                (point,) = m.points()
                work.sighting(run_id, int(m.message["event"]), point, float(m.message["peak_prob"]), m.snapshot)
            outcome.append("added")
        self._write(db, work)
        return outcome

    def _places(self, db: Any, potholes: list[dict[str, Any]]) -> dict[int, list[tuple[float, float]]]:
        """id(pothole) -> its sightings' places, in the order they were seen."""
        by_id = {p["id"]: p for p in potholes}
        places: dict[int, list[tuple[float, float]]] = {id(p): [] for p in potholes}
        keys = sorted(by_id)
        for n in range(0, len(keys), _CHUNK):
            for r in db.execute(self.q["places"], {"ids": keys[n : n + _CHUNK]}):
                places[id(by_id[r.pothole_id])].append((r.lat, r.lon))
        return places

    def _write(self, db: Any, work: Batch) -> None:
        """New potholes first (the sightings and passes need their ids), then each table in one statement."""
        potholes, sightings, chunks = self.t["potholes"], self.t["sightings"], self.t["track_chunks"]
        if work.new:
            rows = [{k: v for k, v in p.items() if k != "id"} for p in work.new]
            made = db.execute(potholes.insert().returning(potholes.c.id, sort_by_parameter_order=True), rows)
            for p, pid in zip(work.new, made.scalars().all()):
                p["id"] = pid
        if work.moved:
            db.execute(self.q["move"], [{"pid": p["id"], **{c: p[c] for c in MOVED}} for p in work.moved.values()])
        if work.sightings:
            db.execute(sightings.insert(), [{**row, "pothole_id": p["id"]} for p, row in work.sightings])
        if work.chunks:
            made = db.execute(
                chunks.insert().returning(chunks.c.id, sort_by_parameter_order=True), [r for r, _ in work.chunks]
            )
            cells = [
                {"chunk_id": c, "cell": k}
                for c, (_, keys) in zip(made.scalars().all(), work.chunks)
                for k in sorted(keys)
            ]
            if cells:
                db.execute(self.t["track_cells"].insert(), cells)
        if work.runs:
            db.execute(self.q["drove"], [{"run": r, "start": s, "metres": m} for r, (s, m) in work.runs.items()])
        if work.messages:
            db.execute(self.t["messages"].insert(), work.messages)
        self._passed_before(db, work)
        for run_id, seen in work.passes.items():
            self._passes(db, run_id, list(seen.values()))

    def _lock(self, db: Any, batch: list[Incoming]) -> None:
        """PostgreSQL: hold every cell, run and message id this batch touches until commit, taken in one order so
        two workers cannot deadlock. SQLite writes one transaction at a time anyway."""
        if db.dialect.name != "postgresql":
            return
        from sqlalchemy import text

        keys = set(self._cells(batch))
        for m in batch:
            for name in (m.run_name, m.id):
                keys.add(_LOCK_SPACE + int.from_bytes(hashlib.sha256(name.encode()).digest()[:5], "big"))
        db.execute(
            text(
                "SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT unnest(CAST(:keys AS bigint[])) AS k "
                "ORDER BY 1) AS locks"
            ),
            {"keys": sorted(keys)},
        )

    def _cells(self, batch: list[Incoming]) -> list[int]:
        """The keys of every cell the batch can read or write."""
        cells = {cell_of(lat, lon) for m in batch for _, lat, lon in m.points()}
        return sorted(set().union(*(near_cells(*c, self.radius_m) for c in cells))) if cells else []

    def _load(self, db: Any, batch: list[Incoming]) -> list[dict[str, Any]]:
        """The potholes near the batch's points: PostGIS's ST_DWithin where there is PostGIS, the cells otherwise."""
        from sqlalchemy import select, text

        potholes = self.t["potholes"]
        if self.postgis:
            # one GiST probe per event's point and per short piece of track: a probe's box is the shape's, so a
            # chunk's whole line (a kilometre of winding street) would test every pothole of its district; the
            # search reaches twice the radius, since a pothole just outside may move inside during this batch
            shapes = [_wkt(piece) for m in batch for piece in _pieces(m.points(), _PIECE)]
            if not shapes:
                return []
            ids = text(
                "SELECT DISTINCT p.id FROM unnest(CAST(:shapes AS text[])) AS q(wkt) "
                "JOIN potholes p ON ST_DWithin(p.geog, ST_GeogFromText(q.wkt), :reach, false)"
            ).bindparams(shapes=shapes, reach=self.radius_m * 2)
            return [dict(r._mapping) for r in db.execute(select(potholes).where(potholes.c.id.in_(ids)))]
        keys, rows = self._cells(batch), []
        for n in range(0, len(keys), _CHUNK):
            chunk = keys[n : n + _CHUNK]
            rows += [dict(r._mapping) for r in db.execute(select(potholes).where(potholes.c.cell.in_(chunk)))]
        return rows

    def _run(self, db: Any, m: Incoming, runs: dict[str, int]) -> int:
        from sqlalchemy import select

        table = self.t["runs"]
        key = hashlib.sha256(m.run_name.encode()).hexdigest()
        row = db.execute(select(table.c.id).where(table.c.key == key)).first()
        if row is None:
            row = db.execute(table.insert().values(key=key, run_dir=m.run_name, distance_m=0.0)).inserted_primary_key
        runs[m.run_name] = row[0]
        return row[0]

    def _passed_before(self, db: Any, work: Batch) -> None:
        """New potholes were passed by every run whose track, already here, came within the radius of them:
        messages arrive in any order, and a van that was offline for days sends its track late. One query per
        _CHUNK cells of the batch's new potholes."""
        import numpy as np

        by_key: dict[int, list[dict[str, Any]]] = {}
        for p in work.new:
            for k in near_cells(*cell_of(p["lat"], p["lon"]), self.radius_m):
                by_key.setdefault(k, []).append(p)
        keys = sorted(by_key)
        for n in range(0, len(keys), _CHUNK):
            chunk = keys[n : n + _CHUNK]
            near = list({id(p): p for k in chunk for p in by_key[k]}.values())
            places = np.array([[p["lat"], p["lon"]] for p in near])
            for run_id, text in db.execute(self.q["crossed"], {"keys": chunk}).all():
                points = np.array(json.loads(text), dtype=np.float64).reshape(-1, 3)
                for p, when in zip(near, first_within(points, places, self.radius_m)):
                    if when != float("inf"):
                        work.passed(run_id, p, when, False)

    def _passes(self, db: Any, run_id: int, seen: list[tuple[dict[str, Any], float, bool]]) -> None:
        """Record that the run passed each pothole (at a time, detected or not), then whether the last
        `repaired_after` passes of each all missed it. A few statements for the lot, not a few per pothole."""
        ids = [p["id"] for p, _, _ in seen]
        known = {r.pothole_id: r for r in db.execute(self.q["passed"], {"run": run_id, "ids": ids})}
        new, again, changed = [], [], []
        for p, when, detected in seen:
            row = known.get(p["id"])
            if row is None:
                new.append({"run_id": run_id, "pothole_id": p["id"], "time": when, "detected": detected})
            elif (detected and not row.detected) or when < row.time:
                again.append(
                    {"pass_id": row.id, "new_detected": row.detected or detected, "new_time": min(row.time, when)}
                )
            else:
                continue
            changed.append(p)
        if new:
            db.execute(self.t["passes"].insert(), new)
        if again:
            db.execute(self.q["repass"], again)
        if not changed:
            return
        history: dict[int, list[bool]] = {}
        for r in db.execute(self.q["history"], {"ids": [p["id"] for p in changed], "n": self.repaired_after}):
            history.setdefault(r.pothole_id, []).append(bool(r.detected))
        flips = []
        for p in changed:
            last = history.get(p["id"], [])
            repaired = len(last) == self.repaired_after and not any(last)
            if repaired != p["possibly_repaired"]:
                flips.append({"pid": p["id"], "repaired": repaired})
                p["possibly_repaired"] = repaired
        if flips:
            db.execute(self.q["repaired"], flips)

    def potholes(self, bbox: tuple[float, float, float, float] | None = None) -> list[dict[str, Any]]:
        """Every pothole, or those inside (west, south, east, north), with the runs that saw each."""
        from sqlalchemy import and_, or_, select

        potholes, sightings, runs = self.t["potholes"], self.t["sightings"], self.t["runs"]
        query = select(potholes).order_by(potholes.c.id)
        if bbox is not None:
            west, south, east, north = bbox
            lon_ok = (
                and_(potholes.c.lon >= west, potholes.c.lon <= east)
                if west <= east
                else or_(potholes.c.lon >= west, potholes.c.lon <= east)  # a box across 180 degrees
            )
            query = query.where(potholes.c.lat >= south, potholes.c.lat <= north, lon_ok)
        with self.engine.connect() as db:
            rows = [dict(r._mapping) for r in db.execute(query)]
            seen_by: dict[int, list[str]] = {}
            for r in db.execute(
                select(sightings.c.pothole_id, runs.c.run_dir).join(runs, runs.c.id == sightings.c.run_id).distinct()
            ):
                seen_by.setdefault(r.pothole_id, []).append(r.run_dir)
        for r in rows:
            r["runs"] = sorted(seen_by.get(r["id"], []))
        return rows

    def tracks(self) -> list[dict[str, Any]]:
        """Each run's track as [[lat, lon], ...]: the chunks in order, or the whole track of an older registry."""
        from sqlalchemy import select

        runs, chunks = self.t["runs"], self.t["track_chunks"]
        with self.engine.connect() as db:
            by_run: dict[int, list[list[float]]] = {}
            for r in db.execute(select(chunks.c.run_id, chunks.c.points).order_by(chunks.c.run_id, chunks.c.chunk)):
                points = [p[1:] for p in json.loads(r.points)]
                line = by_run.setdefault(r.run_id, [])
                line += points[1:] if line and points and points[0] == line[-1] else points
            return [
                {"run_dir": r.run_dir, "points": by_run.get(r.id) or json.loads(r.track or "[]")}
                for r in db.execute(select(runs.c.id, runs.c.run_dir, runs.c.track).order_by(runs.c.id))
            ]


def _pieces(points: list[Any], n: int) -> list[list[Any]]:
    """Runs of at most n points, each starting where the last ended, so no stretch between points is lost."""
    if len(points) <= n:
        return [points] if points else []
    return [points[k : k + n] for k in range(0, len(points) - 1, n - 1)]


def _wkt(points: list[tuple[float, float, float]]) -> str:
    """WKT in WGS 84 (longitude first) of an event's point or a track chunk's line."""
    xy = ",".join(f"{lon!r} {lat!r}" for _, lat, lon in points)
    return f"SRID=4326;LINESTRING({xy})" if len(points) > 1 else f"SRID=4326;POINT({xy})"
