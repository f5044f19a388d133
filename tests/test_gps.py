"""GPS on every detection: track files, gpsd and serial sources, clock alignment, and no invented positions."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pothole_edge.edge import gps
from pothole_edge.edge.config import EdgeConfig
from pothole_edge.edge.runner import run
from pothole_edge.errors import UsageError
from tests import drive
from tests.conftest import end_process, free_port
from tests.test_cli import assert_usage_error
from tests.test_edge import brightness_model, edge_run, lines, needs

POTHOLES_S = [5.0, 15.0]  # seconds from the start: 50 m and 150 m up the road


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return brightness_model(tmp_path_factory.mktemp("gps-model") / "model.onnx")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return drive.write_video(tmp_path_factory.mktemp("gps-video") / "drive.mp4", 20, POTHOLES_S)


def _start(offset_s: float = 0.0) -> str:
    return (drive.START.timestamp() + offset_s, drive.START)[1].isoformat()


def _peaks(out: Path) -> list[dict]:
    return [e for e in lines(out / "events.jsonl") if e["status"] == "closed"]


def _metres_north(lat: float) -> float:
    return (lat - drive.LAT0) * drive.M_PER_DEG_LAT


def test_track_interpolates_and_never_invents_across_a_gap():
    track = gps.Track([gps.Fix(0, 52.0, 13.0), gps.Fix(1, 52.0001, 13.0), gps.Fix(10, 52.001, 13.0)], max_age_s=2)
    p = track.at(0.5)
    assert p.lat == pytest.approx(52.00005) and p.fix_age_s == pytest.approx(0.5)
    assert p.heading_deg == pytest.approx(0, abs=1e-6) and p.speed_mps == pytest.approx(11.1, abs=0.1)
    assert track.at(5.0) is None  # 4 s from either fix
    assert track.at(2.5).lat == 52.0001 and track.at(-3) is None and track.at(12.5) is None


def test_nmea_and_gpx_give_the_same_fixes(tmp_path):
    gpx = gps.read_gpx(drive.write_gpx(tmp_path / "d.gpx", 10))
    (tmp_path / "d.nmea").write_text("\n".join(drive.nmea_lines(10)) + "\n$GPRMC,garbage*00\n")
    nmea = gps.read_nmea(tmp_path / "d.nmea")
    assert len(gpx) == len(nmea) == 11
    for a, b in zip(gpx, nmea):
        assert a.t == b.t and gps.distance_m(a.lat, a.lon, b.lat, b.lon) < 0.2
        assert b.speed_mps == pytest.approx(drive.SPEED, abs=0.01)


def test_every_frame_and_event_gets_the_position_of_its_moment(model, video, tmp_path):
    track = drive.write_gpx(tmp_path / "d.gpx", 20)
    result = run(
        EdgeConfig(model=str(model), video=str(video), out=str(tmp_path / "run"), gps=str(track), video_start=_start())
    )
    rows = lines(tmp_path / "run" / "predictions.jsonl")
    assert all(r["lat"] is not None for r in rows)
    for r in rows[::17]:
        assert _metres_north(r["lat"]) == pytest.approx(drive.SPEED * r["time"], abs=0.5)
        assert r["speed_mps"] == pytest.approx(drive.SPEED, abs=0.2) and r["heading_deg"] == pytest.approx(0, abs=1)
    peaks = _peaks(tmp_path / "run")
    assert len(peaks) == 2
    for event, at_s in zip(peaks, POTHOLES_S):
        assert _metres_north(event["peak_position"]["lat"]) == pytest.approx(drive.SPEED * at_s, abs=drive.SPEED * 0.6)
    g = result["gps"]
    cover = result["coverage"]  # a fix for every frame, the ones skipped by distance (every_m: 4 m) too
    assert cover["every_m"] == 4.0 and cover["frames_classified"] == len(rows) and cover["frames_skipped"] > 0
    assert g["frames_with_fix"] == len(rows) + cover["frames_skipped"] and g["frames_without_fix"] == 0
    assert g["distance_m"] == pytest.approx(drive.SPEED * rows[-1]["time"], rel=0.02)


def test_a_stretch_without_fix_gives_null_positions_not_guesses(model, video, tmp_path):
    track = drive.write_gpx(tmp_path / "d.gpx", 20, gap=(3, 8))
    result = run(
        EdgeConfig(model=str(model), video=str(video), out=str(tmp_path / "run"), gps=str(track), video_start=_start())
    )
    rows = lines(tmp_path / "run" / "predictions.jsonl")
    blind = [r for r in rows if 4.5 < r["time"] < 6.5]
    assert blind and all(r["lat"] is None and r["fix_age_s"] is None for r in blind)
    first = _peaks(tmp_path / "run")[0]
    assert first["peak_position"]["lat"] is None  # the first pothole lies in the gap: no position, never a guess
    assert result["gps"]["frames_without_fix"] == sum(1 for r in rows if r["lat"] is None) > 0


def test_a_camera_clock_offset_is_corrected(model, video, tmp_path):
    track = drive.write_gpx(tmp_path / "d.gpx", 40, shift_s=0)
    late = drive.START.timestamp() - 7.0  # the camera says the drive began 7 s earlier than it did
    from datetime import datetime, timezone

    start = datetime.fromtimestamp(late, timezone.utc).isoformat()
    run(
        EdgeConfig(
            model=str(model),
            video=str(video),
            out=str(tmp_path / "off"),
            gps=str(track),
            video_start=start,
            gps_offset=7.0,
        )
    )
    run(EdgeConfig(model=str(model), video=str(video), out=str(tmp_path / "ok"), gps=str(track), video_start=_start()))
    a, b = lines(tmp_path / "off" / "predictions.jsonl"), lines(tmp_path / "ok" / "predictions.jsonl")
    assert [r["lat"] for r in a] == [r["lat"] for r in b]


def test_min_speed_skips_a_car_standing_still(model, video, tmp_path):
    track = gps.Track([gps.Fix(0, 52.0, 13.0, 0.0), gps.Fix(30, 52.0, 13.0, 0.0)])
    path = tmp_path / "still.gpx"
    import gpxpy.gpx

    g = gpxpy.gpx.GPX()
    seg = gpxpy.gpx.GPXTrackSegment()
    for s in range(21):
        seg.points.append(
            gpxpy.gpx.GPXTrackPoint(52.0, 13.0, time=drive.START + __import__("datetime").timedelta(seconds=s))
        )
    t = gpxpy.gpx.GPXTrack()
    t.segments.append(seg)
    g.tracks.append(t)
    path.write_text(g.to_xml(version="1.1"))
    result = run(
        EdgeConfig(
            model=str(model),
            video=str(video),
            out=str(tmp_path / "run"),
            gps=str(path),
            video_start=_start(),
            min_speed=5,
        )
    )
    assert result["frames"]["processed"] == 0 and result["gps"]["standing_frames"] == result["frames"]["read"] > 0
    del track


def test_gps_mistakes_are_one_line(model, video, tmp_path):
    no_time = drive.write_video(tmp_path / "plain.avi", 2, [])
    track = drive.write_gpx(tmp_path / "d.gpx", 5)
    cases = [
        (["--video", str(video), "--gps", str(tmp_path / "none.gpx")], "neither a track file"),
        (["--video", str(video), "--gps", str(track), "--video-start", "yesterday"], "not ISO 8601"),
        (["--video", str(video), "--gps", str(track), "--video-start", "2026-11-26T08:00:00"], "has no time zone"),
        (["--video", str(no_time), "--gps", str(track)], "--video-start"),
        (["--images", str(tmp_path), "--gps", str(track)], "needs a video, camera or stream"),
        (["--video", str(video), "--min-speed", "5"], "--min-speed 5 needs --gps"),
    ]
    for args, words in cases:
        assert_usage_error(edge_run("--model", str(model), *args, "--out", str(tmp_path / "o")), words)
        assert not (tmp_path / "o").exists()


def test_gpsd_gives_the_same_positions_as_the_gpx(model, tmp_path):
    needs(
        shutil.which("gpsfake") is not None and shutil.which("gpsd") is not None,
        "needs gpsd and gpsfake (apt-get install gpsd gpsd-clients; scripts/setup.sh does)",
    )
    log = tmp_path / "drive.nmea"
    log.write_text("\r\n".join(drive.nmea_lines(30)) + "\r\n")
    port = free_port()
    fake = subprocess.Popen(
        ["gpsfake", "-q", "-1", "-c", "0.1", "-P", str(port), str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        stop = __import__("threading").Event()
        track, live, _ = gps.open_gps(f"gpsd:127.0.0.1:{port}", 2.0, stop)
        live.start()
        deadline = time.monotonic() + 30
        while len(track.fixes) < 10 and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        live.join()
    finally:
        end_process(fake)
    reference = gps.Track(gps.read_gpx(drive.write_gpx(tmp_path / "d.gpx", 30)))
    assert len(track.fixes) >= 10
    for fix in track.fixes:
        p = reference.at(fix.t)
        assert p is not None and gps.distance_m(p.lat, p.lon, fix.lat, fix.lon) < 0.5


def test_video_start_comes_from_the_container(video):
    created = gps.mp4_creation_time(video)
    assert created is None or created > 0  # OpenCV's writer leaves it zero: None, and --video-start is asked for
    with pytest.raises(UsageError, match="no time zone"):
        gps.parse_start("2026-11-26T08:00:00")


def test_a_serial_nmea_receiver_feeds_the_track(tmp_path):
    """A pseudo-terminal stands in for /dev/ttyUSB0: the same device interface a USB receiver gives. A receiver
    talks without waiting for anyone to listen, so the feed streams on until the track has fixes."""
    import os
    import threading

    master, slave = os.openpty()
    stop = threading.Event()
    track, live, describe = gps.open_gps(f"serial:{os.ttyname(slave)}@9600", 2.0, stop)
    assert "9600 baud" in describe
    live.start()
    try:
        deadline = time.monotonic() + 15
        for line in drive.nmea_lines(30):
            os.write(master, (line + "\r\n").encode())
            time.sleep(0.02)
            if len(track.fixes) >= 6 or time.monotonic() > deadline:
                break
    finally:
        stop.set()
        live.join()
        os.close(master)
        os.close(slave)
    assert len(track.fixes) >= 6
    reference = gps.Track(gps.read_gpx(drive.write_gpx(tmp_path / "d.gpx", 30)))
    for fix in track.fixes:
        p = reference.at(fix.t)
        assert gps.distance_m(p.lat, p.lon, fix.lat, fix.lon) < 0.5 and fix.speed_mps == pytest.approx(
            drive.SPEED, abs=0.01
        )
