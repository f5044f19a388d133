"""The model's description of itself: one JSON value with a schema version.

It travels inside the checkpoint (`spec`) and the ONNX metadata, and every consumer (pt-eval, the
parity gate, edge-run, pt-bench) reads it through `validate`, which checks every field, so a model
that lies about itself is refused before anything is written.

    schema_version   4 (3 and 2 are read too, 1 as one centre tile: the view before tiles existed; 3 added
                     the top2 pool, which a reader of 2 would misread; 4 added global_pool, which a reader of
                     3 would rebuild wrongly from a checkpoint)
    class_names      [negative, positive]
    positive_index   index of the positive class in class_names and in the model's output
    threshold        the decision threshold on the frame probability, in [0, 1]
    threshold_method how it was chosen
    preprocess       crop (model input side), resize (tile side before the centre crop),
                     interpolation, mean, std (applied inside the ONNX graph)
    view             region (fractional x0, y0, x1, y1 of the frame), grids ([[cols, rows], ...]),
                     overlap (between neighbouring tiles), pool (how tile scores make a frame's:
                     max, or top2, the mean of the two hottest)
    arch             the network
    global_pool      how the network pools its last feature map into one vector: avg (the ImageNet
                     networks' own), max, or avgmax (their mean), as timm's global_pool; only a checkpoint's
                     reader needs it, since the ONNX graph holds the pooling
"""

from __future__ import annotations

import math
from typing import Any

from pothole_edge.errors import UsageError

SCHEMA_VERSION = 4
INTERPOLATIONS = ("bilinear", "bicubic")
POOLS = ("max", "top2")
GLOBAL_POOLS = ("avg", "max", "avgmax")
MAX_GRID = 16
WHOLE_FRAME = (0.0, 0.0, 1.0, 1.0)


class SpecError(UsageError):
    """The model's description is missing, malformed, or from a newer version."""


def preprocess(crop: int, resize: int, interpolation: str, mean: list[float], std: list[float]) -> dict[str, Any]:
    return {
        "crop": int(crop),
        "resize": int(resize),
        "interpolation": interpolation,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
    }


def view(
    region: tuple[float, ...] | list[float] = WHOLE_FRAME,
    grids: list | tuple = ((1, 1),),
    overlap: float = 0.0,
    pool: str = "max",
) -> dict[str, Any]:
    return {
        "region": [float(v) for v in region],
        "grids": [[int(c), int(r)] for c, r in grids],
        "overlap": float(overlap),
        "pool": pool,
    }


def describe(
    class_names: list[str] | tuple[str, ...],
    positive_index: int,
    threshold: float,
    threshold_method: str,
    prep: dict[str, Any],
    view_spec: dict[str, Any],
    arch: str,
    global_pool: str = "avg",
) -> dict[str, Any]:
    spec = {
        "schema_version": SCHEMA_VERSION,
        "class_names": list(class_names),
        "positive_index": int(positive_index),
        "threshold": float(threshold),
        "threshold_method": threshold_method,
        "preprocess": prep,
        "view": view_spec,
        "arch": arch,
        "global_pool": global_pool,
    }
    return validate(spec, "the new model")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fail(source: str, what: str) -> SpecError:
    return SpecError(f"{source} has invalid pothole-edge metadata: {what}; export it again with pt-export")


