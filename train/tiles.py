"""What the tile classifier trains on: one or two tiles per frame per epoch, each with a label.

A frame's label says only that some tile holds a pothole (positive) or none does (negative).
  - A positive frame with boxes (boxes.csv) gives a tile around one of its boxes (positive), and a
    tile that touches no box (negative): a surveyed road is mostly not pothole.
  - A positive frame without boxes is multiple-instance learning: its tile that the model scored
    highest in the last scoring pass is the positive half the time, the whole-frame tile the other half.
  - A negative frame gives, half the time, its hardest tile of the last scoring pass (the cracks or
    patch the model confused with a pothole), else a random tile at any level of the view.
Every footprint is drawn at the scale of a random level of the view, jittered, and cut by the same
`pothole_edge.preprocess.cut` the edge uses. Draws are seeded per (seed, epoch, frame), so a resumed
run sees exactly what an uninterrupted one would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from pothole_edge import view as views
from pothole_edge.train.data import Box, Sample

Footprint = tuple[float, float, float]  # x, y, side in frame pixels
SCALE_JITTER = (0.8, 1.25)


@dataclass(frozen=True)
class Draw:
    """One training tile to cut: which frame, how to choose the footprint, and its label."""

    index: int  # into the training samples
    mode: str  # box, clear, mil, hard, random, whole, frame, paste
    label: int
    seed: int
    hint: Footprint | None = None  # the scoring pass's tile for mil and hard (and paste: its host tile)
    donor: int = -1  # paste: the training sample whose boxed pothole is pasted (train.paste)


def plan_epoch(
    samples: list[Sample],
    epoch: int,
    seed: int,
    labels: str,
    whole_only: bool,
    hottest: dict[int, Footprint],
    with_frame: bool = True,
    paste: float = 0.0,
    group_balance: bool = False,
) -> list[Draw]:
    """This epoch's draws, shuffled. With `paste`, that share of negative frames also gives a tile with a
    pothole from a boxed frame pasted in (positive): their hard tile half the time, else a random one. With
    `group_balance`, the frames come from `balanced_frames`, else each frame once."""
    rng = random.Random(f"{seed}:{epoch}")
    donors = [i for i, s in enumerate(samples) if s.label == 1 and s.boxes] if paste else []
    order = balanced_frames(samples, epoch, seed) if group_balance else range(len(samples))
    draws = []
    for i in order:
        s = samples[i]
        k = rng.randrange(1 << 30)
        if whole_only:
            draws.append(Draw(i, "whole", s.label, k))
            continue
        if with_frame and rng.random() < 0.5:  # the whole-frame tile learns the frame's own label
            draws.append(Draw(i, "frame", s.label, k + 2))
        if s.label == 1 and s.boxes and labels == "boxes":
            draws += [Draw(i, "box", 1, k), Draw(i, "clear", 0, k + 1)]
        elif s.label == 1:  # half the time the whole frame, so the bag's widest instance keeps its label too
            draws.append(Draw(i, "mil", 1, k, hottest.get(i) if rng.random() < 0.5 else None))
        else:
            hard = hottest.get(i) if rng.random() < 0.5 else None
            draws.append(Draw(i, "hard" if hard else "random", 0, k, hard))
            if donors and rng.random() < paste:
                host = hottest.get(i) if rng.random() < 0.5 else None
                draws.append(Draw(i, "paste", 1, k + 3, host, rng.choice(donors)))
    rng.shuffle(draws)
    return draws


def balanced_frames(samples: list[Sample], epoch: int, seed: int) -> list[int]:
    """This epoch's frames with each group (road) drawn equally often: the grouped frames' count shared
    equally between their groups, a small group's frames repeated and a large one's subsampled, so one long
    road does not teach the look of its pavement for all. Frames without a group (web photos) come once each."""
    rng = random.Random(f"{seed}:groups:{epoch}")
    groups: dict[str, list[int]] = {}
    order = []
    for i, s in enumerate(samples):
        if s.group:
            groups.setdefault(s.group, []).append(i)
        else:
            order.append(i)
    if not groups:
        return order
    share = sum(len(v) for v in groups.values()) / len(groups)
    for name in sorted(groups):
        members = groups[name]
        whole, rest = divmod(round(share), len(members))
        order += members * whole + sorted(rng.sample(members, rest))
    return order


def _level_sides(spec_view: dict[str, Any], w: int, h: int) -> list[float]:
    left, top, right, bottom = views.region_px(spec_view, w, h)
    return [views.level_side(c, r, spec_view["overlap"], right - left, bottom - top) for c, r in spec_view["grids"]]


def _inside(fp: Footprint, w: int, h: int) -> Footprint:
    x, y, side = fp
    side = min(side, w, h)
    return min(max(0.0, x), w - side), min(max(0.0, y), h - side), side


def _touches(fp: Footprint, box: Box) -> bool:
    x, y, side = fp
    return views.boxes_overlap((x, y, x + side, y + side), box)


def footprint_of(box: np.ndarray | tuple[float, ...], prep: dict[str, Any]) -> Footprint:
    """The square footprint whose centre crop is `box` (x0, y0, x1, y1), as the scoring pass reports tiles."""
    side = (box[2] - box[0]) * prep["resize"] / prep["crop"]
    margin = (side - (box[2] - box[0])) / 2
    return float(box[0] - margin), float(box[1] - margin), float(side)


def footprint(draw: Draw, sample: Sample, w: int, h: int, spec: dict[str, Any]) -> tuple[Footprint, int]:
    """The draw's square footprint in a w x h frame, and its label (a clear tile may fall back to a box)."""
    rng = random.Random(draw.seed)
    spec_view, prep = spec["view"], spec["preprocess"]
    edge = (1 - prep["crop"] / prep["resize"]) / 2  # the share of each side the centre crop drops
    sides = _level_sides(spec_view, w, h)
    fine = [s for s in sides if s < min(w, h)] or sides

    def random_fp(choices: list[float]) -> Footprint:
        side = min(rng.choice(choices) * rng.uniform(*SCALE_JITTER), w, h)
        return rng.uniform(0, w - side), rng.uniform(0, h - side), side

    if draw.mode in ("whole", "frame"):
        side = min(w, h) * rng.uniform(0.6 if draw.mode == "whole" else 0.8, 1.0)
        if draw.label == 1 and sample.boxes:  # a wide tile labelled pothole must show one
            return _around(rng.choice(sample.boxes), side, edge, w, h, rng), 1
        return (rng.uniform(0, w - side), rng.uniform(0, h - side), side), draw.label
    if draw.mode in ("mil", "hard", "paste") and draw.hint is not None:
        x, y, side = draw.hint
        j = 0.1 * side
        return _inside((x + rng.uniform(-j, j), y + rng.uniform(-j, j), side * rng.uniform(0.9, 1.1)), w, h), draw.label
    if draw.mode == "mil":  # no scores yet: the whole-frame tile
        side = min(w, h)
        return ((w - side) / 2, (h - side) / 2, side), 1
    if draw.mode == "clear":
        for _ in range(20):
            fp = random_fp(fine)
            if not any(_touches(fp, b) for b in sample.boxes or ()):
                return fp, 0
        draw = Draw(draw.index, "box", 1, draw.seed)
    if draw.mode == "box":
        box = rng.choice(sample.boxes)
        big_enough = 1.25 * max(box[2] - box[0], box[3] - box[1]) / (1 - 2 * edge)
        side = min(max(rng.choice(fine) * rng.uniform(*SCALE_JITTER), big_enough), w, h)
        return _around(box, side, edge, w, h, rng), 1
    # a negative frame is negative at every level of the view, the whole frame too; a paste keeps its label
    return random_fp(sides), draw.label


