"""Where frames come from: a camera, a video file, a network stream or an image folder.

Each source opens synchronously, so a bad path or a dead camera is an error before the run
starts. Reading then happens on a background thread (see `edge.reader`). Video and camera frames
stay in OpenCV's BGR until the tiles are cut; still images are decoded to RGB by the same decoder
training uses (pothole_edge.images), with its limits for untrusted files.
"""

from __future__ import annotations

import glob
import logging
import os
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pothole_edge.errors import UsageError
from pothole_edge.fileio import encodable
from pothole_edge.images import ImageDecodeError, read_rgb

log = logging.getLogger("edge")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "tcp://", "udp://", "rtmp://")


@dataclass
class Frame:
    index: int  # position in the source, counting every frame read
    timestamp: float | None  # seconds: the file's own clock, or Unix time for live sources
    image: np.ndarray  # uint8 (H, W, 3) in `order`
    read_ms: float
    name: str | None = None  # the file, for image folders
    order: str = "BGR"  # BGR from OpenCV's decoders, RGB from still images

    def bgr(self) -> np.ndarray:
        return self.image if self.order == "BGR" else cv2.cvtColor(self.image, cv2.COLOR_RGB2BGR)


def cv_path(path: str) -> tuple[str, int | None]:
    """A path OpenCV can open. OpenCV crashes on Python strings holding undecodable bytes (surrogate
    escapes); such a file is opened here and handed over as /proc/self/fd/N."""
    if encodable(path):
        return path, None
    fd = os.open(path, os.O_RDONLY)
    return f"/proc/self/fd/{fd}", fd


def open_capture(target: int | str, live_timeout_ms: int = 5000) -> Any:
    """cv2.VideoCapture that does not hang: network streams get open and read timeouts."""
    if isinstance(target, str) and target.startswith(STREAM_SCHEMES):
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, live_timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, live_timeout_ms]
        return cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
    return cv2.VideoCapture(target)


def _check_regular(path: str, flag: str) -> None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"video {printable(path)} does not exist; pass {flag} with a video file") from None
    except OSError as e:
        raise UsageError(
            f"cannot read video {printable(path)}: {e.strerror}; pass {flag} with a readable video file"
        ) from None
    if stat.S_ISDIR(info.st_mode):
        raise UsageError(
            f"{printable(path)} is a directory; pass {flag} with a video file, or --images for a folder of images"
        )
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(
            f"{printable(path)} is not a regular file (a device or pipe); pass {flag} with a video file, or --camera N"
        )


