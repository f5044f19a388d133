"""A synthetic drive: a straight road north from a start point, a GPX and an NMEA log of it, and a video whose
bright (pothole) frames sit at known places along it. Tests use it to check positions and the registry."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np

from tests.test_edge import BRIGHT, DARK

START = datetime(2026, 11, 26, 8, 0, 0, tzinfo=timezone.utc)
LAT0, LON0 = 52.0, 13.0
SPEED = 10.0  # m/s, north
FPS = 10.0
M_PER_DEG_LAT = 111_195.0


def position(t: float, jitter_m: float = 0.0, rng: np.random.Generator | None = None) -> tuple[float, float]:
    """Where the car is `t` seconds after START, with optional GPS noise."""
    north = SPEED * t + (rng.normal(0, jitter_m) if rng is not None and jitter_m else 0.0)
    east = rng.normal(0, jitter_m) if rng is not None and jitter_m else 0.0
    return LAT0 + north / M_PER_DEG_LAT, LON0 + east / (M_PER_DEG_LAT * math.cos(math.radians(LAT0)))


def write_gpx(
    path: Path,
    seconds: int,
    jitter_m: float = 0.0,
    seed: int = 0,
    gap: tuple[float, float] | None = None,
    shift_s: float = 0.0,
) -> Path:
    """One fix per second; none inside `gap` (seconds from START); clock shifted by `shift_s`."""
    import gpxpy.gpx

    rng = np.random.default_rng(seed)
    gpx = gpxpy.gpx.GPX()
    segment = gpxpy.gpx.GPXTrackSegment()
    for s in range(seconds + 1):
        if gap and gap[0] <= s <= gap[1]:
            continue
        lat, lon = position(s, jitter_m, rng)
        segment.points.append(gpxpy.gpx.GPXTrackPoint(lat, lon, time=START + timedelta(seconds=s + shift_s)))
    track = gpxpy.gpx.GPXTrack()
    track.segments.append(segment)
    gpx.tracks.append(track)
    path.write_text(gpx.to_xml(version="1.1"))
    return path


def nmea_lines(seconds: int) -> list[str]:
    """RMC and GGA sentences, one pair per second, with real checksums."""
    import pynmea2

    lines = []
    for s in range(seconds + 1):
        lat, lon = position(s)
        t = START + timedelta(seconds=s)
        lat_s = f"{int(lat):02d}{(lat % 1) * 60:07.4f}"
        lon_s = f"{int(lon):03d}{(lon % 1) * 60:07.4f}"
        hms = t.strftime("%H%M%S") + ".00"
        rmc = pynmea2.RMC(
            "GP",
            "RMC",
            (hms, "A", lat_s, "N", lon_s, "E", f"{SPEED / 0.514444:.2f}", "0.0", t.strftime("%d%m%y"), "", ""),
        )
        gga = pynmea2.GGA(
            "GP", "GGA", (hms, lat_s, "N", lon_s, "E", "1", "08", "0.9", "40.0", "M", "45.0", "M", "", "")
        )
        lines += [str(rmc), str(gga)]
    return lines


def write_video(path: Path, seconds: int, potholes_at_s: list[float], hold_s: float = 1.0) -> Path:
    """Dark frames, bright for `hold_s` seconds around each pothole time (10 fps)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (64, 48))
    for i in range(int(seconds * FPS)):
        t = i / FPS
        bright = any(abs(t - p) <= hold_s / 2 for p in potholes_at_s)
        writer.write(np.full((48, 64, 3), BRIGHT if bright else DARK, np.uint8))
    writer.release()
    return path