def _upgrade(spec: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 had no view: the model saw one centre crop of the whole frame. Schema 2 knew max pooling alone;
    before 4 every network average-pooled its feature map."""
    spec = dict(spec)
    spec.setdefault("global_pool", "avg")
    spec.setdefault("view", view())
    spec.setdefault("threshold_method", "unknown (schema 1)")
    spec.setdefault("arch", "unknown")
    if isinstance(spec.get("preprocess"), dict):
        spec["preprocess"] = {k: spec["preprocess"].get(k) for k in ("crop", "resize", "interpolation", "mean", "std")}
    spec["schema_version"] = SCHEMA_VERSION
    return spec


def validate(spec: Any, source: str) -> dict[str, Any]:
    """Check every field and return the spec at the current schema; SpecError names the first bad one."""
    if not isinstance(spec, dict):
        raise _fail(source, "it is not a JSON object")
    version = spec.get("schema_version")
    if not _int(version) or version < 1:
        raise _fail(source, f"schema_version {version!r} is not a positive integer")
    if version > SCHEMA_VERSION:
        raise SpecError(
            f"{source} has metadata schema {version}, newer than this version reads ({SCHEMA_VERSION}); upgrade "
            "pothole-edge"
        )
    if version < SCHEMA_VERSION:
        spec = _upgrade(spec)
    names = spec.get("class_names")
    if (
        not isinstance(names, list)
        or len(names) != 2
        or not all(isinstance(n, str) and n for n in names)
        or names[0] == names[1]
    ):
        raise _fail(source, f"class_names {names!r} must be a list of two different names")
    pos = spec.get("positive_index")
    if not _int(pos) or pos not in (0, 1):
        raise _fail(source, f"positive_index {pos!r} must be 0 or 1")
    threshold = spec.get("threshold")
    if not _number(threshold) or not 0 <= threshold <= 1:
        raise _fail(source, f"threshold {threshold!r} must be a number in [0, 1]")
    if not isinstance(spec.get("threshold_method"), str):
        raise _fail(source, "threshold_method must be a string")
    if not isinstance(spec.get("arch"), str):
        raise _fail(source, "arch must be a string")
    if spec.get("global_pool") not in GLOBAL_POOLS:
        raise _fail(source, f"global_pool {spec.get('global_pool')!r} must be one of {', '.join(GLOBAL_POOLS)}")
    _check_preprocess(spec.get("preprocess"), source)
    _check_view(spec.get("view"), source)
    return spec


def _check_preprocess(p: Any, source: str) -> None:
    if not isinstance(p, dict):
        raise _fail(source, "preprocess is missing")
    crop, resize = p.get("crop"), p.get("resize")
    if not _int(crop) or not 16 <= crop <= 4096:
        raise _fail(source, f"preprocess.crop {crop!r} must be an integer from 16 to 4096")
    if not _int(resize) or not crop <= resize <= 8192:
        raise _fail(source, f"preprocess.resize {resize!r} must be an integer no smaller than crop ({crop})")
    if p.get("interpolation") not in INTERPOLATIONS:
        raise _fail(
            source, f"preprocess.interpolation {p.get('interpolation')!r} must be one of {', '.join(INTERPOLATIONS)}"
        )
    for key in ("mean", "std"):
        v = p.get(key)
        if not isinstance(v, list) or len(v) != 3 or not all(_number(x) for x in v) or (key == "std" and min(v) <= 0):
            raise _fail(
                source,
                f"preprocess.{key} {v!r} must be three finite numbers" + (", all positive" if key == "std" else ""),
            )


def _check_view(v: Any, source: str) -> None:
    if not isinstance(v, dict):
        raise _fail(source, "view is missing")
    check_region(v.get("region"), lambda what: _fail(source, f"view.region: {what}"))
    grids = v.get("grids")
    if (
        not isinstance(grids, list)
        or not grids
        or not all(
            isinstance(g, list) and len(g) == 2 and all(_int(n) and 1 <= n <= MAX_GRID for n in g) for g in grids
        )
    ):
        raise _fail(source, f"view.grids {grids!r} must be a list of [cols, rows] pairs from 1 to {MAX_GRID}")
    overlap = v.get("overlap")
    if not _number(overlap) or not 0 <= overlap < 0.9:
        raise _fail(source, f"view.overlap {overlap!r} must be in [0, 0.9)")
    if v.get("pool") not in POOLS:
        raise _fail(source, f"view.pool {v.get('pool')!r} must be one of {', '.join(POOLS)}")


def check_region(region: Any, fail: Any = None) -> tuple[float, float, float, float]:
    """A fractional box x0, y0, x1, y1 with 0 <= x0 < x1 <= 1 and the same for y, at least 5% each way."""
    fail = fail or (
        lambda what: UsageError(f"--roi {what}; give x0,y0,x1,y1 as fractions of the frame, e.g. 0,0.4,1,1")
    )
    if not isinstance(region, (list, tuple)) or len(region) != 4 or not all(_number(x) for x in region):
        raise fail(f"{region!r} is not four numbers")
    x0, y0, x1, y1 = (float(x) for x in region)
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1) or x1 - x0 < 0.05 or y1 - y0 < 0.05:
        raise fail(
            f"{','.join(f'{x:g}' for x in region)} must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, at least "
            "0.05 wide and high"
        )
    return x0, y0, x1, y1
