"""The messages a van sends its fleet's office, defined once: the van builds them, the office checks them.

Two kinds, each with `kind`, `schema_version` and a stable id (a UUID derived from the vehicle, the run and the
item's number, the same on every retry, so the office drops duplicates by it):

- `event` (id in `event_id`): one closed pothole event: when, how sure, where (the peak frame's position) and
  its snapshot, named by its path on the van, or carried as `jpeg_base64` with `--attach-snapshot`;
- `track` (id in `id`): a chunk of the road the run drove, thinned to a point every few metres,
  `[unix_time, lat, lon]` each; a chunk about every minute and one at the end (`final: true`). Without the track
  the office cannot tell "passed and saw nothing" from "never passed".

Webhooks sign what they send: `X-Pothole-Timestamp` is the Unix time of sending, and `X-Pothole-Signature` is
`sha256=` and the hex HMAC-SHA256, under the shared secret, of the timestamp, a dot and the exact body. The office
refuses a timestamp outside its window, so a recorded request cannot be replayed later; a message that waited
days in a van's outbox is signed when it is finally sent, so it still arrives.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import math
import uuid
from typing import Any

from pothole_edge.geo import distance_m

SCHEMA_VERSION = 1
KINDS = ("event", "track")
NAMESPACE = uuid.UUID("9b3f3c2e-7d1a-4c55-9a60-2b1f0e6d8a41")  # pothole-edge messages
SIGNATURE_HEADER = "X-Pothole-Signature"
TIMESTAMP_HEADER = "X-Pothole-Timestamp"
MAX_SNAPSHOT_BYTES = 4 << 20  # an attached JPEG larger than this is refused with its message
TRACK_STEP_M = 3.0
TRACK_CHUNK_S = 60.0


def message_id(vehicle: str, run: str, number: int | str, kind: str = "event") -> str:
    """Events keep the ids vans sent before tracks existed: `vehicle/run/number`."""
    name = f"{vehicle}/{run}/{number}" if kind == "event" else f"{vehicle}/{run}/{kind}/{number}"
    return str(uuid.uuid5(NAMESPACE, name))


def event_message(
    vehicle: str,
    run: str,
    number: int,
    peak_prob: float,
    position: dict[str, Any] | None,
    times: dict[str, str | None],
    frames: list[int] | None = None,
    snapshot: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One closed event. `times` holds `opened_at`, `closed_at` and `peak_at` as ISO 8601 (None where unknown)."""
    return {
        "kind": "event",
        "schema_version": SCHEMA_VERSION,
        "event_id": message_id(vehicle, run, number),
        "vehicle": vehicle,
        "run": run,
        "event": number,
        **{k: times.get(k) for k in ("opened_at", "closed_at", "peak_at")},
        "peak_prob": round(float(peak_prob), 6),
        "frames": frames,
        "position": position if position and position.get("lat") is not None else None,
        "snapshot": snapshot,
        "model": model or {},
    }


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


class TrackChunks:
    """The road a run drove as track messages: a point every `step_m`, a chunk every `chunk_s` of GPS time."""

    def __init__(self, vehicle: str, run: str, step_m: float = TRACK_STEP_M, chunk_s: float | None = None) -> None:
        self.vehicle, self.run, self.step_m = vehicle, run, step_m
        self.chunk_s = chunk_s or TRACK_CHUNK_S  # read when made: a test may shorten it
        self.points: list[tuple[float, float, float]] = []
        self.last: tuple[float, float, float] | None = None
        self.chunk = 0

    def add(self, where: dict[str, Any] | None) -> dict[str, Any] | None:
        """A frame's position (with `gps_time`); returns a track message when a chunk is full."""
        if not where or where.get("lat") is None or where.get("gps_time") is None:
            return None
        point = (float(where["gps_time"]), float(where["lat"]), float(where["lon"]))
        if self.last is not None and distance_m(self.last[1], self.last[2], point[1], point[2]) < self.step_m:
            return None
        self.last = point
        self.points.append(point)
        if point[0] - self.points[0][0] >= self.chunk_s:
            return self._flush(final=False)
        return None

    def finish(self) -> dict[str, Any]:
        """The last chunk, sent even when empty, so the office knows the run's track is complete."""
        return self._flush(final=True)

    def _flush(self, final: bool) -> dict[str, Any]:
        self.chunk += 1
        message = track_message(self.vehicle, self.run, self.chunk, self.points, final)
        # the next chunk starts where this one ended, so the office's line has no gap between chunks
        self.points = self.points[-1:] if not final else []
        return message


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The webhook signature of a body sent at `timestamp` (Unix seconds)."""
    return "sha256=" + hmac.new(secret, str(int(timestamp)).encode() + b"." + body, hashlib.sha256).hexdigest()


class MessageError(ValueError):
    """A message the office refuses: the reason is logged and counted."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason  # a short, fixed name the office counts refusals by


