"""The edge runner's config: one frozen dataclass, checked before anything is written, saved beside the outputs."""

from __future__ import annotations

from dataclasses import dataclass

from pothole_edge import checks
from pothole_edge.errors import UsageError
from pothole_edge.session import PRECISIONS, parse_device
from pothole_edge.spec import check_region

SOURCES = ("camera", "video", "stream", "images")
_TOPIC_FORBIDDEN = ("+", "#", "\x00")


def check_topic_part(flag: str, value: str, levels: bool = False) -> None:
    """A value that goes into an MQTT topic: no wildcards (a publish with one kills paho's sender), and no `/` in
    one level, where the office's `PREFIX/+/events` subscription would never look."""
    bad = [c for c in _TOPIC_FORBIDDEN if c in value]
    if not levels and "/" in value:
        bad.append("/")
    parts = value.strip("/").split("/")
    if not value.strip("/") or bad or any(not part for part in parts) or len(value.encode("utf-8", "replace")) > 200:
        shown = ", ".join(repr(c) for c in bad) or "an empty level"
        raise UsageError(
            f"{flag} {value!r} cannot be part of an MQTT topic ({shown}); use letters, digits, '-', '_' and '.'"
            + (" (levels joined by '/')" if levels else "")
        )


@dataclass(frozen=True)
class EdgeConfig:
    model: str  # a model.onnx (or variant) written by pt-export, or the run directory holding it
    camera: int | None = None
    video: str | None = None
    stream: str | None = None
    images: str | None = None  # a folder or a glob
    out: str | None = None  # None: runs/edge/<date-time>
    device: str = "auto"  # auto, tensorrt, cuda or cpu
    precision: str = "fp32"  # TensorRT's build precision: fp32 or fp16
    allow_cpu_fallback: bool = False
    threads: int | None = None  # None: every usable core
    threshold: float | None = None  # None: the model metadata's threshold
    roi: str | None = None  # x0,y0,x1,y1 fractions; None: the model's view region
    trt_cache: str | None = None  # TensorRT engine cache folder; None: the per-user cache
    votes: str = "2/3"  # K/N: an event opens when K of the last N classified frames reach the threshold
    hysteresis: float = 0.3  # an event ends below threshold * (1 - hysteresis)
    stride: int = 1  # files: process every Nth frame
    reconnect_timeout: float = 30.0  # live sources: longest outage before the run ends
    max_frames: int = 0  # stop after this many processed frames; 0: no limit
    snapshots: bool = True
    model_fps: bool = False  # after the run, time the model alone on the last frame's tiles (a few seconds)
    save_video: bool = False
    show: bool = False
    # where: a track file (.gpx, .nmea), gpsd[:HOST:PORT] or serial:DEVICE[@BAUD]
    gps: str | None = None
    video_start: str | None = None  # ISO 8601 with a zone; None: the container's creation_time
    gps_offset: float = 0.0  # seconds added to the camera's clock to reach GPS time
    gps_max_age: float = 2.0  # a position needs a fix this close in time, or it is null
    min_speed: float = 0.0  # km/h: slower frames are not classified (0: classify all)
    # classify one frame per this many metres driven (0: every frame the model can take); None: half the view's
    # depth where a speed is known (--gps or --speed-kmh, not an image folder), else 0
    every_m: float | None = None
    speed_kmh: float | None = None  # the speed for --every-m where there is no GPS
    view_depth_m: float = 8.0  # metres of road the view sees ahead: a longer gap leaves road unseen
    # delivery: each closed event goes to the outbox, then to every destination
    mqtt: str | None = None  # mqtt://HOST[:PORT] or mqtts://
    mqtt_topic: str = "potholes"  # topic prefix: PREFIX/VEHICLE/events
    mqtt_ca: str | None = None  # CA file for mqtts://
    mqtt_password_env: str = "POTHOLE_EDGE_MQTT_PASSWORD"  # the password for mqtt://USER@HOST comes from here
    webhook: str | None = None  # an http(s):// URL to POST each event to
    webhook_secret_env: str | None = None  # environment variable holding the HMAC-SHA256 secret
    vehicle_id: str | None = None  # None: this host's name
    outbox: str | None = None  # None: the per-user state directory, shared by every run
    outbox_max: int = 100_000  # messages; when full, the oldest goes (counted)
    drain_timeout: float = 10.0  # seconds given to delivery at the end of a run
    attach_snapshot: bool = False  # put the snapshot in the message, base64, instead of its path
    clips: str | None = None  # "PRE,POST" seconds: clips/event_NNNNN.avi around each event
    max_storage: str | None = None  # e.g. "2GB": cap on clips, snapshots and annotated video

    def source(self) -> tuple[str, int | str]:
        given = [(name, getattr(self, name)) for name in SOURCES if getattr(self, name) is not None]
        if len(given) != 1:
            named = ", ".join("--" + name for name, _ in given) or "none"
            raise UsageError(
                f"give exactly one source, --camera N, --video PATH, --stream URL or --images DIR|GLOB (got {named})"
            )
        return given[0]

    def region(self) -> tuple[float, float, float, float] | None:
        if self.roi is None:
            return None
        try:
            values = [float(v) for v in self.roi.split(",")]
        except ValueError:
            values = []
        return check_region(values)

    def distance_step(self) -> float:
        """Metres between classified frames: --every-m, or else half the view's depth, so that each point of road
        is in two classified frames, wherever a speed is known."""
        if self.every_m is not None:
            return self.every_m
        if (self.gps is not None or self.speed_kmh is not None) and self.images is None:
            return self.view_depth_m / 2
        return 0.0

    def votes_k_n(self) -> tuple[int, int]:
        k, _, n = str(self.votes).partition("/")
        try:
            k_n = int(k), int(n)
        except ValueError:
            k_n = (0, 0)
        if not 1 <= k_n[0] <= k_n[1] <= 100:
            raise UsageError(f"--votes must be K/N with 1 <= K <= N <= 100, like 2/3; got {self.votes!r}")
        return k_n

    def check(self) -> None:
        self.source()
        check_topic_part("--mqtt-topic", self.mqtt_topic, levels=True)
        if self.vehicle_id is not None:
            check_topic_part("--vehicle-id", self.vehicle_id)
        parse_device(self.device)
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown --precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        checks.integer("stride", self.stride, 1)
        checks.integer("max_frames", self.max_frames, 0)  # 0: no limit
        if self.threads is not None:
            checks.integer("threads", self.threads, 1)
        self.votes_k_n()
        checks.number("hysteresis", self.hysteresis, 0, 1, high_open=True)
        if self.threshold is not None:
            checks.probability("threshold", self.threshold)
        checks.number("reconnect_timeout", self.reconnect_timeout, 0, unit=" seconds")
        self.region()
        if self.gps is not None and self.images is not None:
            raise UsageError("--gps needs a video, camera or stream: an image folder has no clock to match fixes to")
        checks.number("gps_offset", self.gps_offset, unit=" seconds")
        checks.number("gps_max_age", self.gps_max_age, 0, low_open=True, unit=" seconds")
        checks.number("min_speed", self.min_speed, 0, unit=" km/h")
        if self.every_m is not None:
            checks.number("every_m", self.every_m, 0, unit=" metres (0: off)")
        checks.number("view_depth_m", self.view_depth_m, 0, low_open=True, unit=" metres")
        if self.clips is not None:
            from pothole_edge.edge.eventclips import parse_clips

            parse_clips(self.clips)
        if self.max_storage is not None:
            from pothole_edge.edge.eventclips import parse_storage

            parse_storage(self.max_storage)
        checks.integer("outbox_max", self.outbox_max, 1)
        checks.number("drain_timeout", self.drain_timeout, 0, unit=" seconds")
        if self.speed_kmh is not None:
            checks.number("speed_kmh", self.speed_kmh, 0, 300, low_open=True)
        if self.every_m and self.gps is None and self.speed_kmh is None:
            raise UsageError("--every-m needs a speed: --gps, or --speed-kmh where there is no GPS")
        if self.every_m and self.images is not None:
            raise UsageError("--every-m needs a clock: a video, camera or stream, not an image folder")
        if self.min_speed and self.gps is None:
            raise UsageError(f"--min-speed {self.min_speed:g} needs --gps: a speed comes from GPS fixes")
