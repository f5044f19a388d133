"""pt-bench's config: one frozen dataclass; `resolved()` fills the --quick or full defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pothole_edge import checks
from pothole_edge.errors import UsageError

BATCH_SIZES = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class BenchConfig:
    models: tuple[str, ...]  # run directories holding model.pt and model.onnx (from pt-train and pt-export)
    out: str | None = None  # None: runs/bench/<date-time>
    quick: bool = False
    threads: int | None = None  # None: every core, for every backend alike
    runs: int | None = None  # timed batch-1 runs per backend; None: 20 quick, 100 full
    warmup: int | None = None  # untimed runs first; None: 3 quick, 10 full
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    throughput_reps: int | None = None  # timed runs per batch size; None: 2 quick, 5 full
    batch_budget_s: float | None = (
        None  # a batch size whose one run takes longer ends the sweep; None: 1.5 quick, 10 full
    )
    sgemm_size: int = 1024  # square SGEMM for the compute-bound reference
    edge_frames: int | None = None  # frames of the clip for the edge pipeline; None: 60 quick, 240 full
    video: str | None = None  # None: a synthetic clip made in --out
    clip_size: str = "1280x720"  # the synthetic clip's frames, a dashcam's
    edge: bool = True

    def resolved(self) -> BenchConfig:
        q = self.quick
        filled = {
            "runs": self.runs if self.runs is not None else 20 if q else 100,
            "warmup": self.warmup if self.warmup is not None else 3 if q else 10,
            "throughput_reps": self.throughput_reps if self.throughput_reps is not None else 2 if q else 5,
            "batch_budget_s": self.batch_budget_s if self.batch_budget_s is not None else 1.5 if q else 10.0,
            "edge_frames": self.edge_frames if self.edge_frames is not None else 60 if q else 240,
        }
        config = dataclasses.replace(self, **filled)
        config.check()
        return config

    def check(self) -> None:
        if not self.models:
            raise UsageError("give at least one run directory, e.g. pt-bench runs/lite0 runs/r50")
        for name in ("runs", "throughput_reps", "edge_frames", "threads"):
            if getattr(self, name) is not None:
                checks.integer(name, getattr(self, name), 1)
        if self.warmup is not None:
            checks.integer("warmup", self.warmup, 0)
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise UsageError(f"--batch-sizes must be positive integers, got {','.join(map(str, self.batch_sizes))}")
        if self.batch_budget_s is not None:
            checks.number("batch_budget_s", self.batch_budget_s, 0, low_open=True)
        checks.integer("sgemm_size", self.sgemm_size, 16, 8192)