def verify(
    secret: bytes, body: bytes, timestamp: str | None, signature: str | None, now: float, window_s: float
) -> None:
    """Nothing, or MessageError: unsigned, a bad signature, too old (a replay) or from the future."""
    if not signature or not timestamp:
        raise MessageError("unsigned", f"no {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header")
    try:
        sent = int(timestamp)
    except ValueError:
        raise MessageError("unsigned", f"{TIMESTAMP_HEADER} is not Unix seconds") from None
    # compare first, in constant time: the window is checked only for a request that knows the secret
    if not hmac.compare_digest(sign(secret, body, sent).encode(), signature.strip().encode()):
        raise MessageError("bad signature")
    if sent > now + window_s:
        raise MessageError("from the future", f"sent {sent - now:.0f} s ahead of the office's clock")
    if sent < now - window_s:
        raise MessageError("replayed", f"signed {now - sent:.0f} s ago, outside the {window_s:g} s window")


def check(message: Any) -> str:
    """The message's kind, or MessageError saying what is wrong with it."""
    if not isinstance(message, dict):
        raise MessageError("malformed", "not a JSON object")
    kind = message.get("kind", "event")  # vans before schema 1 sent events without a kind
    if kind not in KINDS:
        raise MessageError("malformed", f"unknown kind {kind!r}")
    version = message.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
        raise MessageError(
            "malformed", f"schema_version {version!r} is newer than this office reads ({SCHEMA_VERSION})"
        )
    for field in ("vehicle", "run"):
        if not isinstance(message.get(field), str) or not message[field] or len(message[field]) > 200:
            raise MessageError("malformed", f"{field} must be a non-empty string of at most 200 characters")
    id_field = "id" if kind == "track" else "event_id"
    if not _uuid(message.get(id_field)):
        raise MessageError("malformed", f"{id_field} must be a UUID")
    if kind == "track":
        points = message.get("points")
        if not isinstance(points, list) or not all(_point(p) for p in points):
            raise MessageError("malformed", "points must be [unix_time, lat, lon] with finite values and real places")
        return kind
    where = message.get("position")
    if where is not None and not (isinstance(where, dict) and _point([0.0, where.get("lat"), where.get("lon")])):
        raise MessageError("malformed", "position must have a real lat and lon")
    if where is not None and not _number(where.get("gps_time", 0.0)):
        raise MessageError("malformed", "position.gps_time must be a number")
    prob = message.get("peak_prob")
    if not _number(prob) or not 0 <= prob <= 1:
        raise MessageError("malformed", "peak_prob must be a number from 0 to 1")
    if not isinstance(message.get("event"), int) or isinstance(message["event"], bool):
        raise MessageError("malformed", "event must be the event's number")
    snapshot_jpeg(message)
    return kind


def event_time(message: dict[str, Any], received: float) -> float:
    """When the pothole was seen, as Unix time: the GPS time of the peak, its ISO time, or when it arrived."""
    where = message.get("position") or {}
    if _number(where.get("gps_time")):
        return float(where["gps_time"])
    text = message.get("peak_at")
    if isinstance(text, str):
        try:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return received
        return when.timestamp() if when.tzinfo else when.replace(tzinfo=dt.timezone.utc).timestamp()
    return received


def snapshot_jpeg(message: dict[str, Any]) -> bytes | None:
    """The attached snapshot's bytes, checked to be a JPEG of bounded size; MessageError otherwise."""
    shot = message.get("snapshot")
    data = shot.get("jpeg_base64") if isinstance(shot, dict) else None
    if data is None:
        return None
    if not isinstance(data, str) or len(data) > MAX_SNAPSHOT_BYTES * 4 // 3 + 4:
        raise MessageError(
            "malformed", f"snapshot.jpeg_base64 must be base64 text of at most {MAX_SNAPSHOT_BYTES} bytes"
        )
    try:
        jpeg = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise MessageError("malformed", "snapshot.jpeg_base64 is not base64") from None
    if not jpeg.startswith(b"\xff\xd8\xff"):
        raise MessageError("malformed", "the attached snapshot is not a JPEG")
    return jpeg


def _uuid(v: Any) -> bool:
    """Ids name the office's files (snapshots/ID.jpg): only the canonical 36-character form passes."""
    try:
        return isinstance(v, str) and str(uuid.UUID(v)) == v
    except ValueError:
        return False


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _point(p: Any) -> bool:
    return (
        isinstance(p, list) and len(p) == 3 and all(_number(v) for v in p) and -90 <= p[1] <= 90 and -180 <= p[2] <= 180
    )
