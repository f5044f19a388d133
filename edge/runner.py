"""edge-run's library function: frames in, predictions, events and a summary out."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np

from pothole_edge import preprocess
from pothole_edge import view as views
from pothole_edge.edge import startup
from pothole_edge.edge.config import EdgeConfig
from pothole_edge.edge.coverage import DistanceGate
from pothole_edge.edge.decide import Event, EventDetector, Step
from pothole_edge.edge.delivery import Delivery, event_id
from pothole_edge.edge.eventclips import Storage, Writer, parse_clips, parse_storage
from pothole_edge.edge.gps import LiveGps, Locator
from pothole_edge.edge.reader import Reader
from pothole_edge.edge.record import Recorder, StageTimes, claim_out
from pothole_edge.edge.sources import Frame, Source, open_source
from pothole_edge.edge.video import Annotator
from pothole_edge.errors import DiskFull
from pothole_edge.fileio import next_free, write_json
from pothole_edge.messages import TrackChunks
from pothole_edge.session import Runner, Session, open_session
from pothole_edge.timing import latency

log = logging.getLogger("edge")
SUMMARY_EVERY_S = 5.0
MIN_FREE_BYTES = 32 << 20  # below this, snapshots, clips and the annotated video stop before the lines do


def model_only_fps(runner: Runner, example: np.ndarray, seconds: float = 2.0, min_runs: int = 30) -> float:
    """Frames per second of the session alone, on a frame's tiles from this run."""
    per = latency(lambda: runner.probs(example), min_runs, 3)
    runs = max(min_runs, int(seconds * 1000 / max(per["mean_ms"], 1e-3)))
    return 1000.0 / latency(lambda: runner.probs(example), runs, 0)["mean_ms"]


class _Progress:
    """A status line: redrawn in place on a terminal, logged every 10 s otherwise."""

    def __init__(self, total: int | None) -> None:
        self.total, self.tty, self.last = total, sys.stderr.isatty(), time.monotonic()

    def update(self, done: int, fps: float, events: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        of = f"/{self.total}" if self.total else ""
        line = f"{done}{of} frames  {fps:.1f} fps  {events} events"
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if force else ""))
            sys.stderr.flush()
        else:
            log.info("%s", line)


def _free_bytes(path: Any) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 1 << 62


def run(config: EdgeConfig, stop: threading.Event | None = None) -> dict[str, Any]:
    """Classify every frame of the config's source until it ends, `max_frames`, or `stop` is set.

    Everything that can be a user's mistake is opened and checked before the output folder is claimed, and the
    folder is written only once the source is open. `stop` is how a caller (the CLI's signal handler) ends a
    run early; it is set on return.
    """
    config.check()
    stop = stop or threading.Event()
    kind, value = config.source()
    threads = startup.threads(config)
    session = open_session(
        config.model,
        config.device,
        config.precision,
        threads,
        config.allow_cpu_fallback,
        max_batch=64,
        trt_cache=config.trt_cache,
        # the reader decodes and cuts the next frame on the same cores: idle inference threads must not spin on
        # them (edge-run, 720p, 2 cores: 21.9 fps against 19.7 with spinning)
        spin=False,
    )
    if str(session.path) != str(config.model):
        log.info("model: %s", session.path)
    gps = startup.gps(config, kind, value, stop)
    clips = parse_clips(config.clips) if config.clips else None
    cap = parse_storage(config.max_storage) if config.max_storage else None
    delivery = startup.delivery(config)
    claim = claim_out(config.out or next_free(time.strftime("runs/edge/%Y%m%d-%H%M%S")))
    try:
        source = open_source(kind, value, config.stride, config.reconnect_timeout)
    except BaseException:
        claim.release()
        raise
    try:
        recorder = Recorder(claim, snapshots=config.snapshots)
    except BaseException:
        source.close()
        claim.release()
        raise
    config = dataclasses.replace(config, threads=threads, out=str(recorder.out))
    parts = Parts(kind, value, session, source, recorder, gps, delivery, clips, cap)
    return EdgeRun(config, stop, parts).go()


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A frame as the reader thread hands it over: where it was taken, and its tiles if it is classified."""

    frame: Frame
    where: dict[str, Any] | None
    tiles: np.ndarray | None = None  # None: not classified (standing still, or not yet --every-m metres on)
    boxes: np.ndarray | None = None
    pre_ms: float = 0.0


@dataclasses.dataclass(frozen=True)
class Parts:
    """What run() opened and checked for one run, before the run's state exists."""

    kind: str  # camera, video, stream or images
    value: Any  # its index, path, URL or folder
    session: Session
    source: Source
    recorder: Recorder
    gps: tuple[Locator, LiveGps | None, str] | None = None  # where each frame was taken, and the fixes' source
    delivery: tuple[Delivery, str] | None = None  # the outbox and its destinations, and the vehicle's id
    clips: tuple[float, float] | None = None  # seconds before and after each event
    cap: int | None = None  # bytes of optional files at most


