"""edge-run: sources, events, outputs, shutdown and bad input, on a tiny model whose answer is known.

The model says "pothole" in proportion to a frame's brightness, so a generated video with bright
and dark segments has known events.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest

from pothole_edge import metadata
from pothole_edge import spec as specs
from pothole_edge.edge.config import EdgeConfig
from pothole_edge.edge.decide import EventDetector
from pothole_edge.edge.reader import Newest
from pothole_edge.edge.runner import run
from tests.conftest import free_port, wait_for
from tests.test_cli import assert_usage_error

CROP = 32
DARK, BRIGHT = 40, 215
SEGMENTS = [(DARK, 20), (BRIGHT, 15), (DARK, 20), (BRIGHT, 10), (DARK, 15)]  # (level, frames)
ROOT = Path(__file__).resolve().parents[1]


def brightness_meta(grids: list | None = None, **changes) -> dict:
    prep = specs.preprocess(CROP, 36, "bilinear", [0.5] * 3, [0.5] * 3)
    spec = specs.describe(
        ["normal", "pothole"], 1, 0.5, "test", prep, specs.view(grids=grids or [[1, 1]], overlap=0.25), "brightness"
    )
    return (
        spec
        | {
            "input": {
                "name": "image",
                "dtype": "uint8",
                "layout": "NHWC",
                "channel_order": "RGB",
                "height": CROP,
                "width": CROP,
            },
            "output": {"name": "probs", "kind": "probabilities"},
            "checkpoint_sha256": "ab" * 32,
            "variant": "fp32",
        }
        | changes
    )


def brightness_model(path: Path, with_metadata: bool = True, meta: dict | None = None) -> Path:
    """uint8 NHWC in, softmax([-z, z]) out with z = (mean - 128) / 16: bright means pothole."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Sub", ["m", "c128"], ["d"]),
        helper.make_node("Div", ["d", "c16"], ["z0"]),
        helper.make_node("Unsqueeze", ["z0", "ax1"], ["z"]),
        helper.make_node("Neg", ["z"], ["nz"]),
        helper.make_node("Concat", ["nz", "z"], ["logits"], axis=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    consts = [
        helper.make_tensor("c128", TensorProto.FLOAT, [], [128.0]),
        helper.make_tensor("c16", TensorProto.FLOAT, [], [16.0]),
        helper.make_tensor("ax1", TensorProto.INT64, [1], [1]),
    ]
    graph = helper.make_graph(
        nodes,
        "brightness",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", CROP, CROP, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 2])],
        initializer=consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if with_metadata:
        helper.set_model_props(model, {metadata.KEY: json.dumps(meta if meta is not None else brightness_meta())})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def write_video(
    path: Path, segments: list[tuple[int, int]] = SEGMENTS, fps: float = 10.0, size: tuple[int, int] = (64, 48)
) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened(), "this OpenCV cannot write mp4v"
    rng = np.random.default_rng(0)
    for level, count in segments:
        for _ in range(count):
            noise = rng.integers(-10, 11, (size[1], size[0], 3))
            writer.write(np.clip(level + noise, 0, 255).astype(np.uint8))
    writer.release()
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return brightness_model(tmp_path_factory.mktemp("edge-model") / "model.onnx")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("edge-video") / "clip.mp4")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def edge_run(*args: str, timeout: float = 120, exe: str | None = None) -> subprocess.CompletedProcess:
    cmd = [exe] if exe else [sys.executable, "-c", "from edge.cli import main; main()"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout)


def bright_ranges(segments: list[tuple[int, int]] = SEGMENTS) -> list[tuple[int, int]]:
    out, start = [], 0
    for level, count in segments:
        if level == BRIGHT:
            out.append((start, start + count - 1))
        start += count
    return out


def test_video_gives_one_event_per_bright_segment(model, video, tmp_path):
    result = run(EdgeConfig(model=str(model), video=str(video), out=str(tmp_path / "run"), threads=1, model_fps=True))
    total = sum(n for _, n in SEGMENTS)
    assert result["status"] == "finished" and result["provider"] == "CPUExecutionProvider"
    assert result["frames"] == {"read": total, "processed": total, "dropped": 0, "unreadable": 0}

    rows = lines(tmp_path / "run" / "predictions.jsonl")
    assert [r["frame"] for r in rows] == list(range(total))  # a file loses no frame
    assert rows[10]["time"] == pytest.approx(1.0, abs=0.01)  # the file's clock, 10 fps
    for r in rows:
        assert r["label"] == ("pothole" if r["prob"] >= 0.5 else "normal")

    closed = [e for e in lines(tmp_path / "run" / "events.jsonl") if e["status"] == "closed"]
    assert len(closed) == result["events"] == 2
    for event, (first, last) in zip(closed, bright_ranges()):
        # an event starts at its first vote; the hysteresis holds the end a few frames
        assert first <= event["start_frame"] <= first + 2 and last <= event["end_frame"] <= last + 4
        assert first <= event["peak_frame"] <= last and event["peak_prob"] > 0.99 and not event["open_at_end"]
        assert rows[event["peak_frame"]]["prob"] == pytest.approx(event["peak_prob"], abs=1e-6)
        snap = cv2.imread(str(tmp_path / "run" / "snapshots" / f"event_{event['id']:05d}.jpg"))
        assert snap is not None and snap.mean() > 150  # the snapshot is the bright frame
    assert {r["event"] for r in rows if r["event"] is not None} == {1, 2}

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (
        summary["fps"] > 0
        and summary["model_only_fps"] > 0
        and summary["metadata"]["class_names"] == ["normal", "pothole"]
    )
    assert set(summary["latency_ms"]) == {"read", "preprocess", "infer", "post"}
    assert all(v["n"] == total and v["p95_ms"] >= v["p50_ms"] for v in summary["latency_ms"].values())
    assert json.loads((tmp_path / "run" / "config.json").read_text())["video"] == str(video)


def test_stride_and_threshold_flags(model, video, tmp_path):
    result = run(EdgeConfig(model=str(model), video=str(video), out=str(tmp_path / "run"), stride=3, threshold=0.99995))
    rows = lines(tmp_path / "run" / "predictions.jsonl")
    assert [r["frame"] for r in rows] == list(range(0, sum(n for _, n in SEGMENTS), 3))
    # bright frames score 0.99998: the rule counts frames at or above the threshold, so even this one, which an
    # average of probabilities would take many frames to reach, opens the two bright stretches' events
    assert result["threshold"] == 0.99995 and result["events"] == 2


def test_event_detector_hysteresis_stops_flicker():
    detector = EventDetector(threshold=0.5, votes=(2, 3), hysteresis=0.3)
    probs = [0.1, 0.6, 0.45, 0.55, 0.4, 0.6, 0.2, 0.1, 0.1, 0.1]  # dips to 0.4 stay above 0.35, the off level
    steps = [detector.update(i, i / 10, p, payload=i) for i, p in enumerate(probs)]
    assert [s.active for s in steps] == [False, False, False, True, True, True, True, True, False, False]
    assert sum(s.opened is not None for s in steps) == 1
    assert steps[3].new_peak and steps[3].peak == 1  # the votes completed on frame 3; the peak was frame 1's
    closed = steps[8].closed  # three frames in a row below the off level
    assert (closed.start_frame, closed.end_frame, closed.peak_prob, closed.peak_frame, closed.frames) == (
        1,
        5,
        0.6,
        1,
        5,
    )


@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.904, 0.992, 0.99999])
def test_two_frames_of_a_pothole_give_one_event_whatever_the_threshold(threshold):
    detector = EventDetector(threshold=threshold, votes=(2, 3), hysteresis=0.3)
    probs = [0.01] * 20 + [0.999995, 0.999995] + [0.01] * 20 + [0.999995] + [0.01] * 20  # then one stray frame
    steps = [detector.update(i, i / 10, p) for i, p in enumerate(probs)]
    opened = [s.opened for s in steps if s.opened]
    assert len(opened) == 1 and (opened[0].start_frame, opened[0].peak_frame) == (20, 20)
    assert sum(1 for s in steps if s.closed) == 1


