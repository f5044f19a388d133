"""Everything a run writes to --out, written as it goes so a kill loses at most the frame in flight.

Each JSONL line is flushed when written and the files are fsynced about once a second, so a
power cut loses at most that second. summary.json is replaced atomically every few seconds and
once more at shutdown.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pothole_edge.edge.video import draw_tile
from pothole_edge.errors import DiskFull, UsageError, is_disk_full
from pothole_edge.fileio import ensure_writable_dir, first_missing, write_bytes, write_json
from pothole_edge.timing import stats

STAGES = ("read", "preprocess", "infer", "post")
log = logging.getLogger("edge")
RUN_FILES = ("predictions.jsonl", "events.jsonl", "summary.json", "config.json", "annotated.mp4", "snapshots")
CLAIM = ".edge-run"  # created with O_EXCL: the atomic part of claiming --out


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
            s = stats(np.fromiter(values, float), keep_samples=False)
            out[stage] = {
                "p50_ms": round(s["p50_ms"], 3),
                "p95_ms": round(s["p95_ms"], 3),
                "mean_ms": round(s["mean_ms"], 3),
                "n": s["runs"],
            }
        return out


@dataclass
class Claim:
    """An output directory this run owns: claimed with an exclusive marker file, so two runs never share one."""

    path: Path
    created: Path | None  # the outermost folder this claim made, removed again if the run never starts

    def release(self) -> None:
        """Undo the claim of a run that never started: nothing is left that a rerun would trip over."""
        (self.path / CLAIM).unlink(missing_ok=True)
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)


def claim_out(out: str | os.PathLike) -> Claim:
    """A writable output directory that holds no earlier run, claimed atomically, or UsageError."""
    created = first_missing(out)
    path = ensure_writable_dir(out)
    taken = [name for name in RUN_FILES if (path / name).exists()]
    if not taken:
        try:
            fd = os.open(path / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            taken = [CLAIM]
        else:
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
            return Claim(path, created)
    # appending would mix two runs and replacing would lose one
    raise UsageError(f"{path} already holds a run ({', '.join(taken)}); pass a new --out")


class Recorder:
    """The run's files. Each JSONL line goes out in one write and is cut back off if the disk takes only part
    of it, so a full disk never leaves a torn line; snapshots are the first thing a full disk stops."""

    def __init__(self, claim: Claim, snapshots: bool = True, sync_every_s: float = 1.0) -> None:
        self.out = claim.path
        self.snapshots = self.out / "snapshots" if snapshots else None
        if self.snapshots:
            self.snapshots.mkdir(exist_ok=True)
        self._files = {name: self._open(name) for name in ("predictions.jsonl", "events.jsonl")}
        self._sizes = {name: 0 for name in self._files}
        self._sync_every, self._last_sync = sync_every_s, time.monotonic()
        self.dropped_snapshots = 0
        self.disk_full: str | None = None
        self.optional = True  # snapshots, clips and the annotated video; a full disk stops them first

    def _open(self, name: str) -> int:
        return os.open(self.out / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)

    def prediction(self, row: dict[str, Any]) -> None:
        self._write("predictions.jsonl", row)

    def event(self, row: dict[str, Any]) -> None:
        self._write("events.jsonl", row)
        self.sync()

    def stop_optional(self, why: str) -> None:
        """No more snapshots or clips: the space left goes to the lines that record what the camera saw."""
        if self.optional:
            log.warning("%s: snapshots and clips stop; predictions and events go on", why)
            self.optional = False
            self.snapshots = None

    def snapshot(
        self, event_id: int, image_bgr: np.ndarray, box: tuple[float, ...] | None = None, prob: float | None = None
    ) -> str | None:
        """The event's best frame so far as a JPEG, the tile that decided it drawn in; replaced atomically as the
        peak rises."""
        if self.snapshots is None:
            self.dropped_snapshots += 1
            return None
        path = self.snapshots / f"event_{event_id:05d}.jpg"
        image = draw_tile(image_bgr.copy(), box, prob) if box is not None else image_bgr
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            return None
        try:
            write_bytes(path, data.tobytes())
        except OSError as e:
            if not is_disk_full(e):
                raise
            self.dropped_snapshots += 1
            self.stop_optional("the disk is full")
            return None
        return str(path.relative_to(self.out))

    def _write(self, name: str, row: dict[str, Any]) -> None:
        fd, data = self._files[name], (json.dumps(row, separators=(",", ":")) + "\n").encode("utf-8")
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, "short write", str(self.out / name))
        except OSError as e:
            if not is_disk_full(e):
                raise
            os.ftruncate(fd, self._sizes[name])  # the torn tail goes; every line left is whole
            self.disk_full = f"no space left on the device writing {self.out / name}"
            raise DiskFull(self.disk_full) from None
        self._sizes[name] += len(data)
        if time.monotonic() - self._last_sync >= self._sync_every:
            self.sync()

    def sync(self) -> None:
        for fd in self._files.values():
            os.fsync(fd)
        self._last_sync = time.monotonic()

    def summary(self, value: dict[str, Any]) -> bool:
        """Replace summary.json atomically; on a full disk the last good one stays and False comes back."""
        try:
            write_json(self.out / "summary.json", value)
            return True
        except OSError as e:
            if not is_disk_full(e):
                raise
            self.disk_full = self.disk_full or f"no space left on the device writing {self.out / 'summary.json'}"
            return False

    def close(self) -> None:
        for fd in self._files.values():
            try:
                os.fsync(fd)
            except OSError:
                pass
            os.close(fd)
        self._files = {}
