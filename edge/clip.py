"""A dashcam-like clip made from labelled photos, with the label of every frame, and its scoring.

Each photo becomes a short segment: its centre square, zooming in slowly as if the car drives
on. The square keeps what the model sees close to what it sees on the photo itself, so edge-run's
frame labels can be compared with the model's labels on the photos.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.preprocess import read_image
from edge.sources import IMAGE_SUFFIXES
from train.errors import UsageError
from train.fileio import atomic_write


def labelled_photos(root: str, manifest: str | None = None, subset: str | None = None) -> list[tuple[Path, str]]:
    """(path, label) from class sub-folders of `root`, or the rows of a pt-train split.csv."""
    base = Path(root)
    if manifest:
        with open(manifest, newline="") as f:
            rows = [r for r in csv.DictReader(f) if subset is None or r["split"] == subset]
        return [(base / r["path"], r["label"]) for r in rows]
    if not base.is_dir():
        raise UsageError(f"{root} is not a folder; pass --images with a folder of class sub-folders")
    return [(p, d.name) for d in sorted(base.iterdir()) if d.is_dir() for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]


def _square(image: np.ndarray, scale: float, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    side = int(min(h, w) / scale)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top : top + side, left : left + side]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)


def render(photos: list[tuple[Path, str]], out: str, frames_per_photo: int = 8, size: int = 448, fps: float = 15.0, zoom: float = 0.08, seed: int = 0) -> Path:
    """Write `out` (MP4) and `out`.labels.csv (frame, label, file); photos are shuffled with `seed`."""
    order = np.random.default_rng(seed).permutation(len(photos))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    if not writer.isOpened():
        raise UsageError(f"cannot write video {out}; pass an .mp4 path in a writable folder")
    rows, frame = [], 0
    try:
        for i in order:
            file, label = photos[i]
            image = read_image(str(file))
            if image is None:
                continue
            for k in range(frames_per_photo):
                writer.write(_square(image, 1 + zoom * k / max(frames_per_photo - 1, 1), size))
                rows.append((frame, label, str(file)))
                frame += 1
    finally:
        writer.release()
    if not rows:
        raise UsageError("no readable photos to make a clip from")
    text = "frame,label,file\n" + "".join(f"{f},{lab},{name}\n" for f, lab, name in rows)
    atomic_write(labels_path(path), lambda tmp: Path(tmp).write_text(text))
    return path


def labels_path(clip: Path) -> Path:
    return clip.with_name(clip.name + ".labels.csv")


def score(run_dir: str, labels_csv: str) -> dict[str, Any]:
    """How often edge-run's raw frame label matches the photo's label, overall and per photo (majority)."""
    with open(labels_csv, newline="") as f:
        truth = {int(r["frame"]): (r["label"], r["file"]) for r in csv.DictReader(f)}
    with open(Path(run_dir) / "predictions.jsonl") as f:
        frames = [json.loads(line) for line in f]
    hits = [row["label"] == truth[row["frame"]][0] for row in frames if row["frame"] in truth]
    per_photo: dict[str, list[bool]] = {}
    for row, hit in zip((r for r in frames if r["frame"] in truth), hits):
        per_photo.setdefault(truth[row["frame"]][1], []).append(hit)
    photo_hits = [sum(v) * 2 > len(v) for v in per_photo.values()]
    return {
        "frames": len(hits),
        "frame_agreement": float(np.mean(hits)) if hits else None,
        "photos": len(photo_hits),
        "photo_agreement": float(np.mean(photo_hits)) if photo_hits else None,
    }