def test_newest_slot_keeps_only_the_latest_frame():
    slot = Newest()
    for i in range(5):
        slot.put(i)
    assert slot.get(timeout=0.1) == 4 and slot.dropped == 4
    slot.close()
    assert slot.get(timeout=0.1) is None


def test_image_folder_skips_unreadable_files(model, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, level in enumerate([DARK, BRIGHT, DARK, BRIGHT, BRIGHT]):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((40, 50, 3), level, np.uint8))
    (folder / "5.jpg").write_bytes(b"not an image")
    result = run(EdgeConfig(model=str(model), images=str(folder), out=str(tmp_path / "run")))
    rows = lines(tmp_path / "run" / "predictions.jsonl")
    assert [(Path(r["file"]).name, r["label"]) for r in rows] == [
        ("0.png", "normal"),
        ("1.png", "pothole"),
        ("2.png", "normal"),
        ("3.png", "pothole"),
        ("4.png", "pothole"),
    ]
    # photos are not a sequence: each pothole photo is its own closed event with its snapshot, even side by side
    events = [e for e in lines(tmp_path / "run" / "events.jsonl") if e["status"] == "closed"]
    assert result["frames"]["unreadable"] == 1 and result["events"] == len(events) == 3
    assert [r["event"] for r in rows] == [None, 1, None, 2, 3] and not any(e["open_at_end"] for e in events)
    assert len(list((tmp_path / "run" / "snapshots").glob("event_*.jpg"))) == 3
    run(EdgeConfig(model=str(model), images=str(folder / "*.png"), out=str(tmp_path / "glob")))
    assert len(lines(tmp_path / "glob" / "predictions.jsonl")) == 5


