"""Hostile and careless inputs on the fleet surfaces: secrets in URLs, spreadsheet formulas, redirects, names that
break HTML, MQTT topics from flags. Each test fails on the code before its fix."""

from __future__ import annotations

import csv
import http.server
import io
import json
import re
import threading
import time
from pathlib import Path

import pytest

from pothole_edge import csvcells
from pothole_edge.edge.delivery import SendError, Webhook
from pothole_edge.errors import UsageError
from pothole_edge.office.mapfiles import csv_text, map_html
from pothole_edge.redact import redact, redacted
from tests.test_cli import assert_usage_error
from tests.test_edge import brightness_model, edge_run

SECRET = "S3cr3t-pw"


@pytest.mark.parametrize(
    "text",
    [
        f"postgresql://fleet:{SECRET}@db.example/potholes",
        f"--db mysql://u:{SECRET}@host/db: no such dialect",
        f"mqtts://van7:{SECRET}@broker:8883",
        f"rtsp://admin:{SECRET}@10.0.0.9/stream1",
        f"https://office.example/hook?id=4&token={SECRET}",
    ],
)
def test_redact_masks_every_password_and_token(text):
    assert SECRET not in redact(text)
    assert redacted({"a": [text], "b": (1, text)}) == {"a": [redact(text)], "b": [1, redact(text)]}


def test_redact_leaves_plain_urls_and_names_alone():
    for text in ("http://office.example/hooks/potholes", "postgresql://fleet@db/potholes", "runs/a=b", "x:y@z"):
        assert redact(text) == text


