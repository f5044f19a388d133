"""Everything a run writes to --out, written as it goes so a kill loses at most the frame in flight.

Each JSONL line is flushed when written and the files are fsynced about once a second, so a
power cut loses at most that second. summary.json is replaced atomically every few seconds and
once more at shutdown.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from train.errors import UsageError
from train.fileio import atomic_write, ensure_writable_dir, write_json

STAGES = ("read", "preprocess", "infer", "post")
RUN_FILES = ("predictions.jsonl", "events.jsonl", "summary.json")


class StageTimes:
    """Per-stage latencies over the most recent `window` frames, for p50/p95 on long runs."""

    def __init__(self, window: int = 100_000) -> None:
        self.samples = {stage: deque(maxlen=window) for stage in STAGES}

    def add(self, stage: str, ms: float) -> None:
        self.samples[stage].append(ms)

    def summary(self) -> dict[str, dict[str, float] | None]:
        out: dict[str, dict[str, float] | None] = {}
        for stage, values in self.samples.items():
            if not values:
                out[stage] = None
                continue
            a = np.fromiter(values, float)
            out[stage] = {"p50_ms": round(float(np.percentile(a, 50)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3), "mean_ms": round(float(a.mean()), 3), "n": len(a)}
        return out


def claim_out(out: str | os.PathLike) -> Path:
    """A writable output directory that holds no earlier run, or UsageError."""
    path = ensure_writable_dir(out)
    taken = [name for name in RUN_FILES if (path / name).exists()]
    if taken:
        # appending would mix two runs and replacing would lose one
        raise UsageError(f"{path} already holds a run ({', '.join(taken)}); pass a new --out")
    return path


class Recorder:
    def __init__(self, out: str | os.PathLike, snapshots: bool = True, sync_every_s: float = 1.0) -> None:
        self.out = claim_out(out)
        self.snapshots = self.out / "snapshots" if snapshots else None
        if self.snapshots:
            self.snapshots.mkdir(exist_ok=True)
        self._predictions = self._open("predictions.jsonl")
        self._events = self._open("events.jsonl")
        self._sync_every, self._last_sync = sync_every_s, time.monotonic()

    def _open(self, name: str) -> TextIO:
        return open(self.out / name, "a", encoding="utf-8", buffering=1)

    def prediction(self, row: dict[str, Any]) -> None:
        self._write(self._predictions, row)

    def event(self, row: dict[str, Any]) -> None:
        self._write(self._events, row)
        self.sync()

    def snapshot(self, event_id: int, image: np.ndarray) -> str | None:
        """The event's best frame so far as a JPEG; replaced atomically as the peak rises."""
        if self.snapshots is None:
            return None
        path = self.snapshots / f"event_{event_id:05d}.jpg"
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if ok:
            atomic_write(path, lambda tmp: Path(tmp).write_bytes(data.tobytes()))
        return str(path.relative_to(self.out))

    def _write(self, f: TextIO, row: dict[str, Any]) -> None:
        f.write(json.dumps(row, separators=(",", ":")) + "\n")
        if time.monotonic() - self._last_sync >= self._sync_every:
            self.sync()

    def sync(self) -> None:
        for f in (self._predictions, self._events):
            f.flush()
            os.fsync(f.fileno())
        self._last_sync = time.monotonic()

    def summary(self, value: dict[str, Any]) -> None:
        write_json(self.out / "summary.json", value)

    def close(self) -> None:
        if not self._predictions.closed:
            self.sync()
        self._predictions.close()
        self._events.close()