class FakeCamera:
    """cv2.VideoCapture stand-in. Each open plays the next script: a number of frames, or None for a failed open."""

    scripts: list = []
    opens = 0

    def __init__(self, target, *args):
        assert target == 0
        cls = type(self)
        self.frames = cls.scripts[cls.opens] if cls.opens < len(cls.scripts) else None
        cls.opens += 1

    def isOpened(self):
        return self.frames is not None

    def read(self):
        if not self.frames:
            return False, None
        self.frames -= 1
        time.sleep(0.002)
        return True, np.full((48, 64, 3), BRIGHT, np.uint8)

    def get(self, prop):
        return 30.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self):
        pass


def test_fake_camera_reconnects_then_reports_the_lost_source(model, tmp_path, monkeypatch):
    monkeypatch.setattr("pothole_edge.edge.sources.camera_missing", lambda index: False)  # a fake camera 0
    # open, 40 frames, disconnect; one failed reopen; back for 40 frames; then gone for good
    monkeypatch.setattr(FakeCamera, "scripts", [40, None, 40])
    monkeypatch.setattr(FakeCamera, "opens", 0)
    monkeypatch.setattr(cv2, "VideoCapture", FakeCamera)
    result = run(EdgeConfig(model=str(model), camera=0, out=str(tmp_path / "run"), reconnect_timeout=1.0))
    assert result["status"] == "source lost" and result["reconnects"] == 1
    gap = result["gaps"][0]
    assert gap["tries"] == 2 and gap["restored_at"] >= gap["lost_at"] and gap["gap_s"] >= 0.2  # one back-off wait
    assert result["frames"]["read"] == 80 and 0 < result["frames"]["processed"] <= 80
    assert result["frames"]["processed"] + result["frames"]["dropped"] == 80  # the newest frame wins, none is invented
    rows = lines(tmp_path / "run" / "predictions.jsonl")
    assert len(rows) == result["frames"]["processed"] and all(r["label"] == "pothole" for r in rows)
    assert any(r["time"] > gap["restored_at"] - 1e-3 for r in rows)  # frames after the reconnect


def test_camera_that_never_opens_fails_after_its_retries(model, tmp_path, monkeypatch):
    monkeypatch.setattr("pothole_edge.edge.sources.camera_missing", lambda index: False)  # a fake camera 0
    monkeypatch.setattr(FakeCamera, "scripts", [])
    monkeypatch.setattr(FakeCamera, "opens", 0)
    monkeypatch.setattr(cv2, "VideoCapture", FakeCamera)
    from pothole_edge.errors import UsageError

    with pytest.raises(UsageError, match=r"camera 0 did not open after \d+ tries over 0.6 s; check the index"):
        run(EdgeConfig(model=str(model), camera=0, out=str(tmp_path / "run"), reconnect_timeout=0.6))
    assert FakeCamera.opens >= 3 and not (tmp_path / "run" / "predictions.jsonl").exists()


def needs(ok: bool, why: str) -> None:
    """Skip locally when a tool is missing; in CI (POTHOLE_EDGE_CI=1, set by .ci/run) fail instead."""
    if not ok:
        if os.environ.get("POTHOLE_EDGE_CI"):
            pytest.fail(why)
        pytest.skip(why)


def _frames_after(predictions: Path, t0: float) -> int:
    """Frames stamped after t0: what the stream test's assertions count, so its waits count the same."""
    if not predictions.exists():
        return 0
    times = []
    for line in predictions.read_text().splitlines():
        try:
            times.append(json.loads(line)["time"])
        except (ValueError, KeyError):
            pass  # the line being written
    return sum(1 for t in times if t is not None and t > t0)


