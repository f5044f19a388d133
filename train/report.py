"""Write metrics.json, predictions.csv and the metric plots for one labelled set of predictions."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from train import metrics, plots
from train.fileio import write_json, write_text


def write_report(out: Path, paths: Sequence[str], labels: np.ndarray, probs: np.ndarray, threshold: float, class_names: Sequence[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compute the metrics at `threshold`, and write them with plots and per-image predictions."""
    labels, probs = np.asarray(labels).astype(int), np.asarray(probs, dtype=float)
    result = metrics.binary_metrics(labels, probs, threshold, class_names) | (extra or {})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "probability", "prediction"])
    for p, y, prob in zip(paths, labels, probs):
        writer.writerow([p, class_names[y], f"{prob:.6f}", class_names[int(prob >= threshold)]])
    write_text(out / "predictions.csv", buf.getvalue())
    plots.confusion_matrix(result["confusion_matrix"], class_names, threshold, out / "confusion_matrix.png")
    if result["roc_auc"] is not None:
        fpr, tpr, _ = metrics.roc_curve(labels, probs)
        plots.roc(fpr, tpr, result["roc_auc"], out / "roc_curve.png")
        precision, recall, _ = metrics.pr_curve(labels, probs)
        plots.pr(precision, recall, result["average_precision"], float(labels.mean()), out / "pr_curve.png")
    write_json(out / "metrics.json", result)
    return result


def format_metrics(m: dict[str, Any]) -> str:
    """A short table for the terminal."""
    keys = ("accuracy", "specificity", "sensitivity", "precision", "f1", "average_precision", "roc_auc")
    rows = [f"{k:<18} {m[k]:.4f}" if isinstance(m.get(k), float) else f"{k:<18} n/a" for k in keys if k in m]
    (tn, fp), (fn, tp) = m["confusion_matrix"]
    rows.append(f"{'confusion':<18} tn={tn} fp={fp} fn={fn} tp={tp} (threshold {m['threshold']:.3f}, n={m['n']})")
    for k, why in m.get("undefined", {}).items():
        rows.append(f"{k:<18} absent: {why}")
    return "\n".join(rows)
