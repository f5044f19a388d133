"""Where the vehicle was: fixes from a track file (GPX, NMEA), the gpsd daemon, or a serial NMEA receiver,
and the position at any moment, interpolated between fixes and never invented across a gap.

Parsing is left to maintained libraries (gpxpy, pynmea2, pyserial); this module turns their output into
fixes (Unix time, latitude, longitude, speed, heading) and answers `at(t)`.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pothole_edge.errors import UsageError
from pothole_edge.geo import distance_m

log = logging.getLogger("edge")
KNOT_MPS = 0.514444


@dataclass(frozen=True)
class Fix:
    t: float  # Unix time, seconds
    lat: float
    lon: float
    speed_mps: float | None = None
    heading_deg: float | None = None


@dataclass(frozen=True)
class Position:
    lat: float
    lon: float
    speed_mps: float | None
    heading_deg: float | None
    fix_age_s: float  # time to the nearest fix it was interpolated from

    def to_dict(self) -> dict[str, float | None]:
        r = lambda v, n: None if v is None else round(v, n)  # noqa: E731
        return {
            "lat": round(self.lat, 7),
            "lon": round(self.lon, 7),
            "speed_mps": r(self.speed_mps, 2),
            "heading_deg": r(self.heading_deg, 1),
            "fix_age_s": round(self.fix_age_s, 3),
        }


MAX_TRACK_FILE = 32 * 2**20  # a day's GPX at 1 Hz is about 10 MB; gpxpy holds a whole file in memory, 15x its size
MAX_LINE = 64 * 1024  # a gpsd report or an NMEA sentence is far shorter


def fix_or_none(t: Any, lat: Any, lon: Any, speed: Any = None, heading: Any = None) -> Fix | None:
    """The one check every GPS source's values pass: a finite time, a latitude within 90 degrees and a longitude
    within 180, or no fix at all. Speed and heading that are not finite, or out of range, are dropped alone."""
    if not all(_real(v) for v in (t, lat, lon)) or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    speed = float(speed) if _real(speed) and speed >= 0 else None
    heading = float(heading) % 360 if _real(heading) else None
    return Fix(float(t), float(lat), float(lon), speed, heading)


def _real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


NO_FIX = {"lat": None, "lon": None, "speed_mps": None, "heading_deg": None, "fix_age_s": None}


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    x = math.sin(dl) * math.cos(p2)
    y = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return (math.degrees(math.atan2(x, y)) + 360) % 360


class Track:
    """Fixes in time order; `at(t)` interpolates between the two around t when both are within `max_age_s`."""

    def __init__(self, fixes: Iterable[Fix | None] = (), max_age_s: float = 2.0) -> None:
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self.fixes: list[Fix] = []
        self._times: list[float] = []
        given = list(fixes)
        self.rejected = sum(1 for f in given if f is None)  # fixes that failed fix_or_none: counted, never used
        for fix in sorted((f for f in given if f is not None), key=lambda f: f.t):
            self.add(fix)

    def add(self, fix: Fix | None) -> None:
        if fix is None:
            self.rejected += 1
            return
        with self._lock:
            if self._times and fix.t <= self._times[-1]:
                if fix.t == self._times[-1]:
                    return  # a receiver repeats a fix in two sentences
                i = bisect.bisect(self._times, fix.t)
                self._times.insert(i, fix.t)
                self.fixes.insert(i, fix)
                return
            self._times.append(fix.t)
            self.fixes.append(fix)

    def at(self, t: float) -> Position | None:
        with self._lock:
            i = bisect.bisect_right(self._times, t)
            before = self.fixes[i - 1] if i > 0 else None
            after = self.fixes[i] if i < len(self.fixes) else None
            earlier = self.fixes[i - 2] if i > 1 else None
        fresh = [f for f in (before, after) if f is not None and abs(f.t - t) <= self.max_age_s]
        if not fresh:
            return None
        if len(fresh) == 2:
            return _position(before, after, (t - before.t) / (after.t - before.t), min(t - before.t, after.t - t))
        f = fresh[0]
        # at an end of the track or next to a gap: that fix's place; its motion from the fix before it, when fresh
        prev = earlier if f is before else None
        motion = _position(prev, f, 1.0, 0.0) if prev is not None and f.t - prev.t <= self.max_age_s else None
        speed = f.speed_mps if f.speed_mps is not None else (motion.speed_mps if motion else None)
        heading = f.heading_deg if f.heading_deg is not None else (motion.heading_deg if motion else None)
        return Position(f.lat, f.lon, speed, heading, abs(f.t - t))

    def span(self) -> tuple[float, float] | None:
        return (self._times[0], self._times[-1]) if self._times else None


def _lerp(a: float | None, b: float | None, w: float) -> float | None:
    if a is None or b is None:
        return a if b is None else b
    return a + (b - a) * w


def _position(a: Fix, b: Fix, w: float, age: float) -> Position:
    heading = _lerp_angle(a.heading_deg, b.heading_deg, w)
    if heading is None and (a.lat, a.lon) != (b.lat, b.lon):
        heading = bearing_deg(a.lat, a.lon, b.lat, b.lon)
    speed = _lerp(a.speed_mps, b.speed_mps, w)
    if speed is None and b.t > a.t:
        speed = distance_m(a.lat, a.lon, b.lat, b.lon) / (b.t - a.t)
    # the short way round: from 179.9 to -179.9 is 0.2 degrees, not 359.8 through Asia
    dlon = (b.lon - a.lon + 540) % 360 - 180
    lon = (a.lon + dlon * w + 540) % 360 - 180
    return Position(a.lat + (b.lat - a.lat) * w, lon, speed, heading, age)


def _lerp_angle(a: float | None, b: float | None, w: float) -> float | None:
    if a is None or b is None:
        return a if b is None else b
    d = ((b - a + 540) % 360) - 180
    return (a + d * w) % 360


def read_gpx(path: Path) -> list[Fix | None]:
    import gpxpy

    try:
        size = path.stat().st_size
    except OSError as e:
        raise UsageError(f"cannot read GPX track {path}: {e.strerror}") from None
    if size > MAX_TRACK_FILE:
        raise UsageError(
            f"GPX track {path} is {size / 2**20:.0f} MiB, over the {MAX_TRACK_FILE // 2**20} MiB a track file may be; "
            "split it by drive"
        )
    try:
        with open(path, encoding="utf-8") as f:
            gpx = gpxpy.parse(f)
    except (OSError, UnicodeDecodeError, gpxpy.gpx.GPXException) as e:
        raise UsageError(f"cannot read GPX track {path}: {str(e).splitlines()[0][:160]}; pass a GPX 1.1 file") from None
    fixes = []
    for track in gpx.tracks:
        for segment in track.segments:
            for p in segment.points:
                if p.time is None:
                    continue
                t = p.time if p.time.tzinfo else p.time.replace(tzinfo=timezone.utc)
                fixes.append(fix_or_none(t.timestamp(), p.latitude, p.longitude, p.speed, p.course))
    return fixes


def parse_nmea(lines: Iterable[str]) -> Iterable[Fix]:
    """Fixes from RMC (date, time, position, speed, course) and GGA (time, position: dated by the last RMC)."""
    import pynmea2

    date = None
    for line in lines:
        line = line.strip()
        if not line.startswith("$"):
            continue
        try:
            msg = pynmea2.parse(line, check=True)
        except (pynmea2.ParseError, ValueError, AttributeError):
            continue
        kind = type(msg).__name__
        if kind == "RMC":
            if msg.status != "A" or msg.datestamp is None or msg.timestamp is None:
                continue
            date = msg.datestamp
            t = datetime.combine(date, msg.timestamp).replace(tzinfo=timezone.utc).timestamp()
            speed = float(msg.spd_over_grnd) * KNOT_MPS if msg.spd_over_grnd not in (None, "") else None
            course = float(msg.true_course) if msg.true_course not in (None, "") else None
            yield fix_or_none(t, msg.latitude, msg.longitude, speed, course) if _minutes_ok(msg) else None
        elif kind == "GGA" and date is not None and msg.timestamp is not None:
            if not msg.gps_qual or int(msg.gps_qual) == 0:
                continue
            t = datetime.combine(date, msg.timestamp).replace(tzinfo=timezone.utc).timestamp()
            yield fix_or_none(t, msg.latitude, msg.longitude) if _minutes_ok(msg) else None


def _minutes_ok(msg: Any) -> bool:
    """ddmm.mmmm and dddmm.mmmm: the minutes must be under 60 (pynmea2 would turn 99 minutes into 1.65 degrees)."""
    try:
        return float(msg.lat[2:]) < 60 and float(msg.lon[3:]) < 60
    except (TypeError, ValueError, IndexError):
        return False


def read_nmea(path: Path) -> list[Fix | None]:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return _merge_sentences(parse_nmea(f))
    except OSError as e:
        raise UsageError(f"cannot read NMEA log {path}: {e.strerror}") from None


def _merge_sentences(fixes: Iterable[Fix | None]) -> list[Fix | None]:
    """One fix per instant: RMC's speed and course win over a GGA of the same second. Rejected fixes (None) are
    kept, to be counted."""
    by_time: dict[float, Fix] = {}
    rejected: list[None] = []
    for f in fixes:
        if f is None:
            rejected.append(None)
            continue
        old = by_time.get(f.t)
        if old is None or (old.speed_mps is None and f.speed_mps is not None):
            by_time[f.t] = f
    return [*sorted(by_time.values(), key=lambda f: f.t), *rejected]


class LiveGps:
    """A thread that feeds a Track from gpsd (TPV reports) or a serial NMEA receiver, reconnecting when it drops."""

    def __init__(self, kind: str, target: Any, track: Track, stop: threading.Event) -> None:
        self.kind, self.target, self.track, self.stop = kind, target, track, stop
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"gps-{kind}", daemon=True)

    def start(self) -> LiveGps:
        self._thread.start()
        return self

    def _run(self) -> None:
        delay = 0.5
        while not self.stop.is_set():
            try:
                for fix in self._gpsd() if self.kind == "gpsd" else self._serial():
                    self.track.add(fix)
                    delay = 0.5
                    if self.stop.is_set():
                        return
            except (OSError, ValueError) as e:
                if self.error != str(e):
                    log.warning("GPS %s: %s; retrying", self.target, e)
                self.error = str(e)
            self.stop.wait(delay)
            delay = min(delay * 2, 5.0)

    def _gpsd(self) -> Iterable[Fix | None]:
        host, port = self.target
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(b'?WATCH={"enable":true,"json":true};\n')
            f = s.makefile("r", encoding="utf-8", errors="replace")
            for line in _bounded_lines(f):
                report = _tpv(line)
                if report is not None:
                    yield report if isinstance(report, Fix) else None

    def _serial(self) -> Iterable[Fix]:
        import serial

        device, baud = self.target
        with serial.serial_for_url(device, baud, timeout=2) as port:
            lines = (raw.decode("ascii", "replace") for raw in iter(lambda: port.readline(MAX_LINE), b""))
            yield from parse_nmea(line for line in lines if len(line) < MAX_LINE)

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)


def _tpv(line: str) -> Fix | bool | None:
    """A gpsd report: a Fix for a usable TPV, False for a TPV that fails the checks, None for other reports."""
    try:
        report = json.loads(line)
    except ValueError:
        return False
    if not isinstance(report, dict) or report.get("class") != "TPV":
        return None
    mode, when = report.get("mode"), report.get("time")
    if not isinstance(mode, int) or isinstance(mode, bool) or mode < 2:
        return None  # no fix yet: not an error
    if not isinstance(when, str):
        return False
    try:
        t = datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return False
    return fix_or_none(t, report.get("lat"), report.get("lon"), report.get("speed"), report.get("track")) or False


def _bounded_lines(f: Any) -> Iterable[str]:
    """Lines of at most MAX_LINE characters; a longer one (a stream without newlines) is skipped, not held."""
    while True:
        line = f.readline(MAX_LINE)
        if not line:
            return
        if len(line) >= MAX_LINE and not line.endswith("\n"):
            while line and not line.endswith("\n"):  # drop the rest of the runaway line
                line = f.readline(MAX_LINE)
            yield ""
            continue
        yield line


def _port(text: str) -> bool:
    return text.isdigit() and 1 <= int(text) <= 65535


def open_gps(source: str, max_age_s: float, stop: threading.Event) -> tuple[Track, LiveGps | None, str]:
    """The track for `--gps SOURCE`: a .gpx or .nmea file, gpsd[:HOST:PORT], or serial:DEVICE[@BAUD]."""
    if source == "gpsd" or source.startswith("gpsd:"):
        parts = source.split(":")
        if len(parts) not in (1, 3) or (len(parts) == 3 and not (parts[1] and _port(parts[2]))):
            raise UsageError(f"--gps {source!r}: give gpsd, or gpsd:HOST:PORT with a port from 1 to 65535")
        host, port = (parts[1], int(parts[2])) if len(parts) == 3 else ("127.0.0.1", 2947)
        track = Track(max_age_s=max_age_s)
        return track, LiveGps("gpsd", (host, port), track, stop), f"gpsd at {host}:{port}"
    if source.startswith("serial:"):
        device, _, baud = source[len("serial:") :].partition("@")
        if not device or (baud and not (baud.isdigit() and 50 <= int(baud) <= 4_000_000)):
            raise UsageError(f"--gps {source!r}: give serial:DEVICE or serial:DEVICE@BAUD, BAUD a number like 4800")
        track = Track(max_age_s=max_age_s)
        return (
            track,
            LiveGps("serial", (device, int(baud or 4800)), track, stop),
            f"NMEA on {device} at {baud or 4800} baud",
        )
    path = Path(source)
    if not path.is_file():
        raise UsageError(
            f"--gps {source} is neither a track file (.gpx, .nmea) that exists, nor gpsd[:HOST:PORT], "
            "nor serial:DEVICE[@BAUD]"
        )
    read = read_gpx(path) if path.suffix.lower() == ".gpx" else read_nmea(path)
    fixes = [f for f in read if f is not None]
    if len(fixes) < len(read):
        log.warning("--gps %s: %d fix(es) dropped: impossible positions or times", source, len(read) - len(fixes))
    if not fixes:
        raise UsageError(
            f"--gps {source} holds no timed fixes; a GPX needs <time> on its track points, "
            "an NMEA log valid RMC sentences"
        )
    track = Track(read, max_age_s)
    return track, None, f"track {path} ({len(fixes)} fixes)"


def mp4_creation_time(path: str | Path) -> float | None:
    """The `creation_time` of an MP4/MOV container (its mvhd box), as Unix time; None when absent or zero."""
    import struct

    mp4_epoch = datetime(1904, 1, 1, tzinfo=timezone.utc).timestamp()
    try:
        with open(path, "rb") as f:
            data = f.read(64 << 20)
    except OSError:
        return None

    def boxes(start: int, end: int) -> Iterable[tuple[bytes, int, int]]:
        i = start
        while i + 8 <= end:
            size, kind = struct.unpack(">I4s", data[i : i + 8])
            header = 8
            if size == 1 and i + 16 <= end:
                size, header = struct.unpack(">Q", data[i + 8 : i + 16])[0], 16
            elif size == 0:
                size = end - i
            if size < header:
                return
            yield kind, i + header, min(i + size, end)
            i += size

    for kind, body, end in boxes(0, len(data)):
        if kind != b"moov":
            continue
        for inner, ibody, _ in boxes(body, end):
            if inner == b"mvhd":
                version = data[ibody]
                created = (
                    struct.unpack(">Q", data[ibody + 4 : ibody + 12])[0]
                    if version == 1
                    else struct.unpack(">I", data[ibody + 4 : ibody + 8])[0]
                )
                return mp4_epoch + created if created else None
    return None


def parse_start(text: str) -> float:
    """--video-start: ISO 8601 with a zone, e.g. 2026-11-26T08:15:00+01:00."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--video-start {text!r} is not ISO 8601; give it with a zone, e.g. 2026-11-26T08:15:00+01:00"
        ) from None
    if t.tzinfo is None:
        raise UsageError(f"--video-start {text!r} has no time zone; add one, e.g. {text}Z or {text}+01:00")
    return t.timestamp()