def _frames_after_gap(out: Path, k: int) -> int:
    """Frames stamped after the run's k-th reconnection as summary.json records it (every 5 s): the mark the
    assertions count from. A mark taken by the test would be early: frames the old connection had buffered are
    read after the server stopped."""
    try:
        gaps = json.loads((out / "summary.json").read_text())["gaps"]
    except (OSError, ValueError, KeyError):
        return 0
    return _frames_after(out / "predictions.jsonl", gaps[k]["restored_at"]) if len(gaps) > k else 0


def test_stream_survives_two_server_restarts(model, tmp_path):
    needs(shutil.which("ffmpeg") is not None, "needs ffmpeg (apt-get install ffmpeg; scripts/setup.sh does)")
    clip = write_video(tmp_path / "loop.mp4", [(BRIGHT, 8), (DARK, 8)], fps=25.0)
    port = free_port()
    serve = [
        "ffmpeg",
        "-nostdin",
        "-loglevel",
        "error",
        "-re",
        "-stream_loop",
        "-1",
        "-i",
        str(clip),
        "-c:v",
        "mpeg4",
        "-g",
        "10",
        "-f",
        "mpegts",
        f"tcp://127.0.0.1:{port}?listen=1",
    ]
    out = tmp_path / "run"
    server = subprocess.Popen(serve)
    edge = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from edge.cli import main; main()",
            "--model",
            str(model),
            "--stream",
            f"tcp://127.0.0.1:{port}",
            "--out",
            str(out),
            "--reconnect-timeout",
            "30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    predictions = out / "predictions.jsonl"

    try:
        for restart in range(2):
            what = f"frames before restart {restart + 1}"
            counted = (lambda: _frames_after(predictions, 0.0)) if restart == 0 else partial(_frames_after_gap, out, 0)
            wait_for(lambda c=counted: c() >= 20, 60, what)
            server.terminate()
            server.wait(10)
            time.sleep(1.0)  # the server is down for at least a second
            server = subprocess.Popen(serve)
        wait_for(lambda: _frames_after_gap(out, 1) >= 20, 60, "frames after the second restart")
        edge.send_signal(signal.SIGTERM)
        log, _ = edge.communicate(timeout=30)
    finally:
        for p in (server, edge):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert edge.returncode == 0, log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["reconnects"] == 2, log
    rows = lines(predictions)
    assert len(rows) == summary["frames"]["processed"]
    for gap in summary["gaps"]:
        assert gap["gap_s"] >= 0.9 and gap["tries"] >= 1
        assert sum(r["time"] > gap["restored_at"] for r in rows) >= 20  # new frames after each restart
    assert log.count("lost at") == 2 and log.count("back at") == 2
    assert {r["label"] for r in rows} == {"normal", "pothole"}  # real decoded frames, both halves of the loop


def test_sigterm_and_kill_keep_what_was_written(model, tmp_path):
    long = write_video(tmp_path / "long.mp4", [(DARK, 50), (BRIGHT, 50)] * 30)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        out = tmp_path / sig.name
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from edge.cli import main; main()",
                "--model",
                str(model),
                "--video",
                str(long),
                "--out",
                str(out),
                "--threads",
                "1",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(
            lambda o=out: (
                (o / "predictions.jsonl").exists() and len((o / "predictions.jsonl").read_text().splitlines()) > 150
            ),
            60,
            "predictions",
        )
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        rows = lines(out / "predictions.jsonl")  # every line is whole JSON, even after a kill
        assert [r["frame"] for r in rows] == list(range(len(rows)))
        if sig == signal.SIGTERM:
            assert proc.returncode == 0, err
            summary = json.loads((out / "summary.json").read_text())
            assert summary["status"] == "stopped" and summary["frames"]["processed"] == len(rows) < 3000
            events = lines(out / "events.jsonl")
            assert events[-1]["status"] == "closed"  # an event open at the signal is closed in the file


