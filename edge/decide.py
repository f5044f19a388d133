"""Per-frame probabilities to pothole events: an EMA, then hysteresis.

A pothole seen for 30 frames is one event, not 30 alerts. The event opens when the smoothed
probability reaches `threshold` and closes when it falls below `threshold * (1 - hysteresis)`,
so a probability hovering around the threshold does not flicker events on and off.
"""

from __future__ import annotations

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
    smoothed: float
    active: bool
    opened: Event | None = None
    closed: Event | None = None
    new_peak: bool = False  # this frame is the open event's highest probability so far


class EventDetector:
    def __init__(self, threshold: float, alpha: float = 0.3, hysteresis: float = 0.3) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.on, self.off, self.alpha = threshold, threshold * (1 - hysteresis), alpha
        self.smoothed: float | None = None
        self.current: Event | None = None
        self.count = 0

    def update(self, index: int, timestamp: float | None, prob: float) -> Step:
        self.smoothed = prob if self.smoothed is None else self.alpha * prob + (1 - self.alpha) * self.smoothed
        step = Step(self.smoothed, self.current is not None)
        if self.current is None and self.smoothed >= self.on:
            self.count += 1
            self.current = Event(self.count, index, timestamp, index, timestamp, prob, index, timestamp, 0)
            step.opened, step.active, step.new_peak = self.current, True, True
        elif self.current is not None and self.smoothed < self.off:
            step.closed, self.current, step.active = self.current, None, False
            return step
        if self.current is not None:
            event = self.current
            event.end_frame, event.end_time, event.frames = index, timestamp, event.frames + 1
            if prob > event.peak_prob:
                event.peak_prob, event.peak_frame, event.peak_time = prob, index, timestamp
                step.new_peak = True
        return step

    def finish(self) -> Event | None:
        """Close an event still open when the source ends or the run is stopped."""
        event, self.current = self.current, None
        if event is not None:
            event.open_at_end = True
        return event