def _around(box: Box, side: float, edge: float, w: int, h: int, rng: random.Random) -> Footprint:
    """A square of this side anywhere that keeps the whole box inside the part of the tile the model sees."""
    x0, y0, x1, y1 = box
    side = min(side, w, h)
    m = edge * side
    lo_x, hi_x = max(0.0, x1 + m - side), min(x0 - m, w - side)
    lo_y, hi_y = max(0.0, y1 + m - side), min(y0 - m, h - side)
    x = rng.uniform(lo_x, hi_x) if hi_x > lo_x else (x0 + x1 - side) / 2
    y = rng.uniform(lo_y, hi_y) if hi_y > lo_y else (y0 + y1 - side) / 2
    return _inside((x, y, side), w, h)


def augment(tile: np.ndarray, seed: int, recipe: str = "basic") -> np.ndarray:
    """Mirror, light and colour, as a camera sees them. No vertical flips: the road is below the sky.

    "road" adds what another road and another camera bring: pavement of another colour, exposure
    and gamma, white balance, focus and motion blur, sensor noise, JPEG artefacts and shadows.
    """
    rng = np.random.default_rng(seed)
    if rng.random() < 0.5:
        tile = tile[:, ::-1]
    if recipe == "road":
        return _road(np.ascontiguousarray(tile), rng)
    x = tile.astype(np.float32)
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.75, 1.25) + mean * rng.uniform(0.75, 1.25)
    x *= rng.uniform(0.92, 1.08, 3).astype(np.float32)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _road(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    import cv2

    if rng.random() < 0.5:  # pavement colour: hue and saturation
        hsv = cv2.cvtColor(tile, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + rng.integers(-6, 7)) % 180
        hsv[..., 1] = cv2.convertScaleAbs(hsv[..., 1], alpha=rng.uniform(0.6, 1.3))
        tile = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.random() < 0.1:
        tile = cv2.cvtColor(cv2.cvtColor(tile, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    # contrast, exposure, white balance and gamma are one map per channel: a lookup table
    v, m = np.arange(256, dtype=np.float32)[:, None] / 255, float(tile.mean()) / 255
    v = (v - m) * rng.uniform(0.7, 1.3) + m * rng.uniform(0.6, 1.4)
    v = np.clip(v * rng.uniform(0.9, 1.1, 3).astype(np.float32), 0, 1) ** rng.uniform(0.7, 1.4)
    tile = cv2.LUT(np.ascontiguousarray(tile), np.round(v * 255).astype(np.uint8)[None])
    if rng.random() < 0.2:  # a shadow across the road: darken one side of a random line
        h, w = tile.shape[:2]
        angle, offset = rng.uniform(0, np.pi), rng.uniform(-0.3, 0.3) * w
        yy, xx = np.ogrid[0:h, 0:w]
        side = (xx - w / 2) * np.cos(angle) + (yy - h / 2) * np.sin(angle) > offset
        tile = np.where(side[..., None], (tile * rng.uniform(0.45, 0.8)).astype(np.uint8), tile)
    if rng.random() < 0.3:
        if rng.random() < 0.5:
            tile = cv2.GaussianBlur(tile, (0, 0), rng.uniform(0.4, 1.4))
        else:  # motion along the road (vertical in the frame) or across it
            k = int(rng.integers(3, 8))
            kernel = np.zeros((k, k), np.float32)
            kernel[:, k // 2] = 1 / k
            tile = cv2.filter2D(tile, -1, kernel if rng.random() < 0.7 else kernel.T)
    if rng.random() < 0.3:
        noise = rng.normal(0, rng.uniform(2, 8), tile.shape).astype(np.float32)
        tile = np.clip(tile + noise + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        ok, buf = cv2.imencode(".jpg", tile, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 91))])
        if ok:
            tile = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return np.ascontiguousarray(tile)
