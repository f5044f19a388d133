"""`cross_validate()`: pt-train --cv K, the way a model meets the next city.

Whole groups (`--group-column`, e.g. the road) are dealt into K seeded, balanced folds; each fold
is held out once by an ordinary run of the same recipe (`fold-K/`, resumable like any run), whose
threshold comes from its own validation groups. `cv.json` and `cv.png` then say, per fold and as
mean, spread and worst fold, what the model does on groups it never saw. The calibration rows
replay `pt-calibrate` on each held-out group: the first half of its frames in file-name order
(drive order, for a survey's numbered frames), mixed with a few per cent of its potholes and
without labels, sets the threshold; the second half measures the false alarms it gives.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pothole_edge import calibration, csvcells
from pothole_edge.errors import UsageError
from pothole_edge.fileio import ensure_writable_dir, write_json
from pothole_edge.train import data, plots
from pothole_edge.train.config import TrainConfig, load_json, to_dict
from pothole_edge.train.distill import check_teachers, fold_teachers
from pothole_edge.train.layout import fold_dir
from pothole_edge.train.metrics import binary_metrics, roc_curve
from pothole_edge.train.models import check_imagenet
from pothole_edge.train.run import DEMO, check_new, resolve, split, train

log = logging.getLogger("pt-train")
CALIBRATION_MIX = 0.03  # the pothole share of the unlabelled calibration frames in the replay


def _finished(run: Path) -> bool:
    return (run / "model.pt").is_file() and (run / "metrics.json").is_file()


def _start(config: TrainConfig) -> tuple[TrainConfig, Path]:
    config = resolve(config)
    out = Path(config.out)
    check_new(out)
    if (out / "config.json").exists():
        raise UsageError(f"{out} already holds a run; continue it with --resume {out}, or pass another --out")
    if config.data != (DEMO,):  # every fold must be able to train before the first one starts
        level = log.level
        log.setLevel(logging.ERROR)  # each fold says what its data holds when it starts; once is enough
        try:
            for k in range(1, config.cv + 1):
                folder = split(replace(config, cv_fold=k), list(config.data))
                check_teachers(fold_teachers(config.teacher, k), folder)
        finally:
            log.setLevel(level)
    if config.weights == "imagenet":
        check_imagenet(config.arch)
    ensure_writable_dir(out, "run directory")
    if config.data == (DEMO,):
        from pothole_edge.train.demo import make_dataset

        root = out / "demo-data"
        log.info("generating the demo dataset in %s: synthetic road images, not real photos", root)
        make_dataset(str(root), config.demo_per_class, config.data_seed)
        config = replace(config, data=(str(root),))
    write_json(out / "config.json", to_dict(config))
    return config, out


def cross_validate(config: TrainConfig | None, resume: str | None = None) -> dict[str, Any]:
    """Train and test one run per fold (skipping finished ones), then write cv.json and cv.png."""
    started = time.time()
    if resume:
        out = Path(resume)
        config = load_json(TrainConfig, out / "config.json")
        config.check()
    else:
        assert config is not None
        config, out = _start(config)
    for k in range(1, config.cv + 1):
        run = fold_dir(out, k)
        if _finished(run):
            continue
        log.info("fold %d of %d: holding out its %s groups, in %s", k, config.cv, config.group_column, run)
        if (run / "config.json").is_file():
            train(None, resume=str(run), within=out)
        else:
            train(replace(config, cv_fold=k, out=str(run)), within=out)
    if int(os.environ.get("RANK", "0")) != 0:
        return {}
    result = summarize(out, config, time.time() - started)
    write_json(out / "cv.json", result)
    plots.cv_folds(result, out / "cv.png")
    log.info("%s", table(result))
    log.info("Results saved to %s (cv.json, cv.png, fold-1 ... fold-%d)", out, config.cv)
    return result


def _held_out(run: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """The run's source names and its test frames: source, group, file name, label and probability."""
    summary = json.loads((run / "data.json").read_text(encoding="utf-8"))
    names = tuple(summary["class_names"])
    roots = [Path(r) for r in summary["roots"]]
    sources = data.source_names(roots)
    where = {str(roots[s.root] / s.path): s for s in data.read_manifest(run / "split.csv", names)}
    frames = []
    with open(run / "predictions.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        for row in csv.DictReader(f):
            s = where[csvcells.unescape(row["path"])]
            frames.append(
                {
                    "source": sources[s.root],
                    "group": s.group,
                    "name": Path(s.path).name,
                    "label": s.label,
                    "prob": float(row["probability"]),
                }
            )
    return sources, frames


def _rate_at_budget(labels: np.ndarray, probs: np.ndarray, budget: float) -> float | None:
    """Sensitivity at the held-out set's own threshold for `budget` false alarms: the best this
    ranking could do there, had the threshold been known."""
    if len(set(labels.tolist())) < 2:
        return None
    fpr, tpr, _ = roc_curve(labels, probs)
    return float(tpr[fpr <= budget + 1e-12].max())


def _at(threshold: float, labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    neg, pos = probs[labels == 0], probs[labels == 1]
    return {
        "threshold": threshold,
        "false_alarm_rate": float((neg >= threshold).mean()) if neg.size else None,
        "sensitivity": float((pos >= threshold).mean()) if pos.size else None,
    }


def _calibrated(frames: list[dict[str, Any]], val_threshold: float, budget: float, seed: int) -> dict[str, Any]:
    """pt-calibrate replayed on one held-out group: the first half calibrates, the second half measures
    the validation threshold and the calibrated ones, with the pothole share unknown (0) and known."""
    ordered = sorted(frames, key=lambda r: r["name"])
    first, second = ordered[: len(ordered) // 2], ordered[len(ordered) // 2 :]
    normals = [r["prob"] for r in first if r["label"] == 0]
    potholes = [r["prob"] for r in first if r["label"] == 1]
    rng = random.Random(f"{seed}:calibrate:{frames[0]['group']}")
    mixed = rng.sample(potholes, min(len(potholes), round(CALIBRATION_MIX / (1 - CALIBRATION_MIX) * len(normals))))
    scores = np.array(normals + mixed)
    out: dict[str, Any] = {"calibration_frames": len(scores), "calibration_potholes": len(mixed)}
    try:
        unknown, _ = calibration.threshold_for_budget(scores, budget)
        known, _ = calibration.threshold_for_budget(scores, budget, len(mixed) / len(scores))
    except UsageError as e:
        return out | {"skipped": str(e)}
    labels = np.array([r["label"] for r in second])
    probs = np.array([r["prob"] for r in second])
    return out | {
        "measured_negatives": int((labels == 0).sum()),
        "measured_positives": int(labels.sum()),
        "val_threshold": _at(val_threshold, labels, probs),
        "calibrated": _at(unknown, labels, probs),
        "calibrated_known_share": _at(known, labels, probs),
    }


def _source_report(frames: list[dict[str, Any]], threshold: float, config: TrainConfig) -> dict[str, Any]:
    labels = np.array([r["label"] for r in frames])
    probs = np.array([r["prob"] for r in frames])
    m = binary_metrics(labels, probs, threshold, ("normal", "pothole"))
    report = {
        "n": m["n"],
        "positives": int(labels.sum()),
        "negatives": int((labels == 0).sum()),
        "groups": sorted({r["group"] for r in frames if r["group"]}),
        "roc_auc": m["roc_auc"],
        "average_precision": m["average_precision"],
        "accuracy": m["accuracy"],
        "sensitivity": m["sensitivity"],
        "false_alarm_rate": m["false_positive_rate"],
        "sensitivity_at_budget": _rate_at_budget(labels, probs, config.max_fpr),
    }
    groups = {
        g: _calibrated([r for r in frames if r["group"] == g], threshold, config.max_fpr, config.data_seed)
        for g in report["groups"]
    }
    if groups:
        report["calibration_replay"] = groups
    return report


def _spread(values: list[float | None]) -> dict[str, float] | None:
    v = np.array([x for x in values if x is not None], dtype=float)
    if not v.size:
        return None
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "folds": int(v.size),
    }


REPLAYED = ("val_threshold", "calibrated", "calibrated_known_share")  # thresholds the replay measures
SUMMARISED = ("roc_auc", "average_precision", "accuracy", "sensitivity", "false_alarm_rate", "sensitivity_at_budget")


def summarize(out: Path, config: TrainConfig, seconds: float) -> dict[str, Any]:
    folds, pooled = [], {}
    for k in range(1, config.cv + 1):
        run = fold_dir(out, k)
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        run_summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        sources, frames = _held_out(run)
        fold = {
            "fold": k,
            "threshold": metrics["threshold"],
            "threshold_method": metrics.get("threshold_method"),
            "best_epoch": run_summary.get("best_epoch"),
            "epochs_run": run_summary.get("epochs_run"),
            "wall_seconds": run_summary.get("wall_seconds"),
            "sources": {},
        }
        for name in sources:
            mine = [r for r in frames if r["source"] == name]
            if mine:
                fold["sources"][name] = _source_report(mine, metrics["threshold"], config)
                pooled.setdefault(name, []).extend(mine)
        folds.append(fold)
    summary: dict[str, Any] = {}
    for name in pooled:
        rows = [f["sources"][name] for f in folds if name in f["sources"]]
        summary[name] = {key: _spread([r[key] for r in rows]) for key in SUMMARISED}
        replays = [c for r in rows for c in r.get("calibration_replay", {}).values() if "calibrated" in c]
        for how in REPLAYED:
            for key in ("false_alarm_rate", "sensitivity"):
                summary[name][f"{how}_{key}"] = _spread([c[how][key] for c in replays])
        labels = np.array([r["label"] for r in pooled[name]])
        probs = np.array([r["prob"] for r in pooled[name]])
        m = binary_metrics(labels, probs, 0.5, ("normal", "pothole"))
        summary[name]["pooled_roc_auc"] = m["roc_auc"]
    return {
        "schema_version": 1,
        "folds": config.cv,
        "group_column": config.group_column,
        "seed": config.seed,
        "split_seed": config.data_seed,
        "max_fpr": config.max_fpr,
        "calibration_mix": CALIBRATION_MIX,
        "wall_seconds": round(seconds, 1),
        "train_wall_seconds": round(sum(f["wall_seconds"] or 0 for f in folds), 1),
        "config": to_dict(config),
        "summary": summary,
        "per_fold": folds,
    }


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def table(result: dict[str, Any]) -> str:
    lines = []
    for name, s in result["summary"].items():
        lines.append(f"{name}: {result['folds']} folds held out by {result['group_column']}")
        for key in (*SUMMARISED, *(f"{how}_false_alarm_rate" for how in REPLAYED)):
            v = s.get(key)
            if v:
                lines.append(
                    f"  {key:<30} mean {v['mean']:.3f}  std {v['std']:.3f}  min {v['min']:.3f}  max {v['max']:.3f}"
                )
        for f in result["per_fold"]:
            r = f["sources"].get(name)
            if r:
                lines.append(
                    f"  fold {f['fold']} ({', '.join(r['groups']) or 'no groups'}; {r['positives']}+{r['negatives']} "
                    f"frames): ROC-AUC {_fmt(r['roc_auc'])}  AP {_fmt(r['average_precision'])}  at threshold "
                    f"{f['threshold']:.3f}: sensitivity {_fmt(r['sensitivity'])}, false alarms "
                    f"{_fmt(r['false_alarm_rate'])}"
                )
    return "\n".join(lines)