def test_edge_map_keeps_the_db_password_out_of_errors_and_files(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_text("")
    (run_dir / "predictions.jsonl").write_text("")
    for url in (f"mysql://u:{SECRET}@127.0.0.1:1/db", f"postgresql://fleet:{SECRET}@127.0.0.1:1/potholes"):
        result = edge_map(str(run_dir), "--db", url, "--out", str(tmp_path / "map"))
        assert_usage_error(result, "--db")
        assert SECRET not in result.stderr + result.stdout
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaked


def test_edge_map_takes_the_db_password_from_the_environment_and_never_writes_it(postgres, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_text("")
    (run_dir / "predictions.jsonl").write_text("")
    from pothole_edge.office.build import MapConfig, build

    # trust authentication accepts any password: what matters is where it goes
    url = postgres.replace("postgres@", f"postgres:{SECRET}@")
    build(MapConfig(runs=(str(run_dir),), out=str(tmp_path / "a"), db=url))
    monkeypatch.setenv("FLEET_DB_PW", SECRET)
    build(MapConfig(runs=(str(run_dir),), out=str(tmp_path / "b"), db=postgres, db_password_env="FLEET_DB_PW"))
    for out in ("a", "b"):
        config = (tmp_path / out / "config.json").read_text()
        assert SECRET not in config and "postgres" in config
    assert ":***@" in (tmp_path / "a" / "config.json").read_text()


def edge_map(*args: str):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", "from pothole_edge.office.cli import map_main; map_main()", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "value, written",
    [
        ("=cmd|' -C calc'!A0", "'=cmd|' -C calc'!A0"),
        ("+1+cmd", "'+1+cmd"),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("@SUM(1+1)", "'@SUM(1+1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-122.4194", "-122.4194"),  # a longitude stays a number
        ("'quoted", "''quoted"),  # so that reading back is exact
        ("runs/drive1", "runs/drive1"),
    ],
)
def test_csv_cells_cannot_be_formulas_and_read_back_exactly(value, written):
    buf = io.StringIO()
    csvcells.writer(buf).writerow([value, -1.5, 3])
    row = next(csv.reader(io.StringIO(buf.getvalue(), newline="")))
    assert row == [written, "-1.5", "3"]
    assert csvcells.unescape(row[0]) == value


def test_the_potholes_csv_neutralises_a_run_folder_named_like_a_formula():
    evil = "=cmd|' -C calc'!A0"
    pothole = {
        "id": 1,
        "lat": 48.1,
        "lon": -11.5,
        "sightings": 1,
        "first_seen": 0.0,
        "last_seen": 0.0,
        "max_prob": 0.9,
        "best_snapshot": None,
        "possibly_repaired": False,
        "runs": [evil],
    }
    for row in csv.reader(io.StringIO(csv_text([pothole]))):
        for cell in row:
            assert not cell.startswith(csvcells.FORMULA_START) or re.fullmatch(r"-?[0-9.]+", cell), cell


def test_a_split_manifest_round_trips_names_that_look_like_formulas(tmp_path):
    from pothole_edge.train import data

    samples = [data.Sample(0, "-rf.jpg", 1, "ab" * 32, "test", "=seg", None)]
    (tmp_path / "split.csv").write_text(data.manifest_text(samples, ("normal", "pothole")))
    (back,) = data.read_manifest(tmp_path / "split.csv", ("normal", "pothole"))
    assert (back.path, back.group) == ("-rf.jpg", "=seg")


def test_map_data_cannot_be_broken_by_a_name():
    from pothole_edge.office.mapfiles import script_json

    name = "x<!--<script>y</script>\u2028&"
    html = map_html(
        [
            {
                "id": 1,
                "lat": 48.1,
                "lon": 11.5,
                "sightings": 1,
                "first_seen": 0.0,
                "last_seen": 0.0,
                "max_prob": 0.9,
                "best_snapshot": None,
                "possibly_repaired": False,
                "runs": [name],
            }
        ],
        [{"run_dir": name, "points": [[48.1, 11.5]]}],
        Path("."),
    )
    blob = script_json({"tracks": [{"run_dir": name}]})
    assert json.loads(blob) == {"tracks": [{"run_dir": name}]}
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    data = [s for s in scripts if "tracks" in s and "leaflet" not in s[:200].lower()]
    assert data and all("<!--" not in s and "<script" not in s and "\u2028" not in s for s in data)


class _Handler(http.server.BaseHTTPRequestHandler):
    hits: list[tuple[str, str, bytes]]
    reply: tuple[int, dict[str, str]]

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.hits.append((self.command, self.headers.get("X-Pothole-Signature", ""), self.rfile.read(length)))
        status, headers = self.reply
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


def _server(reply: tuple[int, dict[str, str]]):
    handler = type("H", (_Handler,), {"hits": [], "reply": reply})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler.hits


def test_a_webhook_redirect_is_a_failure_and_the_signed_body_goes_nowhere_else(monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", "k")
    other, other_hits = _server((200, {}))
    first, first_hits = _server((302, {"Location": f"http://127.0.0.1:{other.server_port}/elsewhere"}))
    try:
        hook = Webhook(f"http://127.0.0.1:{first.server_port}/hook", "HOOK_SECRET", timeout_s=2)
        with pytest.raises(SendError, match="HTTP 302 redirect .*not followed"):
            hook.send({"event_id": "e1"})
        assert len(first_hits) == 1 and first_hits[0][1].startswith("sha256=")
        assert other_hits == []
    finally:
        first.shutdown()
        other.shutdown()


def test_a_webhook_that_trickles_its_answer_is_cut_off_by_the_deadline():
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 200:
            if stop.is_set():
                break
            try:
                conn.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.2)  # each byte well inside the socket timeout
        conn.close()

    threading.Thread(target=trickle, daemon=True).start()
    hook = Webhook(f"http://127.0.0.1:{listener.getsockname()[1]}/hook", None, timeout_s=1)
    started = time.monotonic()
    try:
        with pytest.raises(SendError, match="no complete answer within 2 s"):
            hook.send({"event_id": "e1"})
        assert time.monotonic() - started < 5
    finally:
        stop.set()
        listener.close()


def test_webhook_urls_that_cannot_parse_are_one_line():
    with pytest.raises(UsageError, match="--webhook"):
        Webhook("http://[::1/x", None)
    with pytest.raises(UsageError, match=r"--webhook https://u:\*\*\*@h:99999/x"):
        Webhook(f"https://u:{SECRET}@h:99999/x", None)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--vehicle-id", "van+1"], "--vehicle-id 'van+1'"),
        (["--vehicle-id", "van#"], "--vehicle-id 'van#'"),
        (["--vehicle-id", "van/evil"], "'/'"),
        (["--mqtt-topic", "#"], "--mqtt-topic '#'"),
        (["--mqtt-topic", "fleet/+/x"], "--mqtt-topic"),
    ],
)
def test_mqtt_topic_flags_are_checked_before_anything_starts(flags, words, tmp_path):
    model = brightness_model(tmp_path / "m.onnx")
    images = tmp_path / "images"
    images.mkdir()
    result = edge_run(
        "--model",
        str(model),
        "--images",
        str(images),
        "--mqtt",
        "mqtt://127.0.0.1:1",
        *flags,
        "--out",
        str(tmp_path / "o"),
    )
    assert_usage_error(result, words)
    assert not (tmp_path / "o").exists()


