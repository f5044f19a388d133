"""Delivery to the office through outages: a real mosquitto broker killed and restarted, a webhook that fails
with 500s and timeouts before it accepts, and a run killed while the broker is down. Every event must arrive at
least once; after dropping duplicates by event_id the received set equals events.jsonl."""

from __future__ import annotations

import base64
import getpass
import json
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pothole_edge.messages import SIGNATURE_HEADER, TIMESTAMP_HEADER, MessageError, verify
from tests.conftest import free_port, wait_for
from tests.test_edge import BRIGHT, DARK, brightness_model, edge_run, lines, needs, write_video

SEGMENTS = [(DARK, 12), (BRIGHT, 6)] * 6 + [(DARK, 12)]  # six potholes


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return brightness_model(tmp_path_factory.mktemp("delivery-model") / "model.onnx")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("delivery-clip") / "clip.mp4", SEGMENTS)


def _event_ids_in(out: Path, vehicle: str) -> set[str]:
    from pothole_edge.edge.delivery import event_id

    summary = json.loads((out / "summary.json").read_text())
    run = summary["delivery_run"]
    return {event_id(vehicle, run, e["id"]) for e in lines(out / "events.jsonl") if e["status"] == "closed"}


class Hook(BaseHTTPRequestHandler):
    """Fails the first `fail` requests with 500, then lets the next `slow` ones time out, then accepts."""

    plan: dict = {}

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        plan = type(self).plan
        with plan["lock"]:
            plan["requests"] += 1
            n = plan["requests"]
        if n <= plan["fail"]:
            self.send_response(500)
            self.end_headers()
            return
        if n <= plan["fail"] + plan["slow"]:
            time.sleep(6)  # past the sender's 5 s timeout
            return
        plan["bodies"].append((body, self.headers.get(TIMESTAMP_HEADER), self.headers.get(SIGNATURE_HEADER)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_webhook_that_fails_before_it_accepts_gets_every_event_signed(model, clip, tmp_path):
    Hook.plan = {"fail": 3, "slow": 1, "requests": 0, "bodies": [], "lock": threading.Lock()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out, secret = tmp_path / "run", "s3cret"
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "from pothole_edge.edge.cli import main; main()",
                "--model",
                str(model),
                "--video",
                str(clip),
                "--out",
                str(out),
                "--webhook",
                f"http://127.0.0.1:{server.server_port}/events",
                "--webhook-secret-env",
                "HOOK_SECRET",
                "--vehicle-id",
                "van-7",
                "--outbox",
                str(tmp_path / "outbox.sqlite"),
                "--drain-timeout",
                "60",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={"HOOK_SECRET": secret, "PATH": "/usr/bin:/bin"},
        )
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    received = {}
    for body, sent, signature in Hook.plan["bodies"]:
        verify(secret.encode(), body, sent, signature, time.time(), 300)  # the receiver's check passes
        with pytest.raises(MessageError, match="bad signature"):  # a wrong secret is detected
            verify(b"wrong secret", body, sent, signature, time.time(), 300)
        message = json.loads(body)
        received[message["event_id"]] = message
    assert set(received) == _event_ids_in(out, "van-7") and len(received) == 6
    m = next(iter(received.values()))
    assert (
        m["vehicle"] == "van-7"
        and m["model"]["variant"] == "fp32"
        and m["snapshot"]["path"].endswith(".jpg")
        and 0 < m["peak_prob"] <= 1
    )
    (delivery,) = json.loads((out / "summary.json").read_text())["delivery"]
    assert (
        delivery["delivered"] == 6
        and delivery["pending"] == 0
        and delivery["retried"] >= 4
        and delivery["dropped"] == 0
    )


def test_an_attached_snapshot_goes_with_its_event_even_when_the_writer_is_behind(model, clip, tmp_path, monkeypatch):
    from pothole_edge.edge import eventclips as clips
    from pothole_edge.edge.config import EdgeConfig
    from pothole_edge.edge.runner import run

    real = clips.Writer._snapshot

    def behind(self, *args):  # a busy writer thread: each snapshot lands well after its event could close
        time.sleep(0.3)
        real(self, *args)

    monkeypatch.setattr(clips.Writer, "_snapshot", behind)
    Hook.plan = {"fail": 0, "slow": 0, "requests": 0, "bodies": [], "lock": threading.Lock()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = run(
            EdgeConfig(
                model=str(model),
                video=str(clip),
                out=str(tmp_path / "run"),
                webhook=f"http://127.0.0.1:{server.server_port}/events",
                outbox=str(tmp_path / "outbox.sqlite"),
                attach_snapshot=True,
                drain_timeout=30,
            )
        )
    finally:
        server.shutdown()
    messages = [json.loads(body) for body, _, _ in Hook.plan["bodies"]]
    assert result["events"] == 6 and len(messages) == 6
    for m in messages:
        jpeg = base64.b64decode(m["snapshot"]["jpeg_base64"] or "")
        assert jpeg[:3] == b"\xff\xd8\xff", m["event_id"]


class Broker:
    """A mosquitto server on a free port, persistent, started and stopped by the test."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.conf = folder / "mosquitto.conf"
        folder.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {folder}/\n"
            # run as root, mosquitto drops to user 'mosquitto', cannot write its store under pytest's 0700
            # folder, and loses the office's session, and what was queued for it, on every restart
            f"user {getpass.getuser()}\n"
            # saved after every change, so a broker killed outright comes back with the office's queue
            "autosave_on_changes true\nautosave_interval 1\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(self._listening, 10, "mosquitto to listen")

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None:
            if kill:
                self.proc.kill()  # a crash: what the broker had not confirmed is the sender's to retry
            else:
                self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class Subscriber:
    """A persistent QoS 1 session that reconnects on its own, as an office's listener would."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[dict] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="office", clean_session=False)
        self.client.on_connect = lambda c, *_: c.subscribe("potholes/+/events", qos=1)
        self.client.on_message = lambda c, u, msg: self.messages.append(json.loads(msg.payload))
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def ids(self) -> set[str]:
        return {m["event_id"] for m in self.messages}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_mqtt_delivers_every_event_through_broker_restarts_and_a_killed_run(model, clip, tmp_path):
    needs(
        shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists(),
        "needs mosquitto (apt-get install mosquitto; scripts/setup.sh does)",
    )
    broker = Broker(tmp_path / "broker")
    broker.start()
    office = Subscriber(broker.port)
    wait_for(lambda: office.client.is_connected(), 10, "the subscriber")
    time.sleep(0.3)
    outbox = tmp_path / "outbox.sqlite"
    common = [
        "--model",
        str(model),
        "--video",
        str(clip),
        "--mqtt",
        f"mqtt://127.0.0.1:{broker.port}",
        "--vehicle-id",
        "van-7",
        "--outbox",
        str(outbox),
    ]
    try:
        # restart 1: the run starts with the broker down; its events wait in the outbox
        broker.stop()
        first = _edge_run_in_background(*common, "--out", str(tmp_path / "a"), stderr=subprocess.PIPE)
        wait_for(lambda: _queued(outbox) == 6, 60, "six queued events")
        broker.start()
        _, err = first.communicate(timeout=90)
        assert first.returncode == 0, err
        expected = _event_ids_in(tmp_path / "a", "van-7")
        wait_for(lambda: expected <= office.ids(), 30, "the first run's events at the office")
        # restart 2: the broker is killed outright, and so is a run while it waits
        broker.stop(kill=True)
        killed = _edge_run_in_background(*common, "--out", str(tmp_path / "b"), stderr=subprocess.DEVNULL)
        wait_for(lambda: _queued(outbox) == 6, 60, "the killed run's six events in the outbox")
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        broker.start()
        # a new run, after the 'reboot', sends what the killed one left, and its own
        result = edge_run(*common, "--out", str(tmp_path / "c"), "--drain-timeout", "60", timeout=120)
        assert result.returncode == 0, result.stderr
        expected |= _event_ids_in(tmp_path / "c", "van-7")
        try:
            wait_for(lambda: len(office.ids()) == 18, 30, "all eighteen events at the office")
        except AssertionError:
            runs = sorted({(m["run"], m["event_id"]) for m in office.messages})
            raise AssertionError(f"office has {len(office.ids())} events: {runs}; queued {_queued(outbox)}") from None
        killed_run = {m["run"] for m in office.messages} - {
            json.loads((tmp_path / d / "summary.json").read_text())["delivery_run"] for d in ("a", "c")
        }
    finally:
        office.close()
        broker.stop()
    assert expected < office.ids() and len(killed_run) == 1  # the killed run's six arrived too, under its own run id
    assert _queued(outbox) == 0
    c = json.loads((tmp_path / "c" / "summary.json").read_text())["delivery"][0]
    assert c["delivered"] == 12 and c["pending"] == 0 and c["queued"] == 6


def _edge_run_in_background(*args: str, stderr: int) -> subprocess.Popen:
    """edge-run as a process the test can kill, waiting up to 60 s at the end for the broker."""
    cmd = [sys.executable, "-c", "from pothole_edge.edge.cli import main; main()", *args, "--drain-timeout", "60"]
    return subprocess.Popen(cmd, stderr=stderr, text=True)


def _queued(outbox: Path) -> int:
    if not outbox.exists():
        return 0
    with sqlite3.connect(outbox, timeout=5) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def test_a_full_outbox_drops_the_oldest_and_counts_it(tmp_path):
    from pothole_edge.edge.outbox import Outbox

    box = Outbox(tmp_path / "o.sqlite", max_messages=3)
    for i in range(5):
        assert box.put(f"e{i}", "d", {"i": i})
    assert not box.put("e4", "d", {"i": 4})  # a retry of a queued event is not a second message
    assert [p["i"] for _, p, _ in box.due("d")] == [2, 3, 4] and box.dropped("d") == 2


def test_bad_delivery_flags_are_one_line(model, clip, tmp_path):
    from tests.test_cli import assert_usage_error

    cases = [
        (["--mqtt", "http://x"], "is not mqtt://"),
        (["--webhook", "ftp://x"], "not an http(s):// URL"),
        (["--webhook", "http://127.0.0.1:9/x", "--webhook-secret-env", "NO_SUCH_VAR_SET"], "NO_SUCH_VAR_SET"),
        (["--webhook", "http://127.0.0.1:9/x", "--outbox", "/proc/nope/outbox.sqlite"], "cannot open the outbox"),
    ]
    for args, words in cases:
        assert_usage_error(
            edge_run("--model", str(model), "--video", str(clip), *args, "--out", str(tmp_path / "o")), words
        )
        assert not (tmp_path / "o").exists()


def _frames(path: Path) -> int:
    """The frames FFmpeg decodes from a clip, checked against what the clip's own headers and index say."""
    import cv2

    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    n = 0
    while cap.read()[0]:
        n += 1
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == n and cap.get(cv2.CAP_PROP_FPS) == 10
    cap.release()
    if shutil.which("ffprobe"):
        probe = subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-count_packets",
                "-show_entries",
                "stream=codec_name,nb_read_packets,nb_frames",
                "-of",
                "json",
                str(path),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        (stream,) = json.loads(probe.stdout)["streams"]
        assert stream["codec_name"] == "mjpeg" and int(stream["nb_read_packets"]) == int(stream["nb_frames"]) == n
    return n


def test_a_clip_runs_from_before_an_event_to_after_it(model, clip, tmp_path):
    from pothole_edge.edge.config import EdgeConfig
    from pothole_edge.edge.runner import run

    result = run(EdgeConfig(model=str(model), video=str(clip), out=str(tmp_path / "run"), clips="1,0.5"))
    events = [e for e in lines(tmp_path / "run" / "events.jsonl") if e["status"] == "closed"]
    assert result["storage"]["clips"] == len(events) == 6
    # a snapshot is rewritten at each new peak of its event: the count is of files, one per event
    assert result["storage"]["snapshots"] == len(list((tmp_path / "run" / "snapshots").glob("*.jpg"))) == 6
    assert result["storage"]["frames_dropped_by_writer"] == 0  # a file waits for the writer; a camera would not
    for e in events:
        n = _frames(tmp_path / "run" / "clips" / f"event_{e['id']:05d}.avi")
        # 1 s before the event opens (10 frames at 10 fps), the event, and 0.5 s after it closes
        assert 10 + e["frames"] <= n <= 10 + e["frames"] + 6
    assert not list((tmp_path / "run" / "clips").glob(".*"))  # no half-written clip left


def test_a_clip_at_the_avi_limit_ends_and_a_failing_writer_never_stalls_the_run(model, clip, tmp_path, monkeypatch):
    from pothole_edge.edge import avi
    from pothole_edge.edge import eventclips as clips
    from pothole_edge.edge.config import EdgeConfig
    from pothole_edge.edge.runner import run

    monkeypatch.setattr(avi, "MAX_BYTES", 12_000)  # a few 64x48 frames
    result = run(EdgeConfig(model=str(model), video=str(clip), out=str(tmp_path / "limit"), clips="1,0.5"))
    assert result["frames"]["processed"] == 120 and result["storage"]["clips"] == 6
    for path in (tmp_path / "limit" / "clips").glob("event_*.avi"):
        assert 0 < _frames(path) < 10 + 7 and path.stat().st_size <= 12_000

    def broken(*args):
        raise ValueError("a codec error")

    monkeypatch.setattr(clips.Writer, "_snapshot", broken)
    monkeypatch.setattr(clips.Writer, "_frame", broken)
    result = run(EdgeConfig(model=str(model), video=str(clip), out=str(tmp_path / "broken"), clips="1,0.5"))
    assert result["status"] == "finished" and result["frames"]["processed"] == 120 and result["events"] == 6


def test_an_event_on_the_first_frame_gets_its_clip_through_the_command_line(model, tmp_path):
    video = write_video(tmp_path / "starts-on-a-pothole.mp4", [(BRIGHT, 6), (DARK, 12)])
    result = edge_run("--model", str(model), "--video", str(video), "--out", str(tmp_path / "run"), "--clips", "1,0.5")
    assert result.returncode == 0, result.stderr
    (event,) = [e for e in lines(tmp_path / "run" / "events.jsonl") if e["status"] == "closed"]
    assert event["start_frame"] == 0
    n = _frames(tmp_path / "run" / "clips" / f"event_{event['id']:05d}.avi")
    assert event["frames"] <= n <= event["frames"] + 6  # nothing before the first frame; 0.5 s after the close


def test_the_storage_cap_removes_delivered_events_oldest_first_and_keeps_undelivered_ones(model, clip, tmp_path):
    from pothole_edge.edge.config import EdgeConfig
    from pothole_edge.edge.runner import run

    free = run(EdgeConfig(model=str(model), video=str(clip), out=str(tmp_path / "free"), clips="1,0.5"))
    per_event = free["storage"]["storage_used_bytes"] / 6
    cap = int(per_event * 2.5)  # room for two events' clip and snapshot
    capped = run(
        EdgeConfig(model=str(model), video=str(clip), out=str(tmp_path / "capped"), clips="1,0.5", max_storage=str(cap))
    )
    removed = capped["storage"]["removed_for_space"]
    assert capped["storage"]["storage_used_bytes"] <= cap and removed
    ids = [int(Path(r).stem.split("_")[1]) for r in removed]
    assert ids == sorted(ids) and 1 in ids and 6 not in ids  # the oldest went first, the newest stayed
    kept = {int(p.stem.split("_")[1]) for p in (tmp_path / "capped" / "clips").glob("event_*.avi")}
    assert kept and max(kept) == 6
    # nothing is delivered to a dead webhook: every file stays, and what did not fit was never written
    dead = run(
        EdgeConfig(
            model=str(model),
            video=str(clip),
            out=str(tmp_path / "undelivered"),
            clips="1,0.5",
            max_storage=str(cap),
            webhook="http://127.0.0.1:9/x",
            outbox=str(tmp_path / "o.sqlite"),
            drain_timeout=0,
        )
    )
    assert dead["storage"]["removed_for_space"] == [] and dead["storage"]["skipped_for_space"] > 0
    assert dead["delivery"][0]["pending"] == 6


def test_a_van_sends_the_track_it_drove_in_chunks_beside_its_events(tmp_path, monkeypatch):
    from pothole_edge import messages
    from pothole_edge.edge.config import EdgeConfig
    from pothole_edge.edge.runner import run
    from pothole_edge.geo import distance_m
    from tests import drive
    from tests.test_edge import brightness_model

    monkeypatch.setattr(messages, "TRACK_CHUNK_S", 5.0)  # a chunk per 5 s of GPS time instead of a minute
    got: list[dict] = []

    class Office(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Office)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        video = drive.write_video(tmp_path / "drive.mp4", 20, [5.0, 15.0])
        track = drive.write_gpx(tmp_path / "drive.gpx", 20)
        run(
            EdgeConfig(
                model=str(brightness_model(tmp_path / "m.onnx")),
                video=str(video),
                out=str(tmp_path / "run"),
                gps=str(track),
                video_start=drive.START.isoformat(),
                webhook=f"http://127.0.0.1:{server.server_port}/ingest",
                vehicle_id="van-7",
                outbox=str(tmp_path / "outbox.sqlite"),
                drain_timeout=30,
            )
        )
    finally:
        server.shutdown()
    kinds = [messages.check(m) for m in got]  # what the office will check, it accepts
    chunks = sorted((m for m in got if m["kind"] == "track"), key=lambda m: m["chunk"])
    assert kinds.count("event") == 2 and len(chunks) >= 4
    assert [c["chunk"] for c in chunks] == list(range(1, len(chunks) + 1)) and len({c["id"] for c in chunks}) == len(
        chunks
    )
    assert [c["final"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    points = [p for c in chunks for p in c["points"]]
    assert all(c["points"][0] == prev["points"][-1] for prev, c in zip(chunks, chunks[1:]) if c["points"])
    steps = [distance_m(a[1], a[2], b[1], b[2]) for a, b in zip(points, points[1:]) if a != b]
    assert min(steps) >= 3.0 and points[-1][0] - points[0][0] > 15  # thinned, and the whole drive
    assert {m["schema_version"] for m in got} == {messages.SCHEMA_VERSION}
    with pytest.raises(messages.MessageError, match="points"):
        messages.check(chunks[0] | {"points": [[0, 999, 0]]})
