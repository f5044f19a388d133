"""The office: vans' messages alone, through a real mosquitto or signed webhooks, into one live pothole map;
replayed and badly signed messages refused; two workers on one PostgreSQL; the live page in a real browser."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from pothole_edge.edge.config import EdgeConfig
from pothole_edge.edge.runner import run
from pothole_edge.geo import distance_m
from pothole_edge.messages import SIGNATURE_HEADER, TIMESTAMP_HEADER, event_message, sign
from pothole_edge.office.serve import ServeConfig, serve
from tests import drive
from tests.conftest import wait_for
from tests.test_cli import BIN, assert_usage_error
from tests.test_delivery import Broker
from tests.test_edge import brightness_model, needs

TRUTH = [drive.position(s) for s in (5.0, 15.0)]
SECRET = "office-test-secret"


@pytest.fixture(scope="module")
def drives(tmp_path_factory) -> dict:
    """Day 1 passes both potholes; day 2, the second was filled. GPS with a few metres of noise."""
    root = tmp_path_factory.mktemp("office-drives")
    plan = []
    for day, potholes in enumerate(([5.0, 15.0], [5.0])):
        video = drive.write_video(root / f"day{day}.mp4", 20, potholes)
        track = drive.write_gpx(root / f"day{day}.gpx", 20, jitter_m=2.5, seed=day, shift_s=day * 86400)
        plan.append((video, track, (drive.START + timedelta(days=day)).isoformat()))
    return {"model": brightness_model(root / "model.onnx"), "plan": plan}


class Office:
    """pothole-office serve on its own thread, as the CLI runs it."""

    def __init__(self, config: ServeConfig) -> None:
        self.stop, self.ready, self.port = threading.Event(), threading.Event(), 0
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(config,), daemon=True)
        self.thread.start()
        assert self.ready.wait(30), self.errors

    def _run(self, config: ServeConfig) -> None:
        try:
            serve(config, self.stop, on_ready=self._ready)
        except BaseException as e:  # noqa: BLE001 - shown by the test that waits for it
            self.errors.append(e)
            self.ready.set()

    def _ready(self, port: int) -> None:
        self.port = port
        self.ready.set()

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return r.read()

    def json(self, path: str) -> object:
        return json.loads(self.get(path))

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/events", body, {"Content-Type": "application/json", **headers}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def _drive(drives: dict, tmp_path: Path, **delivery) -> None:
    for day, (video, track, start) in enumerate(drives["plan"]):
        run(
            EdgeConfig(
                model=str(drives["model"]),
                video=str(video),
                out=str(tmp_path / f"van-day{day}"),
                gps=str(track),
                video_start=start,
                vehicle_id=f"van-{day + 1}",
                outbox=str(tmp_path / f"outbox{day}.sqlite"),
                attach_snapshot=True,
                drain_timeout=30,
                **delivery,
            )
        )


def _check_map(office: Office) -> None:
    """One pothole per true pothole within 10 m; the filled one possibly repaired; snapshots served."""

    def settled() -> bool:
        features = office.json("/potholes.geojson")["features"]
        return len(features) == 2 and sum(f["properties"]["sightings"] for f in features) == 3

    wait_for(settled, 30, "the office to hold both drives")
    wait_for(lambda: len(office.json("/tracks.json")) == 2, 30, "both tracks")
    time.sleep(1.0)  # the last track chunks may still be on their way: the repaired flag follows them
    features = sorted(office.json("/potholes.geojson")["features"], key=lambda f: f["geometry"]["coordinates"][1])
    for f, (lat, lon) in zip(features, TRUTH):
        assert distance_m(f["geometry"]["coordinates"][1], f["geometry"]["coordinates"][0], lat, lon) < 10
    first, second = (f["properties"] for f in features)
    assert first["sightings"] == 2 and len(first["runs"]) == 2 and not first["possibly_repaired"]
    assert second["sightings"] == 1 and second["possibly_repaired"]  # day 2 drove past and saw nothing
    assert first["runs"][0].startswith("van-1/") and first["runs"][1].startswith("van-2/")
    assert office.get("/" + first["best_snapshot"])[:3] == b"\xff\xd8\xff"
    open311 = office.json("/open311.json")
    assert len(open311) == 1 and open311[0]["lat"] == pytest.approx(features[0]["geometry"]["coordinates"][1])
    (lat, lon) = TRUTH[0]
    box = f"{lon - 0.001},{lat - 0.0005},{lon + 0.001},{lat + 0.0005}"
    assert len(office.json(f"/potholes.geojson?bbox={box}")["features"]) == 1
    assert office.get("/potholes.csv").decode().splitlines()[0].startswith("id,lat,lon")


def test_two_drives_through_mosquitto_make_one_live_map(drives, tmp_path):
    needs(
        shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists(),
        "needs mosquitto (apt-get install mosquitto; scripts/setup.sh does)",
    )
    broker = Broker(tmp_path / "broker")
    broker.start()
    office = Office(
        ServeConfig(
            data=str(tmp_path / "office"),
            mqtt=f"mqtt://127.0.0.1:{broker.port}",
            mqtt_client_id="office-1",
            http="127.0.0.1:0",
            repaired_after=1,
        )
    )
    try:
        wait_for(lambda: office.json("/health").get("mqtt") == "subscribed", 20, "the office to subscribe")
        _drive(drives, tmp_path, mqtt=f"mqtt://127.0.0.1:{broker.port}")
        _check_map(office)
        health = office.json("/health")
        assert health["refused"] == {} and health["added"] >= 5  # three events and at least one track chunk a day
        # nothing was copied from a van: the office holds its registry, its snapshots and its config alone
        assert {p.name for p in (tmp_path / "office").iterdir()} == {"potholes.sqlite", "snapshots", "config.json"}
    finally:
        office.close()
        broker.stop()


def _signed(message: dict, sent: float, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(message).encode()
    return body, {TIMESTAMP_HEADER: str(int(sent)), SIGNATURE_HEADER: sign(secret.encode(), body, int(sent))}


def test_two_drives_through_signed_webhooks_and_forged_ones_refused(drives, tmp_path, monkeypatch):
    monkeypatch.setenv("OFFICE_SECRET", SECRET)
    office = Office(
        ServeConfig(
            data=str(tmp_path / "office"), http="127.0.0.1:0", webhook_secret_env="OFFICE_SECRET", repaired_after=1
        )
    )
    try:
        hook = f"http://127.0.0.1:{office.port}/events"
        monkeypatch.setenv("VAN_SECRET", SECRET)
        _drive(drives, tmp_path, webhook=hook, webhook_secret_env="VAN_SECRET")
        _check_map(office)
        before = office.json("/potholes.geojson")
        lat, lon = drive.position(10.0)
        new = event_message("van-9", "forged", 1, 0.99, {"lat": lat, "lon": lon, "gps_time": 1.8e9}, {})
        now = time.time()
        body, headers = _signed(new, now - 3600)  # recorded an hour ago and sent again
        assert office.post(body, headers) == (401, {"error": "replayed"})
        body, headers = _signed(new, now + 3600)
        assert office.post(body, headers) == (401, {"error": "from the future"})
        body, headers = _signed(new, now, secret="not the secret")
        assert office.post(body, headers) == (401, {"error": "bad signature"})
        assert office.post(body, {})[0] == 401
        body, headers = _signed({**new, "peak_prob": 7}, now)  # signed, but not a message the office takes
        assert office.post(body, headers)[0] == 400
        assert office.json("/potholes.geojson") == before  # none of them changed anything
        refused = office.json("/health")["refused"]
        assert refused == {"replayed": 1, "from the future": 1, "bad signature": 1, "unsigned": 1, "malformed": 1}
        body, headers = _signed(new, now)  # the same message, signed now: taken once, however often it comes
        assert office.post(body, headers) == (200, {"outcome": "added"})
        assert office.post(body, headers) == (200, {"outcome": "duplicate"})
        assert len(office.json("/potholes.geojson")["features"]) == 3
    finally:
        office.close()


def test_the_office_refuses_writes_and_bad_requests(tmp_path):
    office = Office(ServeConfig(data=str(tmp_path / "office"), http="127.0.0.1:0"))
    try:
        assert office.post(b"{}", {})[0] == 403  # no --webhook-secret-env: webhook ingest is off
        for path in ("/potholes.geojson?bbox=1,2,3", "/potholes.geojson?bbox=0,95,1,96"):
            with pytest.raises(urllib.error.HTTPError) as e:
                office.get(path)
            assert e.value.code == 400
        for path in ("/snapshots/../potholes.sqlite", "/config.json", "/snapshots/x.jpg"):
            with pytest.raises(urllib.error.HTTPError) as e:
                office.get(path)
            assert e.value.code == 404
        request = urllib.request.Request(f"http://127.0.0.1:{office.port}/potholes.geojson", method="DELETE")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=10)
        assert e.value.code == 405
    finally:
        office.close()


def test_a_client_that_stops_sending_is_cut_off_and_others_are_served(tmp_path, monkeypatch):
    from pothole_edge.office import web

    monkeypatch.setattr(web, "CLIENT_TIMEOUT_S", 0.5)
    monkeypatch.setattr(web, "REQUEST_DEADLINE_S", 2.0)
    office = Office(ServeConfig(data=str(tmp_path / "office"), http="127.0.0.1:0"))
    try:
        with socket.create_connection(("127.0.0.1", office.port), timeout=10) as stalled:
            stalled.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # the headers never end
            assert "version" in office.json("/health")  # served while the other waits
            started = time.monotonic()
            assert stalled.recv(1024) == b""  # closed by the server, not by our own 10 s timeout
            assert time.monotonic() - started < 5
        with socket.create_connection(("127.0.0.1", office.port), timeout=10) as trickle:
            trickle.sendall(b"GET /health HTTP/1.0\r\n")
            trickle.settimeout(0.2)
            started = time.monotonic()
            while time.monotonic() - started < 8:
                try:
                    trickle.sendall(b"X")  # a header line that never ends, a byte every 0.2 s: no read times out
                    if trickle.recv(1024) == b"":
                        break
                except TimeoutError:
                    continue
                except OSError:  # reset by the server
                    break
            assert time.monotonic() - started < 5  # cut off at the 2 s deadline
    finally:
        office.close()


def test_two_workers_on_one_postgresql_split_a_fleet_without_duplicates(postgres, tmp_path):
    needs(
        shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists(),
        "needs mosquitto (apt-get install mosquitto; scripts/setup.sh does)",
    )
    import paho.mqtt.client as mqtt
    from sqlalchemy import create_engine

    server = create_engine("postgresql+psycopg://" + postgres[len("postgresql://") :], isolation_level="AUTOCOMMIT")
    with server.connect() as db:
        db.exec_driver_sql("CREATE DATABASE two_workers")
    url = server.url.set(database="two_workers").render_as_string(hide_password=False)
    broker = Broker(tmp_path / "broker")
    broker.start()
    workers = [
        Office(
            ServeConfig(
                data=str(tmp_path / f"worker{n}"),
                db=url,
                mqtt=f"mqtt://127.0.0.1:{broker.port}",
                mqtt_client_id=f"worker-{n}",
                http="127.0.0.1:0",
                batch=20,
            )
        )
        for n in range(2)
    ]
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet", protocol=mqtt.MQTTv5)
    try:
        for w in workers:
            wait_for(lambda w=w: w.json("/health").get("mqtt") == "subscribed", 20, "both workers to subscribe")
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        holes = [drive.position(float(s)) for s in range(2, 200, 4)]  # 50 potholes 40 m apart
        sent = []
        for van in range(6):  # six vans see every pothole, a metre or two apart
            for n, (lat, lon) in enumerate(holes):
                where = {"lat": lat + van * 1e-5, "lon": lon, "gps_time": 1.8e9 + van * 1000 + n}
                message = event_message(f"van-{van}", "day", n, 0.9, where, {})
                sent.append(publisher.publish(f"potholes/van-{van}/events", json.dumps(message), qos=1))
        for info in sent:
            info.wait_for_publish(10)
        wait_for(lambda: sum(w.json("/health")["added"] for w in workers) >= len(sent), 60, "both workers to finish")
        taken = [w.json("/health")["added"] for w in workers]
        assert all(t > 0 for t in taken), f"the shared subscription gave one worker everything: {taken}"
        features = workers[0].json("/potholes.geojson")["features"]
        assert len(features) == len(holes), f"{len(features)} potholes for {len(holes)}"
        assert all(f["properties"]["sightings"] == 6 for f in features)
    finally:
        publisher.loop_stop()
        for w in workers:
            w.close()
        broker.stop()


def test_the_live_map_shows_new_potholes_without_a_reload(drives, tmp_path, monkeypatch):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    needs(
        chromium is not None and driver is not None,
        "needs chromium and chromium-driver (apt-get install chromium chromium-driver)",
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("OFFICE_SECRET", SECRET)
    office = Office(
        ServeConfig(
            data=str(tmp_path / "office"), http="127.0.0.1:0", webhook_secret_env="OFFICE_SECRET", refresh_s=0.3
        )
    )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        for n, s in enumerate((5.0, 15.0)):
            lat, lon = drive.position(s)
            m = event_message("van-1", "day", n, 0.9, {"lat": lat, "lon": lon, "gps_time": 1.8e9 + n}, {})
            assert office.post(*_signed(m, time.time()))[0] == 200
        browser.get(f"http://127.0.0.1:{office.port}/")
        markers = "return window.potholeMarkers.map(m => m.options.potholeId)"
        wait_for(lambda: len(browser.execute_script(markers)) == 2, 20, "the page to draw two markers")
        page = browser.execute_script("return performance.timeOrigin")
        lat, lon = drive.position(10.0)
        m = event_message("van-2", "day", 0, 0.95, {"lat": lat, "lon": lon, "gps_time": 1.8e9 + 50}, {})
        assert office.post(*_signed(m, time.time()))[0] == 200
        wait_for(lambda: len(browser.execute_script(markers)) == 3, 20, "the new pothole to appear")
        assert browser.execute_script("return performance.timeOrigin") == page  # the same page: no reload
        assert sorted(browser.execute_script(markers)) == sorted(
            f["id"] for f in office.json("/potholes.geojson")["features"]
        )
    finally:
        browser.quit()
        office.close()


class GeoReport(BaseHTTPRequestHandler):
    """A city's GeoReport v2 endpoint: overloaded (503) for its first `busy` requests, then it files them."""

    plan: dict = {}

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        with self.plan["lock"]:
            self.plan["requests"] += 1
            if self.path != "/open311/v2/requests.json":
                status, body = 404, b"no such service"
            elif self.plan["requests"] <= self.plan["busy"]:
                status, body = 503, b"busy"
            else:
                self.plan["filed"].append({k: v[0] for k, v in form.items()})
                status, body = 201, json.dumps([{"service_request_id": f"SR-{len(self.plan['filed'])}"}]).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_open311_sends_each_pothole_once_through_a_busy_city_server(tmp_path, monkeypatch):
    from pothole_edge.office.build import open_registry
    from pothole_edge.office.ingest import Office as Ingest

    ingest = Ingest(open_registry(None, tmp_path, "X", 8.0, 3), tmp_path)
    for n, s in enumerate((5.0, 15.0)):
        lat, lon = drive.position(s)
        message = event_message("van-1", "day", n, 0.9, {"lat": lat, "lon": lon, "gps_time": 1.8e9 + n}, {})
        ingest.ingest([ingest.parse(json.dumps(message).encode(), "test")])
    GeoReport.plan = {"busy": 2, "requests": 0, "filed": [], "lock": threading.Lock()}
    server = ThreadingHTTPServer(("127.0.0.1", 0), GeoReport)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}/open311/v2"
    command = [str(BIN / "pothole-office"), "open311", "--endpoint", endpoint, "--api-key-env", "CITY_KEY"]
    env = {**os.environ, "CITY_KEY": "k-123"}
    try:
        first = subprocess.run([*command, "--data", str(tmp_path)], capture_output=True, text=True, env=env)
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout) == {"submitted": 2, "failed": 0, "pending": 0}
        again = subprocess.run([*command, "--data", str(tmp_path)], capture_output=True, text=True, env=env)
        assert json.loads(again.stdout)["submitted"] == 0  # nothing is sent twice
        filed = GeoReport.plan["filed"]
        assert len(filed) == 2 and GeoReport.plan["requests"] == 4  # two 503s retried, then one request each
        assert all(f["api_key"] == "k-123" and f["service_code"] == "pothole" for f in filed)
        assert {round(float(f["lat"]), 5) for f in filed} == {round(drive.position(s)[0], 5) for s in (5.0, 15.0)}
        ids = sorted(
            r["service_request_id"]
            for r in ingest.registry.engine.connect().execute(ingest.registry.t["open311"].select()).mappings()
        )
        assert ids == ["SR-1", "SR-2"]
        lat, lon = drive.position(25.0)  # a third pothole, then a mistyped endpoint: one line, nothing lost
        message = event_message("van-1", "day", 9, 0.9, {"lat": lat, "lon": lon, "gps_time": 1.8e9 + 9}, {})
        ingest.ingest([ingest.parse(json.dumps(message).encode(), "test")])
        wrong = [*command[:3], endpoint + "/nowhere", *command[4:], "--data", str(tmp_path)]
        assert_usage_error(subprocess.run(wrong, capture_output=True, text=True, env=env), "HTTP 404")
        last = subprocess.run([*command, "--data", str(tmp_path)], capture_output=True, text=True, env=env)
        assert json.loads(last.stdout)["submitted"] == 1 and len(GeoReport.plan["filed"]) == 3
        assert_usage_error(
            subprocess.run([*command, "--data", str(tmp_path / "none")], capture_output=True, text=True, env=env),
            "no registry",
        )
        missing_key = subprocess.run([*command, "--data", str(tmp_path)], capture_output=True, text=True)
        assert_usage_error(missing_key, "--api-key-env CITY_KEY")
    finally:
        server.shutdown()
