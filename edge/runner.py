"""edge-run's library function: frames in, predictions, events and a summary out."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import socket
import sqlite3
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pothole_edge import preprocess
from pothole_edge import view as views
from pothole_edge.edge.clips import Storage, Writer, parse_clips, parse_size
from pothole_edge.edge.config import EdgeConfig
from pothole_edge.edge.decide import Event, EventDetector
from pothole_edge.edge.delivery import Delivery, Mqtt, Webhook, event_id
from pothole_edge.edge.gps import LiveGps, Locator, mp4_creation_time, open_gps, parse_start
from pothole_edge.edge.outbox import Outbox
from pothole_edge.edge.outbox import default_path as default_outbox
from pothole_edge.edge.reader import Reader
from pothole_edge.edge.record import Recorder, StageTimes, claim_out
from pothole_edge.edge.sources import Frame, open_source
from pothole_edge.edge.video import Annotator
from pothole_edge.errors import DiskFull, UsageError
from pothole_edge.fileio import next_free, write_json
from pothole_edge.session import Runner, open_session
from pothole_edge.system import default_threads, usable_cores
from pothole_edge.timing import latency

log = logging.getLogger("edge")
SUMMARY_EVERY_S = 5.0
MIN_FREE_BYTES = 32 << 20  # below this, snapshots and the annotated video stop before the lines do


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


def _gps(
    config: EdgeConfig, kind: str, value: Any, stop: threading.Event
) -> tuple[Locator, LiveGps | None, str] | None:
    """The run's locator, checked before anything is written: a video needs to know when it began."""
    if config.gps is None:
        return None
    track, live, describe = open_gps(config.gps, config.gps_max_age, stop)
    start = None
    if kind == "video":
        start = parse_start(config.video_start) if config.video_start else mp4_creation_time(value)
        if start is None:
            raise UsageError(
                f"--video {value} has no creation_time to match the GPS clock; pass --video-start, e.g. 2026-11-26T08:15:00+01:00"
            )
    return Locator(track, start, config.gps_offset), live, describe


def _delivery(config: EdgeConfig) -> tuple[Delivery, str] | None:
    """The run's destinations around the shared disk outbox, checked before anything is written."""
    if not (config.mqtt or config.webhook):
        return None
    vehicle = config.vehicle_id or socket.gethostname()
    destinations: list[tuple[str, Any]] = []
    if config.webhook:
        destinations.append((f"webhook:{config.webhook}", Webhook(config.webhook, config.webhook_secret_env)))
    if config.mqtt:
        destinations.append(
            (
                f"mqtt:{config.mqtt}",
                Mqtt(config.mqtt, vehicle, config.mqtt_topic, config.mqtt_ca, config.mqtt_password_env),
            )
        )
    path = Path(config.outbox) if config.outbox else default_outbox()
    try:
        outbox = Outbox(path, config.outbox_max)
    except (OSError, sqlite3.Error) as e:
        raise UsageError(f"cannot open the outbox {path}: {e}; pass --outbox with a writable path") from None
    return Delivery(outbox, destinations), vehicle


def _message(
    event: Event, vehicle: str, run_name: str, clock: Any, meta: dict[str, Any], snapshot: Path | None, attach: bool
) -> dict[str, Any]:
    """The JSON every destination gets for a closed event. The snapshot is named by its path; with
    --attach-snapshot the sender puts its bytes in when it sends (the writer thread may still be saving it)."""
    return {
        "event_id": event_id(vehicle, run_name, event.id),
        "vehicle": vehicle,
        "run": run_name,
        "event": event.id,
        "opened_at": clock(event.start_time),
        "closed_at": clock(event.end_time),
        "peak_prob": round(event.peak_prob, 6),
        "peak_at": clock(event.peak_time),
        "frames": [event.start_frame, event.end_frame],
        "position": event.peak_position if event.peak_position and event.peak_position.get("lat") is not None else None,
        "snapshot": {"path": str(snapshot), "attach": attach} if snapshot is not None else None,
        "model": {
            "arch": meta.get("arch"),
            "variant": meta.get("variant"),
            "checkpoint_sha256": meta.get("checkpoint_sha256"),
        },
    }