def test_bad_inputs_exit_2_with_one_line(model, video, tmp_path):
    bare = brightness_model(tmp_path / "bare.onnx", with_metadata=False)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    used = tmp_path / "used"
    run(EdgeConfig(model=str(model), video=str(video), out=str(used)))
    kept = (used / "predictions.jsonl").read_text()
    cases = [
        (["--model", str(tmp_path / "missing.onnx"), "--video", str(video)], ["missing.onnx", "does not exist"]),
        (["--model", str(bare), "--video", str(video)], ["no pothole-edge metadata", "pt-export"]),
        (["--model", str(model), "--video", str(corrupt)], ["cannot decode video", "corrupt.mp4"]),
        (["--model", str(model), "--video", str(tmp_path / "none.mp4")], ["none.mp4 does not exist"]),
        (
            ["--model", str(model), "--camera", "97", "--reconnect-timeout", "0.5"],
            ["camera 97: /dev/video97 does not exist", "--camera"],
        ),
        (
            ["--model", str(model), "--video", str(video), "--out", str(blocker / "sub")],
            ["cannot write the output directory", "--out"],
        ),
        (["--model", str(model), "--video", str(video), "--out", str(used)], ["already holds a run", "new --out"]),
        (["--model", str(model), "--images", str(tmp_path / "empty*")], ["no images in", "--images"]),
        (["--model", str(model), "--stream", "/dev/video0"], ["not a stream URL", "rtsp"]),
        (
            ["--model", str(model), "--video", str(video), "--device", "cuda"],
            ["CUDAExecutionProvider", "--allow-cpu-fallback"],
        ),
        (["--model", str(model), "--video", str(video), "--stride", "0"], ["--stride must be an integer of 1 or more"]),
    ]
    for args, words in cases:
        result = (
            edge_run(*args, "--out", str(tmp_path / "o"), timeout=60)
            if "--out" not in args
            else edge_run(*args, timeout=60)
        )
        assert_usage_error(result, *words)
        assert not (tmp_path / "o" / "predictions.jsonl").exists()
    assert (used / "predictions.jsonl").read_text() == kept  # nothing already written is lost
    two = edge_run("--model", str(model), "--video", str(video), "--images", str(tmp_path))
    assert two.returncode == 2 and "not allowed with argument" in two.stderr


def test_cpu_fallback_when_asked_for(model, video, tmp_path):
    result = edge_run(
        "--model",
        str(model),
        "--video",
        str(video),
        "--device",
        "cuda",
        "--allow-cpu-fallback",
        "--out",
        str(tmp_path / "run"),
    )
    assert result.returncode == 0, result.stderr
    assert "provider: CPUExecutionProvider (asked for cuda" in result.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["provider"] == "CPUExecutionProvider"


