"""edge-run: a thin argparse layer over edge.runner.run (argparse, because a dashcam installs no click)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from pothole_edge.cli import Parser, setup_logging
from pothole_edge.cli import run as run_command
from pothole_edge.edge.config import EdgeConfig
from pothole_edge.errors import DiskFull, UsageError
from pothole_edge.redact import redact
from pothole_edge.session import PRECISIONS


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="edge-run", description="Classify dashcam frames with an exported pothole model and record pothole events."
    )
    p.add_argument(
        "--model",
        required=True,
        help="model.onnx (or model.int8.onnx / model.fp16.onnx) written by pt-export, or its run directory",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--camera", type=int, metavar="N", help="camera index, as OpenCV numbers them")
    src.add_argument("--video", metavar="PATH", help="a video file; every frame is processed")
    src.add_argument("--stream", metavar="URL", help="rtsp://, http(s):// or tcp:// stream")
    src.add_argument("--images", metavar="DIR|GLOB", help="a folder or glob of images")
    p.add_argument("--out", help="output directory (default: runs/edge/<date-time>)")
    p.add_argument(
        "--device",
        default="auto",
        help="execution provider: auto, tensorrt, cuda or cpu; tensorrt:N and cuda:N for GPU N; auto tries "
        "TensorRT, CUDA, then CPU, as the model's variant allows (default: auto)",
    )
    p.add_argument("--trt-cache", metavar="DIR", help="TensorRT engine cache (default: ~/.cache/pothole-edge/tensorrt)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="TensorRT build precision (default: fp32)")
    p.add_argument(
        "--allow-cpu-fallback", action="store_true", help="run on the CPU when the --device asked for is unusable"
    )
    p.add_argument(
        "--threads", type=int, help="inference threads, at most the usable cores (default: every usable core)"
    )
    p.add_argument("--threshold", type=float, help="pothole threshold (default: the model's)")
    p.add_argument(
        "--roi",
        metavar="X0,Y0,X1,Y1",
        help=(
            "the part of the frame to look at, as fractions, for a camera mounted differently (default: the model's "
            "view)"
        ),
    )
    p.add_argument(
        "--votes",
        default="2/3",
        help="K/N: an event opens when K of the last N classified frames reach the threshold, whatever the threshold "
        "(default: 2/3)",
    )
    p.add_argument(
        "--hysteresis",
        type=float,
        default=0.3,
        help="an event ends after N frames below threshold*(1-hysteresis) (default: 0.3)",
    )
    p.add_argument("--stride", type=int, default=1, help="files: process every Nth frame (default: 1)")
    p.add_argument(
        "--reconnect-timeout",
        type=float,
        default=30.0,
        help="live sources: longest outage, in seconds, before giving up (default: 30)",
    )
    p.add_argument(
        "--max-frames", type=int, default=0, help="stop after this many processed frames (default: 0, no limit)"
    )
    p.add_argument("--no-snapshots", dest="snapshots", action="store_false", help="do not write a JPEG per event")
    p.add_argument(
        "--model-fps",
        action="store_true",
        help="after the run, time the model alone on the last frame's tiles and report the ratio (about 2-30 s)",
    )
    p.add_argument("--save-video", action="store_true", help="write annotated.mp4")
    p.add_argument("--show", action="store_true", help="open a window when a display exists")
    _gps_options(p.add_argument_group("GPS"))
    _delivery_options(p.add_argument_group("delivery"))
    _storage_options(p.add_argument_group("clips and storage"))
    return p


def _gps_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--gps", metavar="SOURCE", help="drive.gpx, drive.nmea, gpsd[:HOST:PORT] or serial:/dev/ttyUSB0[@BAUD]"
    )
    g.add_argument(
        "--video-start", metavar="ISO8601", help="when --video began, with a zone (default: its creation_time)"
    )
    g.add_argument(
        "--gps-offset",
        type=float,
        default=0.0,
        metavar="S",
        help="seconds to add to the camera clock to reach GPS time (default: 0)",
    )
    g.add_argument(
        "--gps-max-age",
        type=float,
        default=2.0,
        metavar="S",
        help="a position needs a fix this close in time, else it is null (default: 2)",
    )
    g.add_argument(
        "--min-speed",
        type=float,
        default=0.0,
        metavar="KMH",
        help="do not classify frames slower than this, a car standing still (default: 0)",
    )
    g.add_argument(
        "--every-m",
        type=float,
        metavar="M",
        help="classify one frame per M metres driven, from the GPS speed or --speed-kmh; 0 classifies every frame "
        "(default: half --view-depth-m where a speed is known, so each point of road is seen twice; else 0)",
    )
    g.add_argument("--speed-kmh", type=float, help="the speed for --every-m where there is no GPS")
    g.add_argument(
        "--view-depth-m",
        type=float,
        default=8.0,
        metavar="M",
        help="metres of road the view sees ahead, for the coverage figures (default: 8)",
    )


def _delivery_options(d: argparse._ArgumentGroup) -> None:
    d.add_argument(
        "--mqtt", metavar="URL", help="publish each event with QoS 1: mqtt://HOST[:PORT], mqtts://, mqtt://USER@HOST"
    )
    d.add_argument(
        "--mqtt-topic", default="potholes", metavar="PREFIX", help="topic PREFIX/VEHICLE/events (default: potholes)"
    )
    d.add_argument("--mqtt-ca", metavar="FILE", help="CA file for mqtts://")
    d.add_argument(
        "--mqtt-password-env",
        default="POTHOLE_EDGE_MQTT_PASSWORD",
        metavar="VAR",
        help="environment variable with the MQTT password (default: POTHOLE_EDGE_MQTT_PASSWORD)",
    )
    d.add_argument("--webhook", metavar="URL", help="POST each event as JSON to this http(s):// URL")
    d.add_argument(
        "--webhook-secret-env",
        metavar="VAR",
        help="environment variable with the secret that signs the body (X-Pothole-Signature, HMAC-SHA256)",
    )
    d.add_argument("--vehicle-id", help="this vehicle's name in topics and messages (default: the host name)")
    d.add_argument(
        "--outbox",
        metavar="PATH",
        help="the disk outbox, shared by every run (default: ~/.local/state/pothole-edge/outbox.sqlite)",
    )
    d.add_argument(
        "--outbox-max",
        type=int,
        default=100_000,
        metavar="N",
        help="messages the outbox holds; when full the oldest goes, counted (default: 100000)",
    )
    d.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to keep sending after the run; the rest stays queued (default: 10)",
    )
    d.add_argument(
        "--attach-snapshot", action="store_true", help="put the snapshot in the message as base64, not its path"
    )


def _storage_options(c: argparse._ArgumentGroup) -> None:
    c.add_argument(
        "--clips",
        metavar="PRE,POST",
        help=(
            "write clips/event_NNNNN.avi (Motion JPEG) from PRE seconds before each event to POST after it, "
            "e.g. 5,5 (default: no clips)"
        ),
    )
    c.add_argument(
        "--max-storage",
        metavar="SIZE",
        help=(
            "cap on clips, snapshots and annotated video, e.g. 2GB; the oldest delivered events' files go first "
            "(default: no cap)"
        ),
    )


def main(argv: list[str] | None = None) -> None:
    args = vars(parser().parse_args(argv))
    # OpenCV and FFmpeg complain on every failed open and reconnect try; the runner logs each
    # outage once, in words. Set these variables to see theirs.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    setup_logging()
    stop = threading.Event()
    signals: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if signals:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        signals.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    from pothole_edge.edge.runner import run

    try:
        result = run(EdgeConfig(**args), stop)
    except UsageError as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        sys.exit(2)
    except DiskFull as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted twice; outputs so far are kept", file=sys.stderr)
        sys.exit(130)
    if signals:
        sys.exit(130 if signals[0] == signal.SIGINT else 0)
    if result["status"] == "source lost":
        sys.exit(1)


def clip_main(argv: list[str] | None = None) -> None:
    """edge-clip render|score: make a labelled test clip from photos, and score edge-run on it."""
    p = Parser(
        prog="edge-clip", description="Make a dashcam-like clip from labelled photos, or score an edge-run on one."
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    r = sub.add_parser(
        "render",
        help="photos in class sub-folders (or a pt-train split.csv) -> clip.mp4 + clip.mp4.labels.csv",
        description=(
            "Turn labelled photos into a dashcam-like clip: each photo is held for a few frames with a slow "
            "zoom, and every frame's label goes to CLIP.labels.csv."
        ),
    )
    r.add_argument(
        "--images",
        metavar="DIR",
        help=(
            "folder with one sub-folder per class; with --manifest, the root its paths are relative to (default: "
            "the roots in the data.json beside it)"
        ),
    )
    r.add_argument("--manifest", help="a pt-train split.csv, to take one subset of its photos")
    r.add_argument("--subset", help="with --manifest: train, val or test")
    r.add_argument(
        "--source", help="with --manifest: only the photos of the data root of this folder name, e.g. dashcam"
    )
    r.add_argument("--label", help="only the photos of this class, e.g. normal for a clip with no pothole")
    r.add_argument("--out", required=True, help="the clip, an .mp4 path")
    r.add_argument(
        "--frames-per-photo", type=int, default=8, help="frames each photo is held for, zooming in slowly (default: 8)"
    )
    r.add_argument(
        "--size", default="448", help="frame size: a side (a square) or WIDTHxHEIGHT, e.g. 1280x720 (default: 448)"
    )
    r.add_argument("--fps", type=float, default=15.0, help="frames per second of the clip (default: 15)")
    r.add_argument("--seed", type=int, default=0, help="seed of the photo order (default: 0)")
    s = sub.add_parser("score", help="agreement of an edge-run's frame labels with the clip's labels")
    s.add_argument("run_dir", help="the edge-run output directory (its predictions.jsonl)")
    s.add_argument("labels", help="the clip's .labels.csv, written by edge-clip render")
    args = p.parse_args(argv)
    from pothole_edge.edge import photoclip as clip

    def go() -> None:
        if args.command == "render":
            photos = clip.labelled_photos(args.images, args.manifest, args.subset, args.source, args.label)
            path = clip.render(
                photos, args.out, args.frames_per_photo, clip.parse_size(args.size), args.fps, seed=args.seed
            )
            print(f"wrote {path} and {clip.labels_path(path)} from {len(photos)} photos")
        else:
            print(json.dumps(clip.score(args.run_dir, args.labels), indent=2))

    # the same handling as every other command: a usage error, a full disk and Ctrl-C are one line each
    run_command(go)