# --- positions that cannot be true ---------------------------------------------------------------------------


def _gpx(path: Path, points: list[tuple[str, str]]) -> Path:
    rows = "".join(
        f'<trkpt lat="{lat}" lon="{lon}"><time>2026-11-26T08:00:{k:02d}Z</time></trkpt>'
        for k, (lat, lon) in enumerate(points)
    )
    path.write_text(
        '<?xml version="1.0"?><gpx version="1.1" creator="t" xmlns="http://www.topografix.com/GPX/1/1">'
        f"<trk><trkseg>{rows}</trkseg></trk></gpx>"
    )
    return path


def test_impossible_gpx_positions_are_dropped_and_counted(tmp_path):
    import threading as th

    from pothole_edge.edge import gps

    bad = [("999", "11.5"), ("48.1", "-181"), ("nan", "11.5"), ("inf", "11.5"), ("48.1", "-inf")]
    good = [("48.1", "11.5"), ("48.1001", "11.5")]
    track, _, _ = gps.open_gps(str(_gpx(tmp_path / "t.gpx", good + bad)), 2.0, th.Event())
    assert len(track.fixes) == 2 and track.rejected == 5
    assert all(-90 <= f.lat <= 90 and -180 <= f.lon <= 180 for f in track.fixes)
    with pytest.raises(UsageError, match="no timed fixes"):
        gps.open_gps(str(_gpx(tmp_path / "all-bad.gpx", bad)), 2.0, th.Event())


def test_nmea_with_impossible_degrees_or_minutes_is_dropped():
    from pothole_edge.edge import gps

    def rmc(lat: str, ns: str, lon: str, ew: str) -> str:
        body = f"GPRMC,080000.00,A,{lat},{ns},{lon},{ew},10.0,90.0,261126,,,A"
        checksum = 0
        for c in body:
            checksum ^= ord(c)
        return f"${body}*{checksum:02X}"

    fixes = list(
        gps.parse_nmea(
            [
                rmc("4807.038", "N", "01131.000", "E"),
                rmc("9999.0000", "N", "01131.000", "E"),  # 99 degrees
                rmc("4899.0000", "N", "01131.000", "E"),  # 99 minutes
                rmc("4807.038", "N", "01199.000", "E"),
            ]
        )
    )
    assert fixes[0] is not None and fixes[0].lat == pytest.approx(48.1173, abs=1e-4)
    assert fixes[1:] == [None, None, None]