def test_edge_runs_with_torch_blocked(model, video, tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
        "import edge.cli, edge.runner, edge.photoclip\n"
        f"edge.cli.main(['--model', {str(model)!r}, '--video', {str(video)!r}, '--out', {str(tmp_path / 'run')!r}])\n"
        "assert not any(m.startswith('torch') and sys.modules[m] is not None for m in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "finished"


EDGE_VENV = ROOT / ".venv-edge"


def test_edge_extra_alone_installs_and_runs(model, video, tmp_path):
    needs(
        (EDGE_VENV / "bin" / "edge-run").exists(),
        "needs .venv-edge, the `pip install .[edge]` environment scripts/setup.sh makes",
    )
    python = str(EDGE_VENV / "bin" / "python")
    no_torch = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    result = edge_run(
        "--model",
        str(model),
        "--video",
        str(video),
        "--out",
        str(tmp_path / "run"),
        exe=str(EDGE_VENV / "bin" / "edge-run"),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["events"] == 2


def test_clip_render_and_score(model, tmp_path):
    from pothole_edge.edge.cli import clip_main

    photos = tmp_path / "photos"
    for name, level in (("normal", DARK), ("pothole", BRIGHT)):
        (photos / name).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(photos / name / f"{i}.jpg"), np.full((60, 80, 3), level, np.uint8))
    clip_main(
        [
            "render",
            "--images",
            str(photos),
            "--out",
            str(tmp_path / "clip.mp4"),
            "--frames-per-photo",
            "4",
            "--size",
            "64",
        ]
    )
    labels = lines_csv(tmp_path / "clip.mp4.labels.csv")
    assert len(labels) == 24 and sorted({r["label"] for r in labels}) == ["normal", "pothole"]
    run(EdgeConfig(model=str(model), video=str(tmp_path / "clip.mp4"), out=str(tmp_path / "run")))
    from pothole_edge.edge.photoclip import score

    result = score(str(tmp_path / "run"), str(tmp_path / "clip.mp4.labels.csv"))
    assert result["frames"] == 24 and result["photos"] == 6 and result["photo_agreement"] == 1.0


def lines_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_save_video_writes_every_processed_frame(model, video, tmp_path):
    result = run(EdgeConfig(model=str(model), video=str(video), out=str(tmp_path / "run"), save_video=True, show=True))
    cap = cv2.VideoCapture(str(tmp_path / "run" / "annotated.mp4"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    assert (
        frames == result["frames"]["processed"] == sum(n for _, n in SEGMENTS)
    )  # --show without a display is ignored, not fatal


@pytest.fixture(scope="module")
def tiled_model(tmp_path_factory) -> Path:
    """The brightness model looking at a whole-frame tile and a 3x2 grid, pooled by max."""
    return brightness_model(
        tmp_path_factory.mktemp("tiled") / "model.onnx", meta=brightness_meta(grids=[[1, 1], [3, 2]])
    )


def _patch_frame(path: Path, x0: int, y0: int, size: int = 110) -> Path:
    frame = np.full((240, 400, 3), DARK, np.uint8)
    frame[y0 : y0 + size, x0 : x0 + size] = 255
    cv2.imwrite(str(path), frame)
    return path


def test_a_small_pothole_is_found_by_its_tile_and_the_roi_can_exclude_it(tiled_model, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    _patch_frame(folder / "a.png", 280, 125)  # bottom right: too small to brighten the whole frame
    whole = run(
        EdgeConfig(
            model=str(brightness_model(tmp_path / "whole.onnx")), images=str(folder), out=str(tmp_path / "whole")
        )
    )
    assert lines(tmp_path / "whole" / "predictions.jsonl")[0]["label"] == "normal" and whole["tiles_per_frame"] == 1
    result = run(EdgeConfig(model=str(tiled_model), images=str(folder), out=str(tmp_path / "tiled")))
    (row,) = lines(tmp_path / "tiled" / "predictions.jsonl")
    assert result["tiles_per_frame"] == 7 and row["label"] == "pothole"
    x0, y0, x1, y1 = row["tile"]
    assert x0 <= 300 and y0 <= 150 and x1 >= 370 and y1 >= 220  # the tile that decided holds the patch
    left = run(EdgeConfig(model=str(tiled_model), images=str(folder), out=str(tmp_path / "left"), roi="0,0,0.6,1"))
    (row,) = lines(tmp_path / "left" / "predictions.jsonl")
    assert row["label"] == "normal" and row["tile"][2] <= 0.6 * 400 + 1 and left["view"]["region"] == [0, 0, 0.6, 1]
    assert json.loads((tmp_path / "left" / "config.json").read_text())["roi"] == "0,0,0.6,1"


def test_snapshots_and_the_annotated_video_draw_the_deciding_tile(tiled_model, tmp_path):
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (400, 240))
    for i in range(30):
        frame = np.full((240, 400, 3), DARK, np.uint8)
        if 10 <= i < 20:
            frame[125:235, 280:390] = 255
        writer.write(frame)
    writer.release()
    result = run(EdgeConfig(model=str(tiled_model), video=str(clip), out=str(tmp_path / "run"), save_video=True))
    assert result["events"] == 1 and result["events_per_1000_frames"] == pytest.approx(1000 / 30, abs=0.01)
    (event,) = [e for e in lines(tmp_path / "run" / "events.jsonl") if e["status"] == "closed"]
    x0, y0, x1, y1 = (int(v) for v in event["peak_tile"])
    snap = cv2.imread(str(tmp_path / "run" / "snapshots" / "event_00001.jpg"))
    edge = snap[max(y0, 0) : y1, max(x0, 0) : max(x0, 0) + 2].astype(int)
    assert (edge[..., 2] - edge[..., 1] > 100).mean() > 0.8  # a red line along the tile's left side
    assert cv2.VideoCapture(str(tmp_path / "run" / "annotated.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 30


def test_live_frames_are_cut_into_tiles_only_when_chosen(tmp_path):
    import threading

    from pothole_edge.edge.reader import Reader
    from pothole_edge.edge.sources import Frame

    class Burst:
        live = True

        def frames(self, stop):
            for i in range(200):
                yield Frame(i, float(i), np.zeros((8, 8, 3), np.uint8), 0.0)
                time.sleep(0.0005)

    cut = []

    def prepare(frame):
        cut.append(frame.index)
        time.sleep(0.01)  # slower than the camera
        return frame

    stop = threading.Event()
    reader = Reader(Burst(), prepare, stop).start()
    taken = []
    while (item := reader.next()) is not None:
        taken.append(item.index)
        time.sleep(0.01)
    reader.join()
    assert reader.read == 200 and reader.dropped > 100
    assert len(cut) <= len(taken) + 1  # nothing is preprocessed only to be dropped
    assert taken == sorted(taken) and set(taken) <= set(cut)


def test_threads_are_capped_at_the_usable_cores(model, video, tmp_path):
    from pothole_edge.system import usable_cores

    result = run(
        EdgeConfig(model=str(model), video=str(video), out=str(tmp_path / "run"), threads=100000, max_frames=3)
    )
    assert result["threads"] == usable_cores() and result["frames"]["processed"] == 3
    assert result["spinning"] is False  # idle inference threads leave the reader's cores alone


def test_out_is_claimed_atomically_and_a_run_that_never_starts_leaves_nothing(model, tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from pothole_edge.edge.record import claim_out
    from pothole_edge.errors import UsageError

    def attempt(path):
        try:
            return claim_out(path)
        except UsageError:
            return None

    for trial in range(30):
        with ThreadPoolExecutor(4) as pool:
            won = [c for c in pool.map(attempt, [tmp_path / f"race{trial}"] * 4) if c is not None]
        assert len(won) == 1
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    (partial / "annotated.mp4").write_bytes(b"x")
    with pytest.raises(UsageError, match="already holds a run"):
        claim_out(partial)
    monkeypatch.setattr(FakeCamera, "scripts", [])
    monkeypatch.setattr(FakeCamera, "opens", 0)
    monkeypatch.setattr(cv2, "VideoCapture", FakeCamera)
    monkeypatch.setattr("pothole_edge.edge.sources.camera_missing", lambda index: False)  # a fake camera 0
    with pytest.raises(UsageError, match="did not open"):
        run(EdgeConfig(model=str(model), camera=0, out=str(tmp_path / "new" / "run"), reconnect_timeout=0.3))
    assert not (tmp_path / "new").exists()


def test_model_arguments_a_user_gets_wrong(model, video, tmp_path):
    run_dir = tmp_path / "run-dir"
    run_dir.mkdir()
    shutil.copy(model, run_dir / "model.onnx")
    result = edge_run("--model", str(run_dir), "--video", str(video), "--out", str(tmp_path / "a"))
    assert result.returncode == 0 and f"model: {run_dir / 'model.onnx'}" in result.stderr
    (run_dir / "model.pt").write_bytes(b"PK\x03\x04" + os.urandom(200))
    assert_usage_error(
        edge_run("--model", str(run_dir / "model.pt"), "--video", str(video)), "PyTorch checkpoint", "pt-export"
    )
    assert_usage_error(edge_run("--model", str(tmp_path), "--video", str(video)), "holds no model.onnx")
    assert_usage_error(edge_run("--model", str(model), "--video", str(tmp_path)), "is a directory", "--images")
    assert_usage_error(edge_run("--model", str(model), "--video", "/dev/zero"), "not a regular file")
    assert_usage_error(edge_run("--model", str(model), "--video", str(video), "--max-frames", "-1"), "--max-frames")
    assert_usage_error(
        edge_run("--model", str(model), "--video", str(video), "--threads", "-1"), "--threads must be an integer of 1"
    )
    assert_usage_error(edge_run("--model", str(model), "--video", str(video), "--roi", "0,0,1"), "--roi")
    assert_usage_error(
        edge_run("--model", str(model)), "one of the arguments --camera --video --stream --images is required", "--help"
    )


def test_edge_install_says_which_extra_the_training_commands_need():
    needs(
        (EDGE_VENV / "bin" / "pt-train").exists(),
        "needs .venv-edge, the `pip install .[edge]` environment scripts/setup.sh makes",
    )
    for command, extra in (
        ("pt-train", "train"),
        ("pt-eval", "train"),
        ("pt-export", "export"),
        ("pt-bench", "export"),
    ):
        result = subprocess.run(
            [str(EDGE_VENV / "bin" / command), "--help"], capture_output=True, text=True, timeout=60
        )
        assert_usage_error(result, f"{command} needs the '{extra}' extra", f"pip install '.[{extra}]' in a clone")


def test_distance_gate_classifies_road_not_frames(caplog):
    from pothole_edge.edge.coverage import DistanceGate

    caplog.set_level("WARNING", logger="edge")
    gate = DistanceGate(every_m=4.0, view_depth_m=8.0)
    taken = [gate.take(k / 30, 100 / 3.6) for k in range(300)]  # 10 s at 100 km/h, 30 fps
    assert taken[0] and sum(taken) == 60  # 278 m of road, a frame every 5th: 4.63 m apart
    report = gate.summary()
    assert report["road_m"] == pytest.approx(276.9, abs=0.5) and report["frames_skipped"] == 240
    assert report["gap_m_p50"] == pytest.approx(4.63, abs=0.01) and report["unseen_stretches"] == 0
    sparse = DistanceGate(every_m=12.0, view_depth_m=8.0)
    for k in range(300):
        sparse.take(k / 30, 100 / 3.6)
    gaps = sparse.summary()
    # 13 frames of 0.93 m: 12.04 m between classified frames, 4.04 m of each gap past the view's 8 m
    assert gaps["unseen_stretches"] == gaps["frames_classified"] - 1
    assert gaps["unseen_longest_m"] == pytest.approx(4.04, abs=0.06)
    # said once while it runs (the first gate never left road unseen), with what to change
    warned = [r.getMessage() for r in caplog.records if "unseen" in r.getMessage()]
    assert len(warned) == 1 and "12.0 m between two classified frames" in warned[0] and "--test-grids" in warned[0]


def test_distance_gate_takes_every_frame_when_the_speed_is_unknown():
    from pothole_edge.edge.coverage import DistanceGate

    gate = DistanceGate(every_m=4.0, view_depth_m=8.0)
    assert all(gate.take(k / 30, None) for k in range(10))
    assert gate.summary()["frames_without_speed"] == 9


def test_every_m_defaults_to_half_the_view_depth_where_a_speed_is_known(model, video, tmp_path):
    assert EdgeConfig(model="m", video="v.mp4").distance_step() == 0.0  # no speed: nothing may be skipped
    assert EdgeConfig(model="m", images="d", speed_kmh=36.0).distance_step() == 0.0  # an image folder has no clock
    assert EdgeConfig(model="m", video="v.mp4", gps="t.gpx", view_depth_m=10.0).distance_step() == 5.0
    assert (
        EdgeConfig(model="m", video="v.mp4", speed_kmh=36.0, every_m=0.0).distance_step() == 0.0
    )  # asked: every frame
    result = run(EdgeConfig(model=str(model), video=str(video), out=str(tmp_path / "run"), speed_kmh=36.0))
    assert result["coverage"]["every_m"] == 4.0 and result["coverage"]["gap_m_max"] == pytest.approx(4.0, abs=0.01)
    frames = [r["frame"] for r in lines(tmp_path / "run" / "predictions.jsonl")]
    assert frames == list(range(0, sum(n for _, n in SEGMENTS), 4))  # 1 m a frame at 10 fps
    assert json.loads((tmp_path / "run" / "config.json").read_text())["every_m"] == 4.0  # the resolved value


def test_a_frame_skipped_by_distance_is_never_cut_into_tiles(model, video, tmp_path, monkeypatch):
    from pothole_edge import preprocess

    cut, real = [], preprocess.tiles
    monkeypatch.setattr(preprocess, "tiles", lambda image, spec: cut.append(1) or real(image, spec))
    result = run(EdgeConfig(model=str(model), video=str(video), out=str(tmp_path / "run"), every_m=3.0, speed_kmh=36.0))
    assert result["coverage"]["frames_skipped"] > 0
    assert len(cut) == result["coverage"]["frames_classified"]


def test_every_m_selects_frames_by_distance_on_a_file_and_events_still_fire(model, video, tmp_path):
    result = run(EdgeConfig(model=str(model), video=str(video), out=str(tmp_path / "run"), every_m=3.0, speed_kmh=36.0))
    rows = lines(tmp_path / "run" / "predictions.jsonl")
    assert [r["frame"] for r in rows] == list(range(0, sum(n for _, n in SEGMENTS), 3))  # 1 m a frame at 10 fps
    coverage = result["coverage"]
    assert coverage["frames_classified"] == len(rows) and coverage["gap_m_max"] == pytest.approx(3.0, abs=0.01)
    assert coverage["road_m"] == pytest.approx(sum(n for _, n in SEGMENTS) - 1, abs=0.01)
    assert result["events"] == 2  # 5 and 4 classified frames of the two bright stretches: 2 of 3 votes each
    again = run(
        EdgeConfig(model=str(model), video=str(video), out=str(tmp_path / "again"), every_m=3.0, speed_kmh=36.0)
    )
    assert [r["frame"] for r in lines(tmp_path / "again" / "predictions.jsonl")] == [r["frame"] for r in rows]
    assert again["coverage"] == coverage
