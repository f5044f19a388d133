"""edge-map: one registry of potholes across drives, in SQLite and PostgreSQL, and a map a browser shows."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest

from pothole_edge.edge.config import EdgeConfig
from pothole_edge.edge.runner import run
from pothole_edge.geo import distance_m
from pothole_edge.office.build import MapConfig, build
from tests import drive
from tests.test_cli import assert_usage_error
from tests.test_edge import brightness_model, needs

POTHOLES_S = [5.0, 15.0]
TRUTH = [drive.position(s) for s in POTHOLES_S]


@pytest.fixture(scope="module")
def drives(tmp_path_factory) -> dict[str, Path]:
    """Two passes over both potholes with a few metres of GPS noise, one pass with no fix at all, and three
    passes after the potholes were filled."""
    root = tmp_path_factory.mktemp("drives")
    model = brightness_model(root / "model.onnx")
    with_potholes = drive.write_video(root / "potholes.mp4", 20, POTHOLES_S)
    repaired = drive.write_video(root / "repaired.mp4", 20, [])
    out = {}
    plan = (
        ("pass1", with_potholes),
        ("pass2", with_potholes),
        ("fixed1", repaired),
        ("fixed2", repaired),
        ("fixed3", repaired),
    )
    for day, (name, video) in enumerate(plan):  # one drive a day
        track = drive.write_gpx(root / f"{name}.gpx", 20, jitter_m=2.5, seed=day, shift_s=day * 86400)
        start = (drive.START + timedelta(days=day)).isoformat()
        run(EdgeConfig(model=str(model), video=str(video), out=str(root / name), gps=str(track), video_start=start))
        out[name] = root / name
    start = drive.START.isoformat()
    blind = drive.write_gpx(root / "blind.gpx", 40, gap=(0, 30))  # the receiver finds its first fix after the drive
    run(
        EdgeConfig(
            model=str(model), video=str(with_potholes), out=str(root / "blind"), gps=str(blind), video_start=start
        )
    )
    out["blind"] = root / "blind"
    return out


def _features(out: Path) -> list[dict]:
    return json.loads((out / "potholes.geojson").read_text())["features"]


def test_two_passes_give_one_pothole_each_with_two_sightings(drives, tmp_path):
    summary = build(
        MapConfig(runs=(str(drives["pass1"]), str(drives["pass2"]), str(drives["blind"])), out=str(tmp_path / "map"))
    )
    features = _features(tmp_path / "map")
    assert summary["potholes"] == len(features) == 2  # a drive with no fix adds no pothole
    for feature, (lat, lon) in zip(sorted(features, key=lambda f: f["geometry"]["coordinates"][1]), TRUTH):
        flon, flat = feature["geometry"]["coordinates"]  # RFC 7946: longitude first
        assert distance_m(flat, flon, lat, lon) < 10
        props = feature["properties"]
        assert props["sightings"] == 2 and len(props["runs"]) == 2 and not props["possibly_repaired"]
        assert props["first_seen"].startswith("2026-11-26T08:00") and props["best_snapshot"].endswith(".jpg")
    rows = (tmp_path / "map" / "potholes.csv").read_text().splitlines()
    assert rows[0].startswith("id,lat,lon,sightings") and len(rows) == 3
    requests = json.loads((tmp_path / "map" / "open311.json").read_text())
    assert len(requests) == 2 and {"service_code", "lat", "long", "description"} <= set(requests[0])


def test_adding_a_run_again_changes_nothing(drives, tmp_path):
    config = MapConfig(runs=(str(drives["pass1"]), str(drives["pass2"])), out=str(tmp_path / "map"))
    build(config)
    first = (tmp_path / "map" / "potholes.geojson").read_text()
    again = build(MapConfig(runs=(str(drives["pass2"]), str(drives["pass1"])), out=str(tmp_path / "map")))
    assert again["runs_added"] == 0 and (tmp_path / "map" / "potholes.geojson").read_text() == first


def test_potholes_missed_on_three_passes_are_possibly_repaired(drives, tmp_path):
    runs = [str(drives[n]) for n in ("pass1", "pass2", "fixed1", "fixed2")]
    build(MapConfig(runs=tuple(runs), out=str(tmp_path / "map")))
    assert not any(f["properties"]["possibly_repaired"] for f in _features(tmp_path / "map"))  # two misses only
    build(MapConfig(runs=(str(drives["fixed3"]),), out=str(tmp_path / "map")))
    features = _features(tmp_path / "map")
    assert len(features) == 2 and all(f["properties"]["possibly_repaired"] for f in features)
    assert json.loads((tmp_path / "map" / "open311.json").read_text()) == []  # nothing to report for filled holes


def test_bad_inputs_are_one_line(drives, tmp_path):
    from tests.test_cli import BIN

    exe = str(BIN / "edge-map")
    assert_usage_error(
        subprocess.run([exe, str(tmp_path), "--out", str(tmp_path / "m")], capture_output=True, text=True),
        "not an edge-run output folder",
    )
    assert_usage_error(
        subprocess.run([exe, str(drives["pass1"]), "--radius", "0"], capture_output=True, text=True), "--radius"
    )
    assert_usage_error(
        subprocess.run(
            [exe, str(drives["pass1"]), "--db", "nosuch://x", "--out", str(tmp_path / "m")],
            capture_output=True,
            text=True,
        ),
        "--db",
    )


def test_a_fleet_shares_one_postgresql_registry(drives, postgres, tmp_path):
    build(MapConfig(runs=(str(drives["pass1"]),), out=str(tmp_path / "car1"), db=postgres))
    summary = build(
        MapConfig(runs=(str(drives["pass2"]), str(drives["pass1"])), out=str(tmp_path / "car2"), db=postgres)
    )
    assert summary["runs_added"] == 1 and summary["potholes"] == 2
    sqlite = build(MapConfig(runs=(str(drives["pass1"]), str(drives["pass2"])), out=str(tmp_path / "local")))
    assert sqlite["potholes"] == 2
    a, b = _features(tmp_path / "car2"), _features(tmp_path / "local")
    assert [f["properties"]["sightings"] for f in a] == [f["properties"]["sightings"] for f in b] == [2, 2]
    for fa, fb in zip(a, b):
        assert fa["geometry"]["coordinates"] == pytest.approx(fb["geometry"]["coordinates"], abs=1e-7)


def test_the_map_shows_a_marker_for_every_pothole_in_a_real_browser(drives, tmp_path):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    needs(
        chromium is not None and driver is not None,
        "needs chromium and chromium-driver (apt-get install chromium chromium-driver)",
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    build(MapConfig(runs=(str(drives["pass1"]), str(drives["pass2"])), out=str(tmp_path / "map")))
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        browser.get((tmp_path / "map" / "map.html").as_uri())
        deadline = time.monotonic() + 20
        while (
            browser.execute_script("return window.potholeMarkers ? window.potholeMarkers.length : -1") < 0
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        ids = browser.execute_script("return window.potholeMarkers.map(m => m.options.potholeId)")
        drawn = browser.execute_script("return document.querySelectorAll('path.leaflet-interactive').length")
        tracks = browser.execute_script(
            "let n = 0; "
            "map.eachLayer(l => { if (l instanceof L.Polyline && !(l instanceof L.CircleMarker)) n++; }); return n"
        )
        expected = sorted(f["id"] for f in _features(tmp_path / "map"))
        assert sorted(ids) == expected and drawn >= len(expected) and tracks == 2
        browser.set_window_size(900, 700)
        browser.save_screenshot(str(tmp_path / "map.png"))
        assert (tmp_path / "map.png").stat().st_size > 1000
    finally:
        browser.quit()