def printable(text: str) -> str:
    """A path for a message: undecodable bytes shown as \\xNN instead of crashing the print."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class Source:
    """What every source tells the run: whether it is live, its frame rate, how many frames to expect, why it
    ended if it was lost, and its own statistics for summary.json."""

    live = False
    fps = 0.0
    lost: str | None = None
    describe = ""

    def total(self) -> int | None:
        """The frames this source will give, where it knows (a progress bar's end)."""
        return None

    def stats(self) -> dict[str, Any]:
        return {"ended_early": None, "unreadable": 0, "gaps": []}

    def close(self) -> None:
        pass


class VideoFile(Source):
    """Every frame of a file, in order; `stride` skips frames on purpose."""

    def __init__(self, path: str, stride: int = 1) -> None:
        _check_regular(path, "--video")
        self.path, self.stride = path, stride
        target, self._fd = cv_path(path)
        self.cap = open_capture(target)
        ok, first = self.cap.read() if self.cap.isOpened() else (False, None)
        if not ok:
            self.close()
            raise UsageError(
                f"cannot decode video {printable(path)}: OpenCV's FFmpeg reads no frame from it; check the file "
                "plays, or convert it to MP4 (H.264)"
            )
        self._first = first
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 0.0
        self.expected = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.ended_early: str | None = None
        self.describe = f"video {printable(path)} ({self.expected or '?'} frames at {self.fps:.1f} fps)"

    def _timestamp(self, index: int) -> float | None:
        ms = self.cap.get(cv2.CAP_PROP_POS_MSEC)
        if ms > 0 or index == 0:
            return ms / 1000
        return index / self.fps if self.fps else None

    def frames(self, stop: Any) -> Iterator[Frame]:
        index, image, t = 0, self._first, time.perf_counter()
        ts = self._timestamp(0)
        while image is not None and not stop.is_set():
            if index % self.stride == 0:
                yield Frame(index, ts, image, (time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            ok, image = self.cap.read()
            index += 1
            ts = self._timestamp(index)
            if not ok:
                image = None
        if self.expected and index < self.expected - 1 and not stop.is_set():
            self.ended_early = (
                f"the video ended at frame {index} of the {self.expected} its header announces; "
                "it may be truncated or damaged"
            )
            log.warning("%s: %s", printable(self.path), self.ended_early)

    def total(self) -> int | None:
        return self.expected or None

    def stats(self) -> dict[str, Any]:
        return super().stats() | {"ended_early": self.ended_early}

    def close(self) -> None:
        if getattr(self, "cap", None) is not None:
            self.cap.release()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ImageFolder(Source):
    """Image files in name order; an unreadable one is logged, counted and skipped."""

    def __init__(self, pattern: str, stride: int = 1) -> None:
        if os.path.isdir(pattern):
            paths = [str(p) for p in sorted(Path(pattern).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        else:
            paths = sorted(p for p in glob.glob(pattern) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise UsageError(
                f"no images in {printable(pattern)}; pass --images with a folder or glob of "
                f"{', '.join(sorted(IMAGE_SUFFIXES))} files"
            )
        self.paths, self.stride = paths[::stride], stride
        self.unreadable: list[str] = []
        self.describe = f"images {printable(pattern)} ({len(self.paths)} files)"

    def frames(self, stop: Any) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            if stop.is_set():
                return
            t = time.perf_counter()
            try:
                image = read_rgb(path)
            except ImageDecodeError as e:
                log.warning("skipping %s: %s", printable(path), e)
                self.unreadable.append(printable(path))
                continue
            yield Frame(
                index * self.stride, None, image, (time.perf_counter() - t) * 1000, name=printable(path), order="RGB"
            )

    def total(self) -> int | None:
        return len(self.paths)

    def stats(self) -> dict[str, Any]:
        return super().stats() | {"unreadable": len(self.unreadable)}


class LiveSource(Source):
    """A camera or stream. Reads never give up at the first failure: they reconnect with back-off.

    `frames()` yields every frame it reads; the reader keeps only the newest for the model.
    Each outage is logged and kept in `gaps`; one longer than `reconnect_timeout` ends the run.
    """

    live = True

    def __init__(self, target: int | str, reconnect_timeout: float, open_cap: Any = open_capture) -> None:
        self.target, self.reconnect_timeout, self._open = target, reconnect_timeout, open_cap
        self.what = f"camera {target}" if isinstance(target, int) else f"stream {target}"
        self.gaps: list[dict[str, Any]] = []
        self.lost: str | None = None  # why the source ended, if it did
        self.cap, tries = self._connect(None)
        if self.cap is None:
            fix = (
                "check the index (v4l2-ctl --list-devices) or pass another --camera"
                if isinstance(target, int)
                else "check the URL and that the server is up"
            )
            raise UsageError(
                f"{self.what} did not open after {tries} {'try' if tries == 1 else 'tries'} over "
                f"{reconnect_timeout:g} s; {fix}"
            )
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 0.0
        self.describe = self.what

    def _connect(self, stop: Any) -> tuple[Any, int]:
        """Open and read one frame, retrying with doubling waits until `reconnect_timeout` runs out."""
        start, delay, tries = time.monotonic(), 0.25, 0
        while True:
            tries += 1
            cap = self._open(self.target)
            if cap.isOpened():
                ok, image = cap.read()
                if ok and image is not None:
                    self._pending = image
                    return cap, tries
            cap.release()
            left = self.reconnect_timeout - (time.monotonic() - start)
            if left <= 0 or (stop is not None and stop.is_set()):
                return None, tries
            if stop is not None:
                stop.wait(min(delay, left))
            else:
                time.sleep(min(delay, left))
            delay = min(delay * 2, 4.0)

    def frames(self, stop: Any) -> Iterator[Frame]:
        index = 0
        image, t = self._pending, time.perf_counter()
        while not stop.is_set():
            if image is not None:
                yield Frame(index, time.time(), image, (time.perf_counter() - t) * 1000)
                index += 1
            t = time.perf_counter()
            ok, image = self.cap.read()
            if ok and image is not None:
                continue
            image = None
            lost_at = time.time()
            log.warning(
                "%s lost at %s; reconnecting for up to %g s", self.what, _clock(lost_at), self.reconnect_timeout
            )
            self.cap.release()
            self.cap, tries = self._connect(stop)
            if self.cap is None:
                if not stop.is_set():
                    self.lost = f"{self.what} lost at {_clock(lost_at)} and not back after {self.reconnect_timeout:g} s"
                    log.error("%s", self.lost)
                return
            back = time.time()
            self.gaps.append(
                {"lost_at": lost_at, "restored_at": back, "gap_s": round(back - lost_at, 3), "tries": tries}
            )
            log.warning("%s back at %s after a %.2f s gap (%d tries)", self.what, _clock(back), back - lost_at, tries)
            image, t = self._pending, time.perf_counter()

    def stats(self) -> dict[str, Any]:
        return super().stats() | {"gaps": self.gaps}

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


def camera_missing(index: int) -> bool:
    """On Linux a camera that is not plugged in has no device node."""
    return sys.platform.startswith("linux") and not Path(f"/dev/video{index}").exists()


def open_source(kind: str, value: Any, stride: int = 1, reconnect_timeout: float = 30.0) -> Source:
    if kind == "video":
        return VideoFile(value, stride)
    if kind == "images":
        return ImageFolder(value, stride)
    if kind == "camera":
        index = int(value)
        # say so now, not after the reconnect timeout
        if camera_missing(index):
            raise UsageError(
                f"camera {index}: /dev/video{index} does not exist; plug the camera in, check the index "
                "(v4l2-ctl --list-devices) or pass another --camera"
            )
        return LiveSource(index, reconnect_timeout)
    if kind == "stream":
        if not str(value).startswith(STREAM_SCHEMES):
            raise UsageError(
                f"--stream {value} is not a stream URL; use one of "
                f"{', '.join(s.rstrip(':/') for s in STREAM_SCHEMES)}, or --video for a file"
            )
        return LiveSource(str(value), reconnect_timeout)
    raise UsageError(f"unknown source {kind!r}; choose one of camera, video, stream, images")