@pytest.mark.parametrize(
    "report",
    [
        '{"class":"TPV","mode":3,"time":"2026-11-26T08:00:01Z","lat":null,"lon":11.5}',
        '{"class":"TPV","mode":3,"time":"2026-11-26T08:00:01Z","lat":999,"lon":11.5}',
        '{"class":"TPV","mode":"3","time":"2026-11-26T08:00:01Z","lat":48.1,"lon":11.5}',
        '{"class":"TPV","mode":3,"time":1764144001,"lat":48.1,"lon":11.5}',
        '["TPV", 3]',
        '{"class":"TPV","mode":3,"time":"not a time","lat":48.1,"lon":11.5}',
        "not json at all",
    ],
)
def test_a_bad_gpsd_report_is_skipped_and_the_next_good_one_is_used(report):
    from pothole_edge.edge import gps

    good = '{"class":"TPV","mode":3,"time":"2026-11-26T08:00:02Z","lat":48.1,"lon":11.5,"speed":12.5}'
    results = [gps._tpv(line) for line in (report, good)]
    assert results[0] in (None, False)
    assert isinstance(results[1], gps.Fix) and results[1].speed_mps == 12.5


def test_a_gpsd_stream_without_newlines_is_not_held_in_memory():
    import io

    from pothole_edge.edge import gps

    runaway = "x" * (gps.MAX_LINE * 20)
    stream = io.StringIO(runaway + "\n" + '{"class":"TPV"}\n')
    lines = list(gps._bounded_lines(stream))
    assert lines == ["", '{"class":"TPV"}\n']


def test_interpolation_and_distance_are_right_across_180_degrees():
    from pothole_edge.edge import gps

    track = gps.Track([gps.Fix(0.0, -16.5, 179.9999), gps.Fix(1.0, -16.5, -179.9999)])
    mid = track.at(0.5)
    assert abs(mid.lon) > 179.9998  # not 0, half the world away
    assert gps.distance_m(-16.5, 179.9999, -16.5, -179.9999) < 25
    assert mid.speed_mps < 25


# --- sightings lost ------------------------------------------------------------------------------------------


def _event(n: int, lat: float = 48.1, **change) -> dict:
    e = {
        "status": "closed",
        "id": n,
        "peak_time": 10.0 + n,
        "peak_prob": 0.95,
        "peak_position": {"lat": lat + n * 0.001, "lon": 11.5, "gps_time": 1.7e9 + n},
    }
    return e | change


def test_bad_lines_and_values_in_a_run_cost_themselves_alone(tmp_path):
    from pothole_edge.office.folders import run_messages

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lines = [
        json.dumps(_event(1)),
        '{"status": "closed", "id": 2, "peak_ti',  # torn in the middle of the file
        "garbage \x00\x01",
        json.dumps(["an", "event", "that", "is", "a", "list"]),
        json.dumps(_event(3, id="3")),  # a string id
        json.dumps(_event(4, peak_prob=float("nan"))),  # NaN: Python writes it, JSON has no such thing
        json.dumps(_event(5, peak_position={"lat": 999, "lon": 11.5})),
        json.dumps(_event(6, peak_position=[48.1, 11.5])),
        json.dumps(_event(7)),
        '{"status": "closed", "id": 8',  # the torn last line a power cut leaves
    ]
    (run_dir / "events.jsonl").write_text("\n".join(lines))
    frames = [{"time": k * 0.1, "lat": 48.1 + k * 1e-5, "lon": 11.5} for k in range(56)]
    rows = [json.dumps(f) for f in frames]
    rows.insert(5, "}}garbage{{")
    rows.insert(9, json.dumps({"time": 0.55, "lat": float("nan"), "lon": 11.5}))
    (run_dir / "predictions.jsonl").write_text("\n".join(rows) + "\n")
    messages = run_messages(run_dir)
    assert [m["event"] for m in messages if m["kind"] == "event"] == [1, 7]
    track = [p for m in messages if m["kind"] == "track" for p in m["points"]]
    assert len(track) > 5  # thinned to a point every 3 m, but past the garbage
    assert track[-1][1] == pytest.approx(frames[-1]["lat"], abs=3e-5)