class EdgeRun:
    """One run's parts and state, and what it does with each frame."""

    def __init__(self, config: EdgeConfig, stop: threading.Event, parts: Parts) -> None:
        kind, session, source, recorder = parts.kind, parts.session, parts.source, parts.recorder
        gps, delivery, clips, cap = parts.gps, parts.delivery, parts.clips, parts.cap
        self.config, self.stop, self.kind, self.value = config, stop, kind, parts.value
        self.session, self.source, self.recorder = session, source, recorder
        self.runner = Runner(session)
        meta = self.meta = session.meta
        self.spec = meta | {"view": meta["view"] | ({"region": list(config.region())} if config.roi else {})}
        region = ",".join(f"{v:g}" for v in self.spec["view"]["region"])
        self.config = config = dataclasses.replace(config, roi=region, every_m=config.distance_step())
        self.tiles_per_frame = views.tile_count(self.spec["view"])
        self.threshold = config.threshold if config.threshold is not None else float(meta["threshold"])
        pos, names = int(meta["positive_index"]), meta["class_names"]
        self.label_of = {True: names[pos], False: names[1 - pos]}
        self.temporal = kind != "images"
        self.gate = DistanceGate(config.every_m, config.view_depth_m, config.speed_kmh) if config.every_m else None
        # still images are not a sequence: each at or above the threshold is one event, with its snapshot
        votes = config.votes_k_n() if self.temporal else (1, 1)
        self.detector: EventDetector | None = EventDetector(self.threshold, votes, config.hysteresis)
        self.locator, self.live_gps, self.gps_source = gps if gps else (None, None, None)
        self.delivery, self.vehicle = delivery if delivery else (None, None)
        self.closed_events: set[int] = set()
        self.writer = Writer(
            recorder.out, recorder, Storage(recorder.out, cap, self.delivered), clips, source.fps, bool(source.live)
        ).start()
        self.annotator = Annotator(
            recorder.out / "annotated.mp4" if config.save_video else None, config.show, source.fps, self.threshold
        )
        self.reader = Reader(source, self.prepare, stop)
        self.times = StageTimes()
        self.progress = _Progress(source.total())
        self.state: dict[str, Any] = {
            "status": "running",
            "processed": 0,
            "events": 0,
            "standing": 0,
            "started": time.time(),
        }
        self.run_name = f"{recorder.out.name}@{_iso(self.state['started'])}"
        # the road driven goes to the office too, so it can tell "passed and saw nothing" from "never passed"
        self.tracks = (
            TrackChunks(self.vehicle, self.run_name) if self.delivery is not None and self.locator is not None else None
        )
        self.first = self.last = time.perf_counter()
        self.example: np.ndarray | None = None

    # the reader thread's work: where the frame is, whether it is classified, and only then its tiles in RGB, so
    # that a frame skipped by --every-m costs no cut (11 ms at 720p)
    def prepare(self, frame: Frame) -> Prepared:
        where = self.locator.at(frame.timestamp) if self.locator is not None else None
        if not self.wanted(frame, where):
            return Prepared(frame, where)
        t = time.perf_counter()
        tiles, boxes = preprocess.tiles(frame.image, self.spec)
        if frame.order == "BGR":
            tiles = np.ascontiguousarray(tiles[..., ::-1])  # cheaper on the tiles than on the whole frame
        return Prepared(frame, where, tiles, boxes, (time.perf_counter() - t) * 1000)

    def clock(self, t: float | None) -> str | None:
        """An event time as ISO 8601 UTC: live frames carry Unix time, a video's need its start (from --gps)."""
        if t is None:
            return None
        if self.kind in ("camera", "stream"):
            return _iso_utc(t)
        if self.locator is not None and self.locator.start is not None:
            return _iso_utc(self.locator.start + t + self.locator.offset_s)
        return None

    def delivered(self, event: int) -> bool:
        """Whether the office has the event. An open event never has; with no destination, a closed one has
        nothing to wait for."""
        if event not in self.closed_events:
            return False
        return self.delivery is None or not self.delivery.outbox.holds(event_id(self.vehicle, self.run_name, event))

    def close_event(self, event: Event, note: str = "") -> None:
        self.recorder.event({"status": "closed", **event.to_dict()})
        self.writer.closed(event.id, event.end_time or 0.0)
        if self.delivery is not None:
            shot = self.recorder.out / "snapshots" / f"event_{event.id:05d}.jpg" if self.config.snapshots else None
            if shot is not None and self.config.attach_snapshot and not self.writer.settle(event.id):
                log.warning("event %d: its snapshot is not written yet; the event goes without it", event.id)
            message = startup.message(
                event, self.vehicle, self.run_name, self.clock, self.meta, shot, self.config.attach_snapshot
            )
            self.delivery.queue(message["event_id"], message)
        self.closed_events.add(event.id)  # after the outbox has it: from here on the outbox says if it arrived
        log.info(
            "event %d: frames %d-%d, peak %.3f%s", event.id, event.start_frame, event.end_frame, event.peak_prob, note
        )

    def go(self) -> dict[str, Any]:
        import onnxruntime as ort

        c = self.config
        write_json(self.recorder.out / "config.json", dataclasses.asdict(c))
        log.info(
            "provider: %s (asked for %s; this onnxruntime has %s)",
            self.session.provider,
            c.device,
            ", ".join(ort.get_available_providers()),
        )
        if self.session.node_counts:
            log.info("nodes per provider: %s", ", ".join(f"{k} {v}" for k, v in self.session.node_counts.items()))
        log.info("source: %s -> %s (%d tiles per frame)", self.source.describe, self.recorder.out, self.tiles_per_frame)
        self.runner.warmup(self.tiles_per_frame)
        try:
            self.loop()
            lost = self.source.lost
            self.state["status"] = "stopped" if self.stop.is_set() else "source lost" if lost else "finished"
        except DiskFull:
            self.state["status"] = "disk full"
        finally:
            result = self.finish()
        if self.recorder.disk_full:
            raise DiskFull(
                f"{self.recorder.disk_full}; every line written so far is whole; free some space and run again"
            )
        if result["fps_ratio"] is not None:
            log.info(
                "%d frames at %.1f fps end to end; the model alone runs %.1f fps (%.0f%%)",
                self.state["processed"],
                result["fps"],
                result["model_only_fps"],
                100 * result["fps_ratio"],
            )
        return result

    def loop(self) -> None:
        if self.live_gps is not None:
            self.live_gps.start()
        if self.delivery is not None:
            self.delivery.start()
        self.reader.start()
        self.first = time.perf_counter()
        # at once, not after the first 5 s: a run that dies early still says when it started, which is its identity
        self.recorder.summary(self.summary())
        last_summary = last_space_check = time.monotonic()
        while (item := self.reader.next()) is not None:
            if not self.frame(item):
                continue
            if self.config.max_frames and self.state["processed"] >= self.config.max_frames:
                break
            now = time.monotonic()
            if now - last_space_check >= 1.0:
                last_space_check = now
                self.check_space()
            if now - last_summary >= SUMMARY_EVERY_S:
                self.recorder.summary(self.summary())
                last_summary = now

    def frame(self, item: Prepared) -> bool:
        """Classify one frame and record it; False when it was skipped (standing still, or not yet --every-m)."""
        frame, where, tiles, boxes = item.frame, item.where, item.tiles, item.boxes
        self.extend_track(where)
        if tiles is None or boxes is None:
            return False
        t = time.perf_counter()
        tile_probs = self.runner.probs(tiles)
        t_post = time.perf_counter()
        prob, hot = views.pool(tile_probs, self.spec["view"])
        box = boxes[hot]
        row = self.row(frame, prob, box, where)
        active = self.decide(frame, row, where, box, prob)
        self.recorder.prediction(row)
        self.outputs(frame, prob, active, box)
        self.account(frame, tiles, {"preprocess": item.pre_ms, "infer": (t_post - t) * 1000}, t_post)
        return True

    def extend_track(self, where: dict[str, Any] | None) -> None:
        """The track goes to the office in chunks, every frame's position, classified or not."""
        if self.tracks is not None and (chunk := self.tracks.add(where)) is not None:
            self.delivery.queue(chunk["id"], chunk)

    def wanted(self, frame: Frame, where: dict[str, Any] | None) -> bool:  # on the reader thread
        speed = where and where["speed_mps"]
        if self.config.min_speed and speed is not None and speed * 3.6 < self.config.min_speed:
            self.state["standing"] += 1  # a car standing still would see the same pothole for minutes
            return False
        # with --every-m, one frame per that many metres driven
        return self.gate is None or self.gate.take(frame.timestamp, speed)

    def row(self, frame: Frame, prob: float, box: np.ndarray, where: dict[str, Any] | None) -> dict[str, Any]:
        """The frame's line in predictions.jsonl."""
        row: dict[str, Any] = {
            "frame": frame.index,
            "time": _round(frame.timestamp),
            "prob": round(prob, 6),
            "label": self.label_of[prob >= self.threshold],
            "tile": [round(float(v), 1) for v in box],
        }
        if frame.name is not None:
            row["file"] = frame.name
        return row | (where or {})

    def decide(
        self, frame: Frame, row: dict[str, Any], where: dict[str, Any] | None, box: np.ndarray, prob: float
    ) -> bool:
        """The event rule's step for this frame, added to its row; whether an event is active."""
        if self.detector is None:
            return prob >= self.threshold
        step = self.detector.update(frame.index, frame.timestamp, prob, (row["tile"], where, frame, box, prob))
        row |= {"votes": step.votes, "state": self.label_of[step.active]}
        self.events(step, frame, row, where, box, prob)
        row["event"] = self.detector.current.id if self.detector.current is not None else None
        if not self.temporal and (single := self.detector.close()) is not None:
            self.close_event(single)
        return step.active

    def outputs(self, frame: Frame, prob: float, active: bool, box: np.ndarray) -> None:
        """The event clips' ring buffer and the annotated video or window."""
        if self.writer.clips and self.temporal and frame.timestamp is not None:
            self.writer.frame(frame.timestamp, frame.bgr())
        if self.annotator.active and not self.annotator.write(frame.bgr(), prob, active, box):
            self.stop.set()  # the user closed the --show window

    def account(self, frame: Frame, tiles: np.ndarray, ms: dict[str, float], t_post: float) -> None:
        """Stage timings, the count and the progress line."""
        self.last = time.perf_counter()
        for stage, value in (("read", frame.read_ms), *ms.items(), ("post", (self.last - t_post) * 1000)):
            self.times.add(stage, value)
        self.state["processed"] += 1
        self.example = tiles
        fps = self.state["processed"] / max(self.last - self.first, 1e-9)
        self.progress.update(self.state["processed"], fps, self.state["events"])

    def events(
        self, step: Step, frame: Frame, row: dict[str, Any], where: dict[str, Any] | None, box: np.ndarray, prob: float
    ) -> None:
        if step.closed:
            self.close_event(step.closed)
        if step.opened:
            self.state["events"] += 1
            self.recorder.event({"status": "open", **step.opened.to_dict()})
            self.writer.opened(step.opened.id, frame.timestamp or 0.0)
        current = self.detector.current
        if step.new_peak and current is not None:
            # the peak may be a frame the votes completed after: its own tile, position and image
            tile, position, peak_frame, peak_box, peak_prob = step.peak
            current.peak_tile, current.peak_position = tile, position
            if self.recorder.snapshots is not None:
                self.writer.snapshot(current.id, peak_frame.bgr(), peak_box, peak_prob)

    def check_space(self) -> None:
        """The optional files stop before the disk or the storage cap stops the lines."""
        if _free_bytes(self.recorder.out) < MIN_FREE_BYTES:
            self.recorder.stop_optional(f"less than {MIN_FREE_BYTES >> 20} MB free on the output disk")
            self.annotator.stop_file()
        elif self.annotator.path is not None and not self.writer.storage.make_room():
            log.warning("--max-storage reached with nothing delivered to remove")
            self.annotator.stop_file()

    def finish(self) -> dict[str, Any]:
        """Stop every thread, close an open event, give delivery its drain time, and write the final summary."""
        interrupted = self.stop.is_set()
        self.stop.set()
        self.reader.join()
        if self.live_gps is not None:
            self.live_gps.join()
        self.source.close()
        self.annotator.close()
        if self.state["status"] == "running":
            self.state["status"] = "stopped" if interrupted else "failed"
        tail = self.detector.finish() if self.detector is not None else None
        if tail is not None and self.recorder.disk_full is None:
            try:
                self.close_event(tail, " (open when the run ended)")
            except DiskFull:
                self.state["status"] = "disk full"
        self.writer.close()
        if self.config.model_fps and self.example is not None and self.state["status"] == "finished":
            self.state["model_only_fps"] = round(model_only_fps(self.runner, self.example), 3)
        if self.tracks is not None:
            last = self.tracks.finish()
            self.delivery.queue(last["id"], last)
        if self.delivery is not None:
            self.state["delivery"] = self.delivery.finish(self.config.drain_timeout)
            self.delivery.close()
        result = self.summary()
        if self.recorder.disk_full:
            result["status"], result["disk_full"] = "disk full", self.recorder.disk_full
        self.recorder.summary(result)  # on a full disk the last good summary.json stays
        self.recorder.close()
        self.progress.update(self.state["processed"], result["fps"], self.state["events"], force=True)
        return result

    def summary(self) -> dict[str, Any]:
        import onnxruntime as ort

        s, c, source = self.state, self.config, self.source
        stats = source.stats()
        elapsed = self.last - self.first
        processed = s["processed"]
        fps = processed / elapsed if elapsed > 0 else 0.0
        done = s["status"] != "running"
        return {
            "schema_version": 2,
            "status": s["status"],
            "source": {
                "kind": self.kind,
                "value": self.value,
                "description": source.describe,
                "ended_early": stats["ended_early"],
            },
            "model": str(self.session.path),
            "provider": self.session.provider,
            "providers": self.session.providers,
            "providers_available": ort.get_available_providers(),
            "nodes_per_provider": self.session.node_counts,
            "precision": self.session.options.get("precision"),  # TensorRT's build precision; None elsewhere
            "trt_cache": self.session.options.get("trt_cache"),
            "threads": c.threads,
            "spinning": self.session.options["spinning"],
            "threshold": self.threshold,
            "view": self.spec["view"],
            "tiles_per_frame": self.tiles_per_frame,
            "smoothing": {"votes": c.votes, "hysteresis": c.hysteresis} if self.temporal else None,
            "snapshots_dropped": self.recorder.dropped_snapshots,
            "frames": {
                "read": self.reader.read,
                "processed": processed,
                "dropped": self.reader.dropped,
                "unreadable": stats["unreadable"],
            },
            "reconnects": len(stats["gaps"]),
            "gaps": stats["gaps"],
            "events": s["events"],
            "events_per_1000_frames": round(1000 * s["events"] / processed, 3) if processed else None,
            "gps": None
            if self.locator is None
            else {"source": self.gps_source, "offset_s": c.gps_offset, "standing_frames": s["standing"]}
            | self.locator.summary(),
            "coverage": self.gate.summary() if self.gate is not None else None,
            "delivery": s.get("delivery") if self.delivery is not None else None,
            "delivery_run": self.run_name if self.delivery is not None else None,
            "delivery_vehicle": self.vehicle,
            "storage": self.writer.summary() if done else None,
            "fps": round(fps, 3),
            "model_only_fps": s.get("model_only_fps"),
            "fps_ratio": round(fps / s["model_only_fps"], 4) if s.get("model_only_fps") else None,
            "latency_ms": self.times.summary(),
            "started_at": _iso(s["started"]),
            "ended_at": _iso(time.time()) if done else None,
            "metadata": self.meta,
        }


def _round(t: float | None) -> float | None:
    return None if t is None else round(t, 3)


def _iso_utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))
