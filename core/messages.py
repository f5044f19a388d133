"""The messages a van sends its fleet's office, defined once: the van builds them, the office checks them.

Two kinds, each with `kind`, `schema_version` and a stable `id` (a UUID derived from the vehicle, the run and
the item's number, the same on every retry, so the office drops duplicates by it):

- `event`: one closed pothole event: when, how sure, where (the peak frame's position) and its snapshot;
- `track`: a chunk of the road the run drove, thinned to a point every few metres, `[unix_time, lat, lon]` each;
  a chunk about every minute and one at the end (`final: true`). Without the track the office cannot tell
  "passed and saw nothing" from "never passed".
"""

from __future__ import annotations

import math
import uuid
from typing import Any

SCHEMA_VERSION = 1
KINDS = ("event", "track")
NAMESPACE = uuid.UUID("9b3f3c2e-7d1a-4c55-9a60-2b1f0e6d8a41")  # pothole-edge messages


def message_id(vehicle: str, run: str, number: int, kind: str = "event") -> str:
    """Events keep the ids vans sent before tracks existed: `vehicle/run/number`."""
    name = f"{vehicle}/{run}/{number}" if kind == "event" else f"{vehicle}/{run}/{kind}/{number}"
    return str(uuid.uuid5(NAMESPACE, name))


def track_message(vehicle: str, run: str, chunk: int, points: list[tuple[float, float, float]], final: bool) -> dict:
    return {
        "kind": "track",
        "schema_version": SCHEMA_VERSION,
        "id": message_id(vehicle, run, chunk, "track"),
        "vehicle": vehicle,
        "run": run,
        "chunk": chunk,
        "final": final,
        "points": [[round(t, 3), round(lat, 7), round(lon, 7)] for t, lat, lon in points],
    }


class MessageError(ValueError):
    """A message the office refuses: the reason is logged and counted."""


def check(message: Any) -> str:
    """The message's kind, or MessageError saying what is wrong with it."""
    if not isinstance(message, dict):
        raise MessageError("not a JSON object")
    kind = message.get("kind", "event")  # vans before schema 1 sent events without a kind
    if kind not in KINDS:
        raise MessageError(f"unknown kind {kind!r}")
    version = message.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise MessageError(f"schema_version {version!r} is newer than this office reads ({SCHEMA_VERSION})")
    for field in ("id" if kind == "track" else "event_id", "vehicle", "run"):
        if not isinstance(message.get(field), str) or not message[field]:
            raise MessageError(f"{field} must be a non-empty string")
    if kind == "track":
        points = message.get("points")
        if not isinstance(points, list) or not all(_point(p) for p in points):
            raise MessageError("points must be [unix_time, lat, lon] with finite values and real coordinates")
    else:
        where = message.get("position")
        if where is not None and not (isinstance(where, dict) and _point([0.0, where.get("lat"), where.get("lon")])):
            raise MessageError("position must have a real lat and lon")
        prob = message.get("peak_prob")
        if not _number(prob) or not 0 <= prob <= 1:
            raise MessageError("peak_prob must be a number from 0 to 1")
    return kind


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _point(p: Any) -> bool:
    return (
        isinstance(p, list) and len(p) == 3 and all(_number(v) for v in p) and -90 <= p[1] <= 90 and -180 <= p[2] <= 180
    )