# --- one line, not a traceback -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--mqtt", "mqtt://h:99999"], "port must be a number"),
        (["--mqtt", "mqtts://h:8883", "--mqtt-ca", "/nonexistent/ca.pem"], "--mqtt-ca /nonexistent/ca.pem"),
        (["--webhook", "http://[::1/x"], "--webhook"),
        (["--gps", "serial:/dev/ttyX@fast"], "serial:DEVICE@BAUD"),
        (["--gps", "gpsd:h:notaport"], "gpsd:HOST:PORT"),
        (["--votes", "3/2"], "--votes"),
        (["--every-m", "4"], "--every-m needs a speed"),
        (["--every-m", "4", "--speed-kmh", "-5"], "--speed-kmh"),
    ],
)
def test_bad_fleet_flags_are_one_line(flags, words, tmp_path):
    from tests.test_edge import write_video

    model = brightness_model(tmp_path / "m.onnx")
    video = write_video(tmp_path / "v.mp4", [(40, 3)])
    result = edge_run("--model", str(model), "--video", str(video), *flags, "--out", str(tmp_path / "o"))
    assert_usage_error(result, words)
    assert not (tmp_path / "o").exists()


def test_edge_map_refuses_to_write_over_a_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_text("")
    (run_dir / "predictions.jsonl").write_text("")
    (run_dir / "config.json").write_text('{"mine": true}')
    assert_usage_error(edge_map(str(run_dir), "--out", str(run_dir)), "holds an edge-run's output")
    assert (run_dir / "config.json").read_text() == '{"mine": true}'


def test_importers_racing_on_a_new_postgresql_database_both_start(postgres):
    from sqlalchemy import create_engine

    from pothole_edge.office.registry import Registry

    server = create_engine("postgresql+psycopg://" + postgres[len("postgresql://") :], isolation_level="AUTOCOMMIT")
    with server.connect() as db:
        db.exec_driver_sql("CREATE DATABASE new_fleet")
    url = server.url.set(database="new_fleet").render_as_string(hide_password=False)
    start, errors = threading.Barrier(4), []

    def importer() -> None:
        engine = create_engine(url)
        start.wait()
        try:
            Registry(engine)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=importer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# --- sightings lost or counted twice -------------------------------------------------------------------------


