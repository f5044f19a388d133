"""The disk outbox that makes delivery at-least-once: every event is committed here before anything is sent,
and removed only when its destination confirmed it (an MQTT PUBACK, an HTTP 2xx).

SQLite in WAL mode, one row per (event, destination). It lives at one path for every run (by default in the
user's state directory), so a run after a reboot sends what an earlier run left. It has a size cap: when full,
the oldest pending message goes, and that is counted and logged, never silent.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("edge")
SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    payload TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    UNIQUE (event_id, destination)
);
CREATE TABLE IF NOT EXISTS dropped (destination TEXT PRIMARY KEY, count INTEGER NOT NULL);
"""


def default_path() -> Path:
    """$XDG_STATE_HOME/pothole-edge/outbox.sqlite, or ~/.local/state/pothole-edge/outbox.sqlite."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "pothole-edge" / "outbox.sqlite"


class Outbox:
    """Thread-safe: each thread gets its own connection; writes commit before they return."""

    def __init__(self, path: str | Path, max_messages: int = 100_000) -> None:
        self.path, self.max_messages = Path(path), max_messages
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._db() as db:
            db.executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a committed event survives a power cut
            self._local.db = db
        return db

    def put(self, event_id: str, destination: str, payload: dict[str, Any]) -> bool:
        """Commit one message; False when it was queued already. The oldest message goes when the box is full."""
        db = self._db()
        with _transaction(db):
            cur = db.execute(
                "INSERT OR IGNORE INTO messages (event_id, destination, payload, created) VALUES (?, ?, ?, ?)",
                (event_id, destination, json.dumps(payload, separators=(",", ":")), time.time()),
            )
            if cur.rowcount == 0:
                return False
            over = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] - self.max_messages
            if over > 0:
                for row in db.execute(
                    "SELECT id, destination, event_id FROM messages ORDER BY id LIMIT ?", (over,)
                ).fetchall():
                    db.execute("DELETE FROM messages WHERE id = ?", (row[0],))
                    db.execute(
                        "INSERT INTO dropped VALUES (?, 1) ON CONFLICT(destination) DO UPDATE SET count = count + 1",
                        (row[1],),
                    )
                    log.warning(
                        "outbox %s is full (%d messages): dropped the oldest, event %s for %s",
                        self.path,
                        self.max_messages,
                        row[2],
                        row[1],
                    )
        return True

    def due(self, destination: str, limit: int = 20) -> list[tuple[int, dict[str, Any], int]]:
        """(id, payload, attempts) of messages whose next try is now, oldest first."""
        rows = (
            self._db()
            .execute(
                "SELECT id, payload, attempts FROM messages WHERE destination = ? AND next_try <= ? "
                "ORDER BY id LIMIT ?",
                (destination, time.time(), limit),
            )
            .fetchall()
        )
        return [(r[0], json.loads(r[1]), r[2]) for r in rows]

    def done(self, message_id: int) -> None:
        self._db().execute("DELETE FROM messages WHERE id = ?", (message_id,))

    def retry_later(self, message_id: int, attempts: int, delay_s: float) -> None:
        self._db().execute(
            "UPDATE messages SET attempts = ?, next_try = ? WHERE id = ?", (attempts, time.time() + delay_s, message_id)
        )

    def holds(self, event_id: str) -> bool:
        """Whether any destination still waits for this event."""
        return (
            self._db().execute("SELECT 1 FROM messages WHERE event_id = ? LIMIT 1", (event_id,)).fetchone() is not None
        )

    def pending(self, destination: str) -> int:
        return self._db().execute("SELECT COUNT(*) FROM messages WHERE destination = ?", (destination,)).fetchone()[0]

    def dropped(self, destination: str) -> int:
        row = self._db().execute("SELECT count FROM dropped WHERE destination = ?", (destination,)).fetchone()
        return row[0] if row else 0

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class _transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: Any, *_: Any) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