class Locator:
    """Gives each frame its position: the frame's time on the GPS clock (`gps_time`, Unix), then the track there.

    Live frames carry Unix time already; a video's frames are seconds from its start, which comes from
    --video-start or the container's creation_time. `offset_s` corrects a camera clock that drifts.
    Counts frames with and without a fix and the distance driven between fixes.
    """

    def __init__(self, track: Track, start: float | None, offset_s: float) -> None:
        self.track, self.start, self.offset_s = track, start, offset_s
        self.with_fix = self.without_fix = 0
        self.distance_m = 0.0
        self._last: Position | None = None

    def at(self, timestamp: float | None) -> dict[str, Any]:
        if timestamp is None:
            self.without_fix += 1
            return dict(NO_FIX)
        t = (self.start or 0.0) + timestamp + self.offset_s
        pos = self.track.at(t)
        if pos is None:
            self.without_fix += 1
            return dict(NO_FIX) | {"gps_time": round(t, 3)}
        self.with_fix += 1
        if self._last is not None:
            self.distance_m += distance_m(self._last.lat, self._last.lon, pos.lat, pos.lon)
        self._last = pos
        return pos.to_dict() | {"gps_time": round(t, 3)}

    def summary(self) -> dict[str, Any]:
        return {
            "frames_with_fix": self.with_fix,
            "frames_without_fix": self.without_fix,
            "distance_m": round(self.distance_m, 1),
            "fixes_rejected": self.track.rejected,
        }
