"""edge-map's offline path: an edge-run output folder, copied off a van, turned into the messages the van would
have sent, so the registry has one way in. A run that was delivered live and is copied later gives the same ids,
so the office keeps one copy."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import math
from pathlib import Path
from typing import Any

from pothole_edge.errors import UsageError
from pothole_edge.messages import MAX_SNAPSHOT_BYTES, TrackChunks, event_message, message_id

log = logging.getLogger("office")


def run_messages(run_dir: Path) -> list[dict[str, Any]]:
    """The folder's closed, positioned events (snapshots attached) and its track, as messages."""
    events_path, predictions_path = run_dir / "events.jsonl", run_dir / "predictions.jsonl"
    if not events_path.is_file() or not predictions_path.is_file():
        raise UsageError(
            f"{run_dir} is not an edge-run output folder (no events.jsonl or predictions.jsonl); "
            "pass the folders edge-run wrote"
        )
    summary = _object(run_dir / "summary.json")
    config = _object(run_dir / "config.json")
    vehicle = _name(summary.get("delivery_vehicle")) or _name(config.get("vehicle_id")) or "local"
    run = _name(summary.get("delivery_run")) or f"{_text(run_dir.resolve().name)}@{summary.get('started_at')}"
    messages, bad = [], 0
    events, skipped = _jsonl(events_path)
    unplaced = 0
    for e in events:
        where = e.get("peak_position")
        if e.get("status") != "closed":
            continue  # still open: not a sighting yet
        if where is None or (isinstance(where, dict) and where.get("lat") is None):
            unplaced += 1  # seen without a fix: not a sighting, and nothing wrong
            continue
        if not (isinstance(e.get("id"), int) and _place(where) and _number(where.get("gps_time", 0.0))) or not (
            _number(e.get("peak_prob")) and 0 <= e["peak_prob"] <= 1
        ):
            bad += 1
            continue
        position = {"lat": where["lat"], "lon": where["lon"]}
        # a video's times are the file's clock: the position carries GPS time where it was set
        when = where.get("gps_time", e.get("peak_time"))
        if _number(when):
            position["gps_time"] = when
        peak = _iso(when)
        snapshot = _snapshot(run_dir / "snapshots" / f"event_{e['id']:05d}.jpg")
        messages.append(
            event_message(vehicle, run, e["id"], e["peak_prob"], position, {"peak_at": peak}, snapshot=snapshot)
        )
    rows, bad_rows = _jsonl(predictions_path)
    chunks = TrackChunks(vehicle, run)
    for r in rows:
        if r.get("lat") is None or r.get("time") is None:
            continue
        if not (_place(r) and _number(r["time"]) and _number(r.get("gps_time", 0.0))):
            bad_rows += 1
            continue
        if (message := chunks.add({**r, "gps_time": r.get("gps_time", r["time"])})) is not None:
            messages.append(message)
    last = chunks.finish()
    # a folder still being written ends in a partial chunk; read again later, that chunk has grown under the same
    # number, so the folder's last chunk is named by its length too, and the grown one is not taken as a duplicate
    last["id"] = message_id(vehicle, run, f"{last['chunk']}/{len(last['points'])}", "track")
    messages.append(last)
    if bad or bad_rows:
        log.warning("%s: %d event(s) and %d frame row(s) unusable, skipped", run_dir, bad, bad_rows)
    if unplaced and len(messages) == 1 and not messages[0]["points"]:
        log.warning(
            "%s: %d event(s) and no positions: the run was recorded without GPS, so nothing of it can go on the "
            "map; record with edge-run --gps (a GPX or NMEA file, gpsd or a serial receiver)",
            run_dir,
            unplaced,
        )
    return messages


def _snapshot(path: Path) -> dict[str, Any] | None:
    """The JPEG to carry, if it is one of sane size: the office checks it again."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_SNAPSHOT_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    return {"path": path.name, "jpeg_base64": base64.b64encode(data).decode()}


def _object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _name(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= 200 else None


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


def _iso(t: Any) -> str | None:
    if not _number(t):
        return None
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(name: str) -> str:
    """A folder name that is not UTF-8 keeps its bytes as \\x escapes instead of failing."""
    import os

    return os.fsencode(name).decode("utf-8", "backslashreplace")
