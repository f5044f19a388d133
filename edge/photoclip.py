"""A dashcam-like clip made from labelled photos, with the label of every frame, and its scoring.

Each photo becomes a short segment: the largest centre crop of the clip's aspect ratio, zooming in
slowly as if the car drives on. Its frames keep what the model sees close to what it sees on the
photo itself, so edge-run's frame labels can be compared with the model's labels on the photos.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pothole_edge import csvcells
from pothole_edge.edge.sources import IMAGE_SUFFIXES
from pothole_edge.errors import UsageError
from pothole_edge.fileio import encodable, write_text
from pothole_edge.images import ImageDecodeError, read_rgb

log = logging.getLogger("edge")


def _rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            # split.csv and labels.csv are ours: their cells were escaped against spreadsheets
            return [{k: csvcells.unescape(v) for k, v in r.items()} for r in csv.DictReader(f)]
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None


def labelled_photos(
    root: str | None,
    manifest: str | None = None,
    subset: str | None = None,
    source: str | None = None,
    label: str | None = None,
) -> list[tuple[Path, str]]:
    """(path, label) from class sub-folders of `root`, or the rows of a pt-train split.csv.

    A manifest's paths are relative to the roots in the data.json beside it (pt-train writes both);
    `root` replaces them when the run had one root and the photos have moved. `source` keeps the
    rows of the root folder of that name, `label` those of one class.
    """
    photos = _labelled(root, manifest, subset, source)
    photos = [(p, lab) for p, lab in photos if label is None or lab == label]
    if not photos:
        raise UsageError("no photos match; check --images, --manifest, --subset, --source and --label")
    return photos


def _labelled(root: str | None, manifest: str | None, subset: str | None, source: str | None) -> list[tuple[Path, str]]:
    if manifest:
        summary = Path(manifest).with_name("data.json")
        roots = [Path(r) for r in json.loads(summary.read_text(encoding="utf-8"))["roots"]] if summary.is_file() else []
        if root and len(roots) <= 1:
            roots = [Path(root)]
        if not roots:
            raise UsageError(f"no data.json beside {manifest}; pass --images with the folder its paths are relative to")
        rows = [r for r in _rows(Path(manifest)) if subset is None or r["split"] == subset]
        paths = [(roots[int(r.get("root") or 0)], r) for r in rows]
        return [(base / r["path"], r["label"]) for base, r in paths if source is None or base.name == source]
    base = Path(root or "")
    if not root or not base.is_dir():
        raise UsageError(f"{root} is not a folder; pass --images with a folder of class sub-folders")
    return [
        (p, d.name)
        for d in sorted(base.iterdir())
        if d.is_dir()
        for p in sorted(d.iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]


def _frame(image: np.ndarray, scale: float, width: int, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    aspect = width / height
    cw, ch = (w, w / aspect) if w / h < aspect else (h * aspect, h)
    cw, ch = int(cw / scale), int(ch / scale)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = image[top : top + ch, left : left + cw]
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA if cw > width else cv2.INTER_LINEAR)


def parse_size(text: str) -> tuple[int, int]:
    """ "448" (a square) or "1280x720"."""
    try:
        parts = [int(v) for v in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not all(16 <= v <= 8192 for v in parts):
        raise UsageError(f"--size {text!r} must be a side like 448 or WIDTHxHEIGHT like 1280x720 (16 to 8192 pixels)")
    return parts[0], parts[1]


def render(
    photos: list[tuple[Path, str]],
    out: str,
    frames_per_photo: int = 8,
    size: tuple[int, int] = (448, 448),
    fps: float = 15.0,
    zoom: float = 0.08,
    seed: int = 0,
) -> Path:
    """Write `out` (MP4) and `out`.labels.csv (frame, label, file); photos are shuffled with `seed`."""
    order = np.random.default_rng(seed).permutation(len(photos))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    # OpenCV crashes on paths it cannot encode: write under a plain name, then move it
    plain = encodable(str(path.parent))
    tmp = path.with_name(".clip-writing.mp4") if plain else Path(tempfile.mkdtemp(prefix="edge-clip-")) / "clip.mp4"
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise UsageError(f"cannot write video {out}; pass an .mp4 path in a writable folder")
    rows, frame = [], 0
    try:
        for i in order:
            file, label = photos[i]
            try:
                image = cv2.cvtColor(read_rgb(file), cv2.COLOR_RGB2BGR)
            except ImageDecodeError as e:
                log.warning("skipping %s: %s", file, e)
                continue
            for k in range(frames_per_photo):
                writer.write(_frame(image, 1 + zoom * k / max(frames_per_photo - 1, 1), *size))
                rows.append((frame, label, str(file)))
                frame += 1
    finally:
        writer.release()
    if not rows:
        tmp.unlink(missing_ok=True)
        raise UsageError("no readable photos to make a clip from")
    shutil.move(str(tmp), path)
    if not plain:
        tmp.parent.rmdir()
    buf = io.StringIO()
    writer_csv = csvcells.writer(buf)
    writer_csv.writerow(["frame", "label", "file"])
    writer_csv.writerows(rows)
    write_text(labels_path(path), buf.getvalue())
    return path


def labels_path(clip: Path) -> Path:
    return clip.with_name(clip.name + ".labels.csv")


def score(run_dir: str, labels_csv: str) -> dict[str, Any]:
    """How often edge-run's raw frame label matches the photo's label, overall and per photo (majority)."""
    truth = {int(r["frame"]): (r["label"], r["file"]) for r in _rows(Path(labels_csv))}
    predictions = Path(run_dir) / "predictions.jsonl"
    try:
        with open(predictions, encoding="utf-8") as f:
            frames = [json.loads(line) for line in f if line.strip()]
    except OSError as e:
        raise UsageError(f"cannot read {predictions}: {e.strerror or e}; pass an edge-run output directory") from None
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