def _threads(config: EdgeConfig) -> int:
    cores = usable_cores()
    if config.threads and config.threads > cores:
        log.warning("--threads %d is more than the %d usable cores; using %d", config.threads, cores, cores)
        return cores
    return config.threads or default_threads()


def run(config: EdgeConfig, stop: threading.Event | None = None) -> dict[str, Any]:
    """Classify every frame of the config's source until it ends, `max_frames`, or `stop` is set.

    `stop` is how a caller (the CLI's signal handler) ends a run early; it is set on return.
    """
    config.check()
    stop = stop or threading.Event()
    kind, value = config.source()
    threads = _threads(config)
    session = open_session(
        config.model, config.device, config.precision, threads, config.allow_cpu_fallback, max_batch=64
    )
    if str(session.path) != str(config.model):
        log.info("model: %s", session.path)
    runner = Runner(session)
    meta = session.meta
    spec = meta | {"view": meta["view"] | ({"region": list(config.region())} if config.roi else {})}
    tiles_per_frame = views.tile_count(spec["view"])
    # the output is checked before a camera is waited for, and written only once the source is open
    gps = _gps(config, kind, value, stop)
    clips = parse_clips(config.clips) if config.clips else None
    storage_cap = parse_size(config.max_storage) if config.max_storage else None
    delivery = _delivery(config)
    claim = claim_out(config.out or next_free(time.strftime("runs/edge/%Y%m%d-%H%M%S")))
    try:
        source = open_source(kind, value, config.stride, config.reconnect_timeout)
    except BaseException:
        claim.release()
        raise
    try:
        recorder = Recorder(claim, snapshots=config.snapshots)
        writer = Writer(
            recorder.out, recorder, Storage(recorder.out, storage_cap, lambda e: delivered(e)), clips, source.fps
        ).start()
    except BaseException:
        source.close()
        claim.release()
        raise
    config = dataclasses.replace(
        config, threads=threads, out=str(recorder.out), roi=",".join(f"{v:g}" for v in spec["view"]["region"])
    )
    write_json(recorder.out / "config.json", dataclasses.asdict(config))
    import onnxruntime as ort

    log.info(
        "provider: %s (asked for %s; this onnxruntime has %s)",
        session.provider,
        config.device,
        ", ".join(ort.get_available_providers()),
    )
    if session.node_counts:
        log.info("nodes per provider: %s", ", ".join(f"{k} {v}" for k, v in session.node_counts.items()))
    log.info("source: %s -> %s (%d tiles per frame)", source.describe, recorder.out, tiles_per_frame)
    names = meta["class_names"]
    pos = int(meta["positive_index"])
    threshold = config.threshold if config.threshold is not None else float(meta["threshold"])
    temporal = kind != "images"
    detector = EventDetector(threshold, config.ema, config.hysteresis) if temporal else None
    annotator = Annotator(
        recorder.out / "annotated.mp4" if config.save_video else None, config.show, source.fps, threshold
    )
    times = StageTimes()
    runner.warmup(tiles_per_frame)

    def cut(frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        tiles, boxes = preprocess.tiles(frame.image, spec)
        if frame.order == "BGR":
            tiles = np.ascontiguousarray(tiles[..., ::-1])  # cheaper on the tiles than on the whole frame
        return tiles, boxes

    reader = Reader(source, cut, stop)
    locator, live_gps, gps_source = gps if gps else (None, None, None)
    standing = 0
    run_name = f"{recorder.out.name}@{_iso(state_started := time.time())}"

    def clock(t: float | None) -> str | None:
        """An event time as ISO 8601 UTC: live frames carry Unix time, a video's need its start (from --gps)."""
        if t is None:
            return None
        if kind in ("camera", "stream"):
            absolute = t
        elif locator is not None and locator.start is not None:
            absolute = locator.start + t + locator.offset_s
        else:
            return None
        return _iso_utc(absolute)

    closed_events: set[int] = set()

    def delivered(event: int) -> bool:
        """Whether the office has the event. An open event is never delivered; with no destination, a closed
        one has nothing to wait for."""
        if event not in closed_events:
            return False
        return delivery is None or not delivery[0].outbox.holds(event_id(delivery[1], run_name, event))

    def deliver(event: Event) -> None:
        if delivery is not None:
            snapshot = recorder.snapshots / f"event_{event.id:05d}.jpg" if recorder.snapshots else None
            delivery[0].queue(
                event_id(delivery[1], run_name, event.id),
                _message(event, delivery[1], run_name, clock, meta, snapshot, config.attach_snapshot),
            )
        closed_events.add(event.id)  # after the outbox has it: from here on the outbox says whether it arrived

    state: dict[str, Any] = {"status": "running", "processed": 0, "events": 0, "started": state_started}
    progress = _Progress(getattr(source, "expected", None) or len(getattr(source, "paths", [])) or None)
    first = last = time.perf_counter()
    example, last_summary, last_space_check = None, time.monotonic(), 0.0
    label_of = {True: names[pos], False: names[1 - pos]}

    def summary() -> dict[str, Any]:
        elapsed = last - first
        fps = state["processed"] / elapsed if elapsed > 0 else 0.0
        processed = state["processed"]
        return {
            "schema_version": 2,
            "status": state["status"],
            "source": {
                "kind": kind,
                "value": value,
                "description": source.describe,
                "ended_early": getattr(source, "ended_early", None),
            },
            "model": str(session.path),
            "provider": session.provider,
            "providers": session.providers,
            "providers_available": ort.get_available_providers(),
            "nodes_per_provider": session.node_counts,
            "precision": config.precision,
            "trt_cache": session.options.get("trt_cache"),
            "threads": threads,
            "threshold": threshold,
            "view": spec["view"],
            "tiles_per_frame": tiles_per_frame,
            "smoothing": {"ema": config.ema, "hysteresis": config.hysteresis} if temporal else None,
            "snapshots_dropped": recorder.dropped_snapshots,
            "frames": {
                "read": reader.read,
                "processed": processed,
                "dropped": reader.dropped,
                "unreadable": len(getattr(source, "unreadable", [])),
            },
            "reconnects": len(getattr(source, "gaps", [])),
            "gaps": getattr(source, "gaps", []),
            "events": state["events"] if temporal else None,
            "gps": None
            if locator is None
            else {"source": gps_source, "offset_s": config.gps_offset, "standing_frames": standing} | locator.summary(),
            "events_per_1000_frames": round(1000 * state["events"] / processed, 3) if temporal and processed else None,
            "delivery": state.get("delivery") if delivery is not None else None,
            "storage": writer.summary() if state["status"] != "running" else None,
            "delivery_run": run_name if delivery is not None else None,
            "fps": round(fps, 3),
            "model_only_fps": state.get("model_only_fps"),
            "fps_ratio": round(fps / state["model_only_fps"], 4) if state.get("model_only_fps") else None,
            "latency_ms": times.summary(),
            "started_at": _iso(state["started"]),
            "ended_at": _iso(time.time()) if state["status"] != "running" else None,
            "metadata": meta,
        }

    try:
        if live_gps is not None:
            live_gps.start()
        if delivery is not None:
            delivery[0].start()
        reader.start()
        first = time.perf_counter()
        while True:
            item = reader.next()
            if item is None:
                break
            frame, tiles, boxes, pre_ms = item
            where = locator.at(frame.timestamp) if locator is not None else None
            if (
                config.min_speed
                and where
                and where["speed_mps"] is not None
                and where["speed_mps"] * 3.6 < config.min_speed
            ):
                standing += 1  # a car standing still would see the same pothole for minutes
                continue
            t = time.perf_counter()
            tile_probs = runner.probs(tiles)
            t_post = time.perf_counter()
            prob, hot = views.pool(tile_probs, spec["view"])
            box = boxes[hot]
            row: dict[str, Any] = {
                "frame": frame.index,
                "time": _round(frame.timestamp),
                "prob": round(prob, 6),
                "label": label_of[prob >= threshold],
                "tile": [round(float(v), 1) for v in box],
            }
            if frame.name is not None:
                row["file"] = frame.name
            if where is not None:
                row |= where
            active = prob >= threshold
            if detector is not None:
                step = detector.update(frame.index, frame.timestamp, prob)
                active = step.active
                row |= {"smoothed": round(step.smoothed, 6), "state": label_of[step.active]}
                if step.closed:
                    recorder.event({"status": "closed", **step.closed.to_dict()})
                    writer.closed(step.closed.id, step.closed.end_time or 0.0)
                    deliver(step.closed)
                    log.info(
                        "event %d: frames %d-%d, peak %.3f",
                        step.closed.id,
                        step.closed.start_frame,
                        step.closed.end_frame,
                        step.closed.peak_prob,
                    )
                if step.opened:
                    state["events"] += 1
                    recorder.event({"status": "open", **step.opened.to_dict()})
                    writer.opened(step.opened.id, frame.timestamp or 0.0)
                if step.new_peak and detector.current is not None:
                    detector.current.peak_tile = row["tile"]
                    detector.current.peak_position = where
                    if recorder.snapshots is not None:
                        writer.snapshot(detector.current.id, frame.bgr(), box, prob)
                row["event"] = detector.current.id if detector.current is not None else None
            recorder.prediction(row)
            if temporal and frame.timestamp is not None:
                writer.frame(frame.timestamp, frame.bgr())
            if annotator.active and not annotator.write(frame.bgr(), prob, active, box):
                stop.set()  # the user closed the --show window
            if time.monotonic() - last_space_check >= 1.0:
                last_space_check = time.monotonic()
                if _free_bytes(recorder.out) < MIN_FREE_BYTES:
                    recorder.stop_optional(f"less than {MIN_FREE_BYTES >> 20} MB free on the output disk")
                    annotator.stop_file()
                elif annotator.path is not None and not writer.storage.make_room():
                    log.warning("--max-storage reached with nothing delivered to remove")
                    annotator.stop_file()
            last = time.perf_counter()
            times.add("read", frame.read_ms)
            times.add("preprocess", pre_ms)
            times.add("infer", (t_post - t) * 1000)
            times.add("post", (last - t_post) * 1000)
            state["processed"] += 1
            example = tiles
            progress.update(state["processed"], state["processed"] / max(last - first, 1e-9), state["events"])
            if config.max_frames and state["processed"] >= config.max_frames:
                break
            if time.monotonic() - last_summary >= SUMMARY_EVERY_S:
                recorder.summary(summary())
                last_summary = time.monotonic()
        lost = getattr(source, "lost", None)
        state["status"] = "stopped" if stop.is_set() else "source lost" if lost else "finished"
    except DiskFull:
        state["status"] = "disk full"
    finally:
        interrupted = stop.is_set()
        stop.set()
        reader.join()
        if live_gps is not None:
            live_gps.join()
        source.close()
        annotator.close()
        writer.close()
        if state["status"] == "running":
            state["status"] = "stopped" if interrupted else "failed"
        if detector is not None:
            tail = detector.finish()
            if tail is not None and recorder.disk_full is None:
                try:
                    recorder.event({"status": "closed", **tail.to_dict()})
                except DiskFull:
                    state["status"] = "disk full"
                deliver(tail)
                log.info(
                    "event %d: frames %d-%d, peak %.3f (open when the run ended)",
                    tail.id,
                    tail.start_frame,
                    tail.end_frame,
                    tail.peak_prob,
                )
        if example is not None and state["status"] == "finished":
            state["model_only_fps"] = round(model_only_fps(runner, example), 3)
        if delivery is not None:
            state["delivery"] = delivery[0].finish(config.drain_timeout)
            delivery[0].close()
        result = summary()
        if recorder.disk_full:
            result["status"], result["disk_full"] = "disk full", recorder.disk_full
        recorder.summary(result)  # on a full disk the last good summary.json stays
        recorder.close()
        progress.update(state["processed"], result["fps"], state["events"], force=True)
    if recorder.disk_full:
        raise DiskFull(f"{recorder.disk_full}; every line written so far is whole; free some space and run again")
    if result["fps_ratio"] is not None:
        log.info(
            "%d frames at %.1f fps end to end; the model alone runs %.1f fps (%.0f%%)",
            state["processed"],
            result["fps"],
            result["model_only_fps"],
            100 * result["fps_ratio"],
        )
    return result


def _round(t: float | None) -> float | None:
    return None if t is None else round(t, 3)


def _iso_utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))
