"""Short clips around each event, and the files a run may keep: all written by one thread, off the inference path.

The inference thread only hands frames over (a reference, no copy). The writer JPEG-encodes them into a ring
bounded by bytes, so the PRE seconds before an event exist when it opens; a clip then runs until POST seconds
after the event closes. A clip is a Motion-JPEG AVI made of those same JPEG bytes, so it costs no encoding.
Snapshots are written here too. When the storage cap is reached, the oldest files of events already delivered go
first; files of events still waiting in the outbox are never deleted.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pothole_edge.edge.avi import MjpegAvi
from pothole_edge.errors import UsageError, is_disk_full

log = logging.getLogger("edge")
EVENT_FILE = re.compile(r"event_(\d+)\.(jpg|avi)$")
UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


def parse_storage(text: str) -> int:
    """'2GB', '500MB', '1.5GiB', '1000000' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).upper() not in UNITS:
        raise UsageError(f"--max-storage {text!r} is not a size; give e.g. 2GB, 500MB or 1.5GiB")
    return int(float(m.group(1)) * UNITS[m.group(2).upper()])


def parse_clips(text: str) -> tuple[float, float]:
    """'5,5' -> seconds before and after each event."""
    try:
        pre, post = (float(v) for v in str(text).split(","))
    except ValueError:
        raise UsageError(f"--clips {text!r} must be PRE,POST seconds, e.g. 5,5") from None
    if not (0 <= pre <= 120 and 0 <= post <= 120):
        raise UsageError(f"--clips {text!r}: each side must be from 0 to 120 seconds")
    return pre, post


class Storage:
    """The run's event files (snapshots, clips) and the annotated video, kept under `max_bytes`."""

    def __init__(self, out: Path, max_bytes: int | None, delivered: Callable[[int], bool]) -> None:
        self.out, self.max_bytes, self.delivered = out, max_bytes, delivered
        self.removed: list[str] = []
        self.refused = 0
        self._lock = threading.Lock()

    def _files(self) -> list[tuple[int | None, Path]]:
        files = []
        for folder in ("snapshots", "clips"):
            for p in sorted((self.out / folder).glob("event_*")) if (self.out / folder).is_dir() else []:
                m = EVENT_FILE.search(p.name)
                if m:
                    files.append((int(m.group(1)), p))
        if (self.out / "annotated.mp4").exists():
            files.append((None, self.out / "annotated.mp4"))
        return files

    def used(self) -> int:
        total = 0
        for _, p in self._files():
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def make_room(self, incoming: int = 0) -> bool:
        """Delete the oldest delivered events' files until `incoming` more bytes fit; False if they cannot."""
        if self.max_bytes is None:
            return True
        with self._lock:
            return self._make_room(incoming)

    def _make_room(self, incoming: int) -> bool:
        used = self.used()
        for event, path in sorted((f for f in self._files() if f[0] is not None), key=lambda f: (f[0], f[1].name)):
            if used + incoming <= self.max_bytes:
                break
            if not self.delivered(event):
                continue  # its event is still in the outbox: the office has not got it yet
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            used -= size
            self.removed.append(str(path.relative_to(self.out)))
            log.info(
                "storage cap %d bytes: removed %s (event %d, delivered)",
                self.max_bytes,
                path.relative_to(self.out),
                event,
            )
        if used + incoming > self.max_bytes:
            self.refused += 1
            return False
        return True


@dataclass
class _Clip:
    event: int
    path: Path
    writer: MjpegAvi | None
    tmp: Path
    until: float | None = None  # set when the event closes: frames up to this time still go in
    frames: int = 0


@dataclass
class ClipStats:
    clips: int = 0
    frames_dropped: int = 0  # frames the writer could not keep up with
    snapshots: set[int] = field(default_factory=set)  # events with a snapshot: a new peak rewrites the same file
    skipped_for_space: int = 0
    errors: list[str] = field(default_factory=list)


