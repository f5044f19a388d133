"""`calibrate()`: the library function behind pt-calibrate.

A threshold chosen on validation roads does not carry to a new road and camera: there the same
model's scores sit higher or lower. pt-calibrate scores unlabelled frames from the user's own
camera and roads through the model's own view, sets the threshold from their score distribution
(`pothole_edge.calibration`), and writes a copy of the ONNX model whose metadata carries the new
threshold and what it was calibrated on. Graph and weights are copied byte for byte, so edge-run
needs nothing new, and neither torch nor onnx is needed here.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pothole_edge import calibration, metadata, preprocess
from pothole_edge import view as views
from pothole_edge.errors import UsageError
from pothole_edge.fileio import write_json

log = logging.getLogger("pt-export")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass(frozen=True)
class CalibrateConfig:
    model: str  # an ONNX model written by pt-export (or a run directory: its model.onnx)
    data: str  # a folder of unlabelled frames from the camera and roads the model will meet
    out: str | None = None  # None: <model>.calibrated.onnx beside the model
    max_fpr: float = 0.02  # the share of pothole-free frames allowed to raise an alarm
    pothole_share: float = 0.0  # the share of the frames thought to show a pothole
    threads: int | None = None  # None: every usable core

    def check(self) -> None:
        for name, zero_ok in (("max_fpr", False), ("pothole_share", True)):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or not (0 <= v < 0.5) or (v == 0 and not zero_ok):
                kind = "[0, 0.5)" if zero_ok else "(0, 0.5)"
                raise UsageError(f"--{name.replace('_', '-')} must be a fraction in {kind}, got {v}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise UsageError(f"--threads must be 1 or more, got {self.threads}")
        if not Path(self.data).is_dir():
            raise UsageError(f"--data {self.data} is not a folder; give a folder of frames from your camera")


def _frames(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise UsageError(
            f"no images under {folder}; extract frames from a drive first, e.g. ffmpeg -i drive.mp4 -vf fps=2 "
            f"{folder}/%05d.jpg"
        )
    return files


def _out_path(config: CalibrateConfig, model: Path) -> Path:
    out = Path(config.out) if config.out else model.with_name(model.name.removesuffix(".onnx") + ".calibrated.onnx")
    if out.suffix != ".onnx":
        raise UsageError(f"--out {out} must be a file name ending in .onnx")
    if out.exists() and out.resolve() == model.resolve():
        raise UsageError(f"--out {out} is the model itself; write the calibrated model to another file")
    return out


def score_frames(runner: Any, meta: dict[str, Any], files: list[Path]) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """The pooled probability of each readable frame through the model's view, and the files skipped."""
    from pothole_edge.images import ImageDecodeError, read_rgb
    from pothole_edge.progress import progress

    scores, skipped = [], []
    for path in progress(files, total=len(files), desc="scoring frames", unit="img"):
        try:
            image = read_rgb(path)
        except ImageDecodeError as e:
            skipped.append((str(path), str(e)))
            continue
        tiles, _ = preprocess.tiles(image, meta)
        scores.append(views.pool(runner.probs(tiles), meta["view"])[0])
    return np.array(scores, dtype=float), skipped


def calibrate(config: CalibrateConfig) -> dict[str, Any]:
    """Write the calibrated model and, beside it, <name>.calibration.json and .png."""
    from pothole_edge.session import Runner, open_session

    config.check()
    model = metadata.resolve_model_path(config.model)
    meta = metadata.read(model)
    out = _out_path(config, model)
    files = _frames(Path(config.data))
    runner = Runner(open_session(model, "cpu", threads=config.threads))
    scores, skipped = score_frames(runner, meta, files)
    for path, why in skipped[:5]:
        log.warning("skipping %s: %s", path, why)
    threshold, basis = calibration.threshold_for_budget(scores, config.max_fpr, config.pothole_share)
    record = basis | {
        "data": str(Path(config.data).resolve()),
        "skipped": len(skipped),
        "threshold_before": meta["threshold"],
        "threshold_method_before": meta["threshold_method"],
        "calibrated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    method = (
        f"calibrated: the lowest threshold that {basis['flagged_share']:.4f} of {basis['frames']} unlabelled frames "
        f"reach (false-alarm budget {config.max_fpr:g}, pothole share {config.pothole_share:g}); chosen by "
        "pt-calibrate"
    )
    new_meta = meta | {"threshold": threshold, "threshold_method": method, "calibration": record}
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata.rewrite(model, out, new_meta)
    metadata.read(out)  # the written model must read back as a valid one
    report = {"model": str(model), "out": str(out), "threshold": threshold, "config": asdict(config)} | record
    report["skipped_files"] = [{"path": p, "reason": r} for p, r in skipped]
    stem = out.with_name(out.name.removesuffix(".onnx"))
    write_json(stem.with_name(stem.name + ".calibration.json"), report)
    _plot(scores, threshold, meta["threshold"], config, stem.with_name(stem.name + ".calibration.png"))
    log.info(
        "threshold %.4f (was %.4f): %d of %d frames reach it (%.2f%%; budget %g plus pothole share %g)",
        threshold,
        meta["threshold"],
        int(round(basis["flagged_share"] * basis["frames"])),
        basis["frames"],
        100 * basis["flagged_share"],
        config.max_fpr,
        config.pothole_share,
    )
    log.info("Results saved to %s (and %s.calibration.json, .png)", out, stem)
    return report


def _plot(scores: np.ndarray, threshold: float, before: float, config: CalibrateConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pothole_edge.fileio import atomic_write

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(scores, bins=np.linspace(0, 1, 51), color="#4477aa")
    ax.axvline(threshold, color="red", label=f"calibrated {threshold:.3f}")
    ax.axvline(before, color="grey", linestyle="dashed", label=f"before {before:.3f}")
    ax.set(xlabel="frame probability", ylabel="frames", yscale="log")
    ax.set_title(f"{len(scores)} frames, false-alarm budget {config.max_fpr:g}")
    ax.legend()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
