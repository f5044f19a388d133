"""Background threads that read frames and prepare them (position, the --every-m choice, tiles) while the model
runs.

Files: one thread reads and preprocesses every frame into a short blocking queue, so no frame is
lost. Live sources: the reading thread keeps only the newest frame in a one-frame slot (each
overwritten frame counts as dropped, so lag cannot grow when the model is slower than the camera),
and a second thread prepares only the frames taken from that slot: a frame that will be dropped
is never cut into tiles.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from pothole_edge.edge.sources import Frame

log = logging.getLogger("edge")
_END = None


class Newest:
    """A one-frame slot: `put` replaces what was not yet taken."""

    def __init__(self) -> None:
        self._item: Any = None
        self._full = False
        self._closed = False
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self._cond:
            if self._full:
                self.dropped += 1
            self._item, self._full = item, True
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def get(self, timeout: float) -> Any:
        """The newest item; raises queue.Empty on timeout, returns _END once closed and drained."""
        with self._cond:
            if not self._full and not self._closed:
                self._cond.wait(timeout)
            if self._full:
                item, self._item, self._full = self._item, None, False
                return item
            if self._closed:
                return _END
            raise queue.Empty


class _Blocking:
    """A short queue whose put gives up when the run is stopped."""

    def __init__(self, depth: int) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=depth)

    def put(self, item: Any, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self, timeout: float) -> Any:
        return self._q.get(timeout=timeout)


class Reader:
    """Runs `source.frames()` on a thread and hands out `prepare(frame)` for each frame it keeps."""

    def __init__(self, source: Any, prepare: Callable[[Frame], Any], stop: threading.Event, depth: int = 4) -> None:
        self.source, self.prepare, self.stop = source, prepare, stop
        self.live = bool(source.live)
        self.slot = Newest() if self.live else None
        self.out = _Blocking(1 if self.live else depth)
        self.read = 0
        self.error: BaseException | None = None
        self._threads = [threading.Thread(target=self._read, name="frame-reader", daemon=True)]
        if self.live:
            self._threads.append(threading.Thread(target=self._cut_newest, name="frame-preprocess", daemon=True))

    def start(self) -> Reader:
        for t in self._threads:
            t.start()
        return self

    def _read(self) -> None:
        try:
            for frame in self.source.frames(self.stop):
                self.read += 1
                if self.slot is not None:
                    self.slot.put(frame)
                else:
                    self.out.put(self.prepare(frame), self.stop)
        except BaseException as e:  # surfaced in the main thread by next()
            self.error = e
        finally:
            if self.slot is not None:
                self.slot.close()
            else:
                self.out.put(_END, self.stop)

    def _cut_newest(self) -> None:
        assert self.slot is not None
        try:
            while not self.stop.is_set():
                try:
                    frame = self.slot.get(timeout=0.2)
                except queue.Empty:
                    continue
                if frame is _END:
                    break
                self.out.put(self.prepare(frame), self.stop)
        except BaseException as e:
            self.error = e
        finally:
            self.out.put(_END, self.stop)

    def next(self) -> Any:
        """The next item, or None at the end of the source or when stopped."""
        while not self.stop.is_set():
            try:
                item = self.out.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is _END:
                if self.error is not None:
                    raise self.error
                return None
            return item
        return None

    @property
    def dropped(self) -> int:
        return self.slot.dropped if self.slot is not None else 0

    def join(self, timeout: float = 10.0) -> None:
        for t in self._threads:
            t.join(timeout)
            if t.is_alive():
                log.warning("the %s thread did not stop within %g s", t.name, timeout)