def _write_run(run_dir: Path, events: list[dict], points: int, ended: bool) -> Path:
    run_dir.mkdir(exist_ok=True)
    (run_dir / "config.json").write_text('{"video": "drive.mp4"}')
    summary = {"started_at": "2026-11-26T08:00:00+00:00", "ended_at": "2026-11-26T08:10:00+00:00" if ended else None}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    rows = [{"time": k * 0.1, "lat": 48.1 + k * 4e-5, "lon": 11.5} for k in range(points)]
    (run_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def test_a_run_mapped_while_written_and_again_when_finished_is_one_drive(tmp_path):
    from pothole_edge.office.build import MapConfig, build

    first, second = _event(1), _event(2, lat=48.1 + 0.0005)
    run_dir = _write_run(tmp_path / "drive", [first], 20, ended=False)
    build(MapConfig(runs=(str(run_dir),), out=str(tmp_path / "map")))
    _write_run(run_dir, [first, second], 60, ended=True)
    summary = build(MapConfig(runs=(str(run_dir),), out=str(tmp_path / "map")))
    assert summary["drives"] == 1 and summary["potholes"] == 2
    props = [f["properties"] for f in json.loads((tmp_path / "map" / "potholes.geojson").read_text())["features"]]
    assert [p["sightings"] for p in props] == [1, 1]
    again = build(MapConfig(runs=(str(run_dir),), out=str(tmp_path / "map")))
    assert again["runs_added"] == 0 and again["potholes"] == 2


def test_a_run_folder_whose_name_is_not_utf8_maps(tmp_path):
    import os

    from pothole_edge.office.build import MapConfig, build

    name = os.fsdecode(b"drive-\xff\xfe")
    run_dir = _write_run(tmp_path / name, [_event(1)], 20, ended=True)
    summary = build(MapConfig(runs=(str(run_dir),), out=str(tmp_path / "map")))
    assert summary["potholes"] == 1
    assert "drive-" in (tmp_path / "map" / "potholes.csv").read_text()


def _png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header says width x height: a decompression bomb's first bytes."""
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


def test_hostile_snapshots_are_left_out_of_the_map_and_nothing_is_half_written(tmp_path):
    from pothole_edge.office.build import MapConfig, build

    run_dir = _write_run(tmp_path / "drive", [_event(1), _event(2, lat=48.1 + 0.0005)], 60, ended=True)
    (run_dir / "snapshots").mkdir()
    (run_dir / "snapshots" / "event_00001.jpg").write_bytes(_png_claiming(30000, 30000))
    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as f:
        f.truncate(5 * 2**30)  # sparse: 5 GB that take no room
    (run_dir / "snapshots" / "event_00002.jpg").symlink_to(huge)
    summary = build(MapConfig(runs=(str(run_dir),), out=str(tmp_path / "map")))
    assert summary["potholes"] == 2
    page = (tmp_path / "map" / "map.html").read_text()
    assert "data:image/jpeg" not in page
    assert {p.name for p in (tmp_path / "map").iterdir()} >= {"map.html", "potholes.geojson", "potholes.csv"}


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "read-only"])
def test_a_damaged_or_read_only_sqlite_registry_is_one_line(damage, tmp_path):
    import os

    run_dir = _write_run(tmp_path / "drive", [_event(1)], 20, ended=True)
    out = tmp_path / "map"
    out.mkdir()
    db = out / "potholes.sqlite"
    if damage == "corrupt":
        db.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    elif damage == "truncated":
        assert (
            edge_map(str(_write_run(tmp_path / "first", [_event(5)], 20, ended=True)), "--out", str(out)).returncode
            == 0
        )
        db.write_bytes(db.read_bytes()[:1000])
    else:
        assert (
            edge_map(str(_write_run(tmp_path / "first", [_event(5)], 20, ended=True)), "--out", str(out)).returncode
            == 0
        )
        db.chmod(0o444)
        if os.access(db, os.W_OK):  # root writes anyway: a read-only SQLite URL instead
            result = edge_map(str(run_dir), "--out", str(out), "--db", f"sqlite:///file:{db}?mode=ro&uri=true")
            assert_usage_error(result, "--db")
            return
    assert_usage_error(edge_map(str(run_dir), "--out", str(out)), "--db")


def test_a_track_file_too_large_to_parse_is_refused_before_it_is_read(tmp_path):
    import threading as th

    from pothole_edge.edge import gps

    big = tmp_path / "year.gpx"
    with open(big, "wb") as f:
        f.truncate(gps.MAX_TRACK_FILE + 1)  # sparse: its size is what is checked, before any byte is parsed
    with pytest.raises(UsageError, match="over the 32 MiB a track file may be"):
        gps.open_gps(str(big), 2.0, th.Event())


def test_edge_map_says_when_a_run_has_events_but_no_positions(tmp_path):
    run_dir = tmp_path / "no-gps"
    run_dir.mkdir()
    events = [
        {"status": "closed", "id": n, "peak_time": 1.0 + n, "peak_prob": 0.9, "peak_position": None} for n in (1, 2)
    ]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run_dir / "predictions.jsonl").write_text(json.dumps({"time": 0.1, "lat": None, "lon": None}) + "\n")
    result = edge_map(str(run_dir), "--out", str(tmp_path / "map"))
    assert result.returncode == 0 and "2 event(s) and no positions" in result.stderr and "--gps" in result.stderr
