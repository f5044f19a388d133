"""End-to-end edge fps: edge-run itself on a video, against the model-only throughput it measures in the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def synthetic_clip(
    path: Path, frames: int, size: tuple[int, int] = (1280, 720), fps: float = 15.0, hold: int = 4
) -> Path:
    """A dashcam-sized clip of the demo's procedural road images, each held for `hold` frames."""
    import cv2

    from pothole_edge.train.demo import render

    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    try:
        image = None
        for i in range(frames):
            if i % hold == 0:
                photo = render(bool(rng.integers(0, 2)), rng).convert("RGB").resize(size)
                image = cv2.cvtColor(np.asarray(photo), cv2.COLOR_RGB2BGR)
            writer.write(image)
    finally:
        writer.release()
    return path


def edge_fps(model_file: Path, video: Path, out: Path, max_frames: int) -> dict[str, Any]:
    """edge-run with its defaults (threads, reader thread, smoothing) on `video`, headless, no snapshots."""
    from pothole_edge.edge.config import EdgeConfig
    from pothole_edge.edge.runner import run

    summary = run(
        EdgeConfig(
            model=str(model_file),
            video=str(video),
            out=str(out),
            snapshots=False,
            max_frames=max_frames,
            model_fps=True,
        )
    )
    return {
        "model_file": str(model_file),
        "video": str(video),
        "frames": summary["frames"]["processed"],
        "threads": summary["threads"],
        "tiles_per_frame": summary["tiles_per_frame"],
        "provider": summary["provider"],
        "fps": summary["fps"],
        "model_only_fps": summary["model_only_fps"],
        "ratio": summary["fps_ratio"],
        "stage_p50_ms": {stage: v["p50_ms"] for stage, v in summary["latency_ms"].items() if v},
        "run_dir": str(out),
    }