class Writer:
    """One thread for every optional file: event clips and snapshots."""

    def __init__(
        self,
        out: Path,
        recorder: Any,
        storage: Storage,
        clips: tuple[float, float] | None,
        fps: float,
        live: bool = True,
        ring_bytes: int = 64 << 20,
    ) -> None:
        self.out, self.recorder, self.storage, self.clips, self.fps = (
            out,
            recorder,
            storage,
            clips,
            fps if 0 < fps < 240 else 15.0,
        )
        # a live camera never waits for the writer (a frame it cannot take is dropped and counted); a file
        # does, so its clips hold every frame, as they would in a replay of the same drive
        self.live = live
        self.ring: deque[tuple[float, bytes]] = deque()
        self.size = (0, 0)  # the frames' width and height, from the first one
        self.ring_bytes, self._ring_used = ring_bytes, 0
        self.active: list[_Clip] = []
        self.stats = ClipStats()
        self._q: queue.Queue = queue.Queue(maxsize=64)
        self._thread = threading.Thread(target=self._run, name="event-writer", daemon=True)
        self._pending: dict[int, int] = {}  # event -> its snapshots queued and not yet written (or given up)
        self._written = threading.Condition()
        if clips:
            (out / "clips").mkdir(exist_ok=True)

    def start(self) -> Writer:
        self._thread.start()
        return self

    # the inference thread's side: never blocks, never encodes
    def frame(self, t: float, image_bgr: np.ndarray) -> None:
        if self.clips:
            self._put(("frame", t, image_bgr), droppable=self.live)

    def opened(self, event: int, t: float) -> None:
        if self.clips:
            self._put(("open", event, t))

    def closed(self, event: int, t: float) -> None:
        if self.clips:
            self._put(("close", event, t))

    def snapshot(self, event: int, image_bgr: np.ndarray, box: Any, prob: float) -> None:
        with self._written:
            self._pending[event] = self._pending.get(event, 0) + 1
        self._put(("snapshot", event, image_bgr, box, prob))

    def settle(self, event: int, timeout: float = 10.0) -> bool:
        """Wait until the snapshots queued for `event` are on disk or given up: a message that carries the JPEG
        reads it when it is sent, and under load the writer thread may still be behind. False on the timeout."""
        with self._written:
            return self._written.wait_for(lambda: event not in self._pending, timeout)

    def _put(self, item: tuple, droppable: bool = False) -> None:
        try:
            self._q.put(item, block=not droppable, timeout=None if not droppable else 0)
        except queue.Full:
            self.stats.frames_dropped += 1

    # the writer thread's side
    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                break
            try:
                getattr(self, "_" + item[0])(*item[1:])
            except Exception as e:  # the thread must go on taking items: a file source waits on this queue
                self.stats.errors.append(str(e))
                self.recorder.stop_optional("the disk is full" if is_disk_full(e) else f"the event writer failed ({e})")
            finally:
                if item[0] == "snapshot":
                    self._done_with(item[1])
        for clip in list(self.active):
            self._finish(clip)

    def _frame(self, t: float, image: np.ndarray) -> None:
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            return
        jpeg = data.tobytes()
        self.size = (image.shape[1], image.shape[0])
        self.ring.append((t, jpeg))
        self._ring_used += len(jpeg)
        pre = self.clips[0] if self.clips else 0
        while self.ring and (self._ring_used > self.ring_bytes or self.ring[0][0] < t - pre - 1):
            self._ring_used -= len(self.ring.popleft()[1])
        for clip in list(self.active):
            if clip.until is not None and t > clip.until:
                self._finish(clip)
            else:
                self._write(clip, jpeg)

    def _open(self, event: int, t: float) -> None:
        if not self.recorder.optional or not self.storage.make_room(len(self.ring[-1][1]) * 10 if self.ring else 0):
            self.stats.skipped_for_space += 1
            return
        path = self.out / "clips" / f"event_{event:05d}.avi"
        clip = _Clip(event, path, None, path.with_name(f".event_{event:05d}.partial.avi"))
        for ft, jpeg in self.ring:  # the seconds before the event, from the ring
            if ft >= t - self.clips[0] - 1e-6:
                self._write(clip, jpeg)
        self.active.append(clip)  # an event on the run's first frame has no ring yet: its frames come next

    def _write(self, clip: _Clip, jpeg: bytes) -> None:
        if clip.writer is None:
            clip.writer = MjpegAvi(clip.tmp, *self.size, self.fps)
        if clip.writer.full(len(jpeg)):
            if clip.until != float("-inf"):
                log.warning("clip of event %d reached the AVI limit of 2 GiB; it ends here", clip.event)
            clip.until = float("-inf")  # the next frame finishes it
            return
        clip.writer.write(jpeg)
        clip.frames += 1

    def _close(self, event: int, t: float) -> None:
        for clip in self.active:
            if clip.event == event:
                clip.until = t + self.clips[1]

    def _finish(self, clip: _Clip) -> None:
        self.active.remove(clip)
        if clip.writer is None:  # no frame arrived (the run ended at once): nothing to keep
            return
        clip.writer.close()
        os.replace(clip.tmp, clip.path)
        self.stats.clips += 1
        self.storage.make_room()

    def _snapshot(self, event: int, image: np.ndarray, box: Any, prob: float) -> None:
        if self.storage.make_room(image.nbytes // 10):
            if self.recorder.snapshot(event, image, box, prob):
                self.stats.snapshots.add(event)
        else:
            self.stats.skipped_for_space += 1

    def _done_with(self, event: int) -> None:
        with self._written:
            left = self._pending.pop(event, 1) - 1
            if left:
                self._pending[event] = left
            self._written.notify_all()

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(60)

    def summary(self) -> dict[str, Any]:
        return {
            "clips": self.stats.clips,
            "snapshots": len(self.stats.snapshots),
            "frames_dropped_by_writer": self.stats.frames_dropped,
            "skipped_for_space": self.stats.skipped_for_space,
            "storage_cap_bytes": self.storage.max_bytes,
            "storage_used_bytes": self.storage.used(),
            "removed_for_space": self.storage.removed,
        }
