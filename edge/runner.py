"""edge-run's library function: frames in, predictions, events and a summary out."""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
from typing import Any

import numpy as np

from edge.config import EdgeConfig
from edge.decide import EventDetector
from edge.preprocess import to_input
from edge.reader import Reader
from edge.record import Recorder, StageTimes, claim_out
from edge.session import EdgeModel, default_threads, open_model
from edge.sources import open_source
from edge.video import Annotator
from train.fileio import write_json

log = logging.getLogger("edge")
SUMMARY_EVERY_S = 5.0


def model_only_fps(model: EdgeModel, example: np.ndarray, seconds: float = 2.0, min_runs: int = 30) -> float:
    """Batch-1 throughput of the session alone, on a frame from this run."""
    runs, start = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < seconds:
        model.infer(example)
        runs += 1
    return runs / (time.perf_counter() - start)


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


def run(config: EdgeConfig, stop: threading.Event | None = None) -> dict[str, Any]:
    """Classify every frame of the config's source until it ends, `max_frames`, or `stop` is set.

    `stop` is how a caller (the CLI's signal handler) ends a run early; it is set on return.
    """
    config.check()
    stop = stop or threading.Event()
    kind, value = config.source()
    model = open_model(config.model, config.device, config.allow_cpu_fallback, config.threads)
    # the output is checked before a camera is waited for, and written only once the source is open
    out = claim_out(config.out or time.strftime("runs/edge/%Y%m%d-%H%M%S"))
    source = open_source(kind, value, config.stride, config.reconnect_timeout)
    try:
        recorder = Recorder(out, snapshots=config.snapshots)
    except BaseException:
        source.close()
        raise
    write_json(recorder.out / "config.json", dataclasses.asdict(config))
    import onnxruntime as ort

    log.info("provider: %s (asked for %s; this onnxruntime has %s)", model.provider, config.device, ", ".join(ort.get_available_providers()))
    log.info("source: %s -> %s", source.describe, recorder.out)
    meta, names = model.meta, model.meta["class_names"]
    threshold = config.threshold if config.threshold is not None else float(meta["threshold"])
    temporal = kind != "images"
    detector = EventDetector(threshold, config.ema, config.hysteresis) if temporal else None
    annotator = Annotator(recorder.out / "annotated.mp4" if config.save_video else None, config.show, source.fps, threshold)
    times = StageTimes()
    model.warmup()
    reader = Reader(source, lambda image: to_input(image, meta["preprocess"]), stop)
    state: dict[str, Any] = {"status": "running", "processed": 0, "events": 0, "started": time.time()}
    progress = _Progress(getattr(source, "expected", None) or len(getattr(source, "paths", [])) or None)
    first = last = time.perf_counter()
    example, last_summary = None, time.monotonic()

    def summary() -> dict[str, Any]:
        elapsed = last - first
        fps = state["processed"] / elapsed if elapsed > 0 else 0.0
        return {
            "schema_version": 1,
            "status": state["status"],
            "source": {"kind": kind, "value": value, "description": source.describe},
            "model": str(config.model),
            "provider": model.provider,
            "providers_available": ort.get_available_providers(),
            "threads": config.threads or default_threads(),
            "threshold": threshold,
            "smoothing": {"ema": config.ema, "hysteresis": config.hysteresis} if temporal else None,
            "frames": {
                "read": reader.read,
                "processed": state["processed"],
                "dropped": reader.dropped,
                "unreadable": len(getattr(source, "unreadable", [])),
            },
            "reconnects": len(getattr(source, "gaps", [])),
            "gaps": getattr(source, "gaps", []),
            "events": state["events"] if temporal else None,
            "fps": round(fps, 3),
            "model_only_fps": state.get("model_only_fps"),
            "fps_ratio": round(fps / state["model_only_fps"], 4) if state.get("model_only_fps") else None,
            "latency_ms": times.summary(),
            "started_at": _iso(state["started"]),
            "ended_at": _iso(time.time()) if state["status"] != "running" else None,
            "metadata": meta,
        }

    try:
        reader.start()
        first = time.perf_counter()
        while True:
            item = reader.next()
            if item is None:
                break
            frame, x, pre_ms = item
            t = time.perf_counter()
            prob = float(model.infer(x[None])[0])
            t_post = time.perf_counter()
            row: dict[str, Any] = {"frame": frame.index, "time": _round(frame.timestamp), "prob": round(prob, 6), "label": names[model.positive_index] if prob >= threshold else _other(names, model.positive_index)}
            if frame.name is not None:
                row["file"] = frame.name
            active = prob >= threshold
            if detector is not None:
                step = detector.update(frame.index, frame.timestamp, prob)
                active = step.active
                row |= {"smoothed": round(step.smoothed, 6), "state": names[model.positive_index] if step.active else _other(names, model.positive_index)}
                if step.closed:
                    recorder.event({"status": "closed", **step.closed.to_dict()})
                    log.info("event %d: frames %d-%d, peak %.3f", step.closed.id, step.closed.start_frame, step.closed.end_frame, step.closed.peak_prob)
                if step.opened:
                    state["events"] += 1
                    recorder.event({"status": "open", **step.opened.to_dict()})
                if step.new_peak and detector.current is not None:
                    recorder.snapshot(detector.current.id, frame.image)
                row["event"] = detector.current.id if detector.current is not None else None
            recorder.prediction(row)
            if not annotator.write(frame.image, prob, active):
                stop.set()  # the user closed the --show window
            last = time.perf_counter()
            times.add("read", frame.read_ms)
            times.add("preprocess", pre_ms)
            times.add("infer", (t_post - t) * 1000)
            times.add("post", (last - t_post) * 1000)
            state["processed"] += 1
            example = x[None]
            progress.update(state["processed"], state["processed"] / max(last - first, 1e-9), state["events"])
            if config.max_frames and state["processed"] >= config.max_frames:
                break
            if time.monotonic() - last_summary >= SUMMARY_EVERY_S:
                recorder.summary(summary())
                last_summary = time.monotonic()
        lost = getattr(source, "lost", None)
        state["status"] = "stopped" if stop.is_set() else "source lost" if lost else "finished"
    finally:
        interrupted = stop.is_set()
        stop.set()
        reader.join()
        source.close()
        annotator.close()
        if state["status"] == "running":
            state["status"] = "stopped" if interrupted else "failed"
        if detector is not None:
            tail = detector.finish()
            if tail is not None:
                recorder.event({"status": "closed", **tail.to_dict()})
                log.info("event %d: frames %d-%d, peak %.3f (open when the run ended)", tail.id, tail.start_frame, tail.end_frame, tail.peak_prob)
        if example is not None and state["status"] == "finished":
            state["model_only_fps"] = round(model_only_fps(model, example), 3)
        result = summary()
        recorder.summary(result)
        recorder.close()
        progress.update(state["processed"], result["fps"], state["events"], force=True)
    if result["fps_ratio"] is not None:
        log.info("%d frames at %.1f fps end to end; the model alone runs %.1f fps (%.0f%%)", state["processed"], result["fps"], result["model_only_fps"], 100 * result["fps_ratio"])
    return result


def _other(names: list[str], positive: int) -> str:
    return names[1 - positive] if len(names) == 2 else "not " + names[positive]


def _round(t: float | None) -> float | None:
    return None if t is None else round(t, 3)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))
