"""A background thread that reads and preprocesses frames while the model runs.

Files go through a short blocking queue, so no frame is lost. Live sources go through a
one-frame slot that the newest frame overwrites, so lag cannot grow when the model is slower
than the camera; each overwritten frame counts as dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edge.sources import Frame

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
    def __init__(self, depth: int) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self.dropped = 0

    def put(self, item: Any, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self, stop: threading.Event) -> None:
        self.put(_END, stop)

    def get(self, timeout: float) -> Any:
        return self._q.get(timeout=timeout)


class Reader:
    """Runs `source.frames()` on a thread and hands out (Frame, model input, preprocess ms)."""

    def __init__(self, source: Any, preprocess: Callable[[np.ndarray], np.ndarray], stop: threading.Event, depth: int = 4) -> None:
        self.source, self.preprocess, self.stop = source, preprocess, stop
        self.slot: Any = Newest() if source.live else _Blocking(depth)
        self.read = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="frame-reader", daemon=True)

    def start(self) -> Reader:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for frame in self.source.frames(self.stop):
                self.read += 1
                t = time.perf_counter()
                item = (frame, self.preprocess(frame.image), (time.perf_counter() - t) * 1000)
                if isinstance(self.slot, Newest):
                    self.slot.put(item)
                else:
                    self.slot.put(item, self.stop)
        except BaseException as e:  # surfaced in the main thread by next()
            self.error = e
        finally:
            if isinstance(self.slot, Newest):
                self.slot.close()
            else:
                self.slot.close(self.stop)

    def next(self) -> tuple[Frame, np.ndarray, float] | None:
        """The next item, or None at the end of the source or when stopped."""
        while not self.stop.is_set():
            try:
                item = self.slot.get(timeout=0.2)
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
        return self.slot.dropped

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the frame reader did not stop within %g s", timeout)
