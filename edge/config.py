"""The edge runner's config: one frozen dataclass, saved beside the run's outputs."""

from __future__ import annotations

from dataclasses import dataclass

from train.errors import UsageError

SOURCES = ("camera", "video", "stream", "images")


@dataclass(frozen=True)
class EdgeConfig:
    model: str
    camera: int | None = None
    video: str | None = None
    stream: str | None = None
    images: str | None = None  # a folder or a glob
    out: str | None = None  # None: runs/edge/<date-time>
    device: str = "auto"  # auto, tensorrt, cuda or cpu
    allow_cpu_fallback: bool = False
    threads: int | None = None  # None: every core but one
    threshold: float | None = None  # None: the model metadata's threshold
    ema: float = 0.3  # weight of the newest frame in the smoothed probability
    hysteresis: float = 0.3  # an event ends below threshold * (1 - hysteresis)
    stride: int = 1  # files: process every Nth frame
    reconnect_timeout: float = 30.0  # live sources: longest outage before the run ends
    max_frames: int | None = None  # stop after this many processed frames
    snapshots: bool = True
    save_video: bool = False
    show: bool = False

    def source(self) -> tuple[str, int | str]:
        given = [(name, getattr(self, name)) for name in SOURCES if getattr(self, name) is not None]
        if len(given) != 1:
            named = ", ".join("--" + name for name, _ in given) or "none"
            raise UsageError(f"give exactly one source, --camera N, --video PATH, --stream URL or --images DIR|GLOB (got {named})")
        return given[0]

    def check(self) -> None:
        self.source()
        if self.stride < 1:
            raise UsageError(f"--stride must be 1 or more, got {self.stride}")
        if not 0 < self.ema <= 1:
            raise UsageError(f"--ema must be in (0, 1], got {self.ema}")
        if not 0 <= self.hysteresis < 1:
            raise UsageError(f"--hysteresis must be in [0, 1), got {self.hysteresis}")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise UsageError(f"--threshold must be between 0 and 1, got {self.threshold}")
        if self.reconnect_timeout < 0:
            raise UsageError(f"--reconnect-timeout must be 0 or more seconds, got {self.reconnect_timeout}")
