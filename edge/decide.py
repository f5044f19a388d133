"""Per-frame probabilities to pothole events: k of the last n classified frames, then hysteresis.

A pothole seen for 30 frames is one event, not 30 alerts. An event opens when at least k of the last n
classified frames reach `threshold`, and closes once n frames in a row fall below `threshold * (1 - hysteresis)`,
so a probability hovering around the threshold does not flicker events on and off.

The rule counts frames, so it does not depend on where the threshold sits: a false-alarm budget puts thresholds
near 1 (0.904, 0.992), where an average of probabilities (the EMA this replaced) needed 7 to 14 frames at p = 1
to get there, longer than a pothole stays in view at speed. Two frames of a pothole open an event at any
threshold; one stray frame does not.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Event:
    id: int
    start_frame: int
    start_time: float | None
    end_frame: int
    end_time: float | None
    peak_prob: float
    peak_frame: int
    peak_time: float | None
    frames: int  # processed frames inside the event
    open_at_end: bool = False
    peak_tile: list[float] | None = None  # x0, y0, x1, y1 of the tile that decided the peak frame
    peak_position: dict[str, Any] | None = None  # lat, lon, speed, heading and fix age at the peak frame (--gps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Step:
    votes: int  # frames at or above the threshold among the last n
    active: bool
    opened: Event | None = None
    closed: Event | None = None
    new_peak: bool = False  # the open event's highest probability so far is new: see peak
    peak: Any = None  # the payload given with the peak frame (the runner's tile, position and image)


class EventDetector:
    def __init__(self, threshold: float, votes: tuple[int, int] = (2, 3), hysteresis: float = 0.3) -> None:
        k, n = votes
        if not 1 <= k <= n:
            raise ValueError("votes must be k of n with 1 <= k <= n")
        self.on, self.off, self.k, self.n = threshold, threshold * (1 - hysteresis), k, n
        self.recent: deque[tuple[int, float | None, float, Any]] = deque(maxlen=n)  # index, time, prob, payload
        self.quiet = 0  # frames in a row below the off level, while an event is open
        self.current: Event | None = None
        self.count = 0

    def update(self, index: int, timestamp: float | None, prob: float, payload: Any = None) -> Step:
        """One classified frame; `payload` comes back in Step.peak when this frame becomes an event's peak,
        which may be a frame or two after it, when the votes complete."""
        self.recent.append((index, timestamp, prob, payload))
        hits = [r for r in self.recent if r[2] >= self.on]
        step = Step(len(hits), self.current is not None)
        if self.current is None:
            if len(hits) >= self.k:
                self.count += 1
                first, peak = hits[0], max(hits, key=lambda r: r[2])
                # the event starts at the first of its votes, not at the frame that completed them
                self.current = Event(self.count, first[0], first[1], index, timestamp, peak[2], peak[0], peak[1], 0)
                self.current.frames = sum(1 for r in self.recent if r[0] >= first[0])
                self.quiet = 0
                step.opened, step.active, step.new_peak, step.peak = self.current, True, True, peak[3]
            return step
        event = self.current
        if prob < self.off:
            self.quiet += 1
            if self.quiet >= self.n:
                step.closed, self.current, step.active = event, None, False
            return step
        self.quiet = 0
        event.end_frame, event.end_time, event.frames = index, timestamp, event.frames + 1
        if prob > event.peak_prob:
            event.peak_prob, event.peak_frame, event.peak_time = prob, index, timestamp
            step.new_peak, step.peak = True, payload
        return step

    def close(self) -> Event | None:
        """Close the open event now, as a whole one, and forget the votes: each still image is its own event."""
        event, self.current = self.current, None
        self.recent.clear()
        self.quiet = 0
        return event

    def finish(self) -> Event | None:
        """Close an event still open when the source ends or the run is stopped."""
        event, self.current = self.current, None
        if event is not None:
            event.open_at_end = True
        return event
