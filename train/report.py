"""Write metrics.json, predictions.csv and the metric plots for one labelled set of frame predictions."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pothole_edge import csvcells
from pothole_edge.fileio import write_json, write_text
from pothole_edge.train import metrics, plots
from pothole_edge.view import boxes_overlap


def box_hits(hottest: np.ndarray, labels: np.ndarray, boxes: Sequence[tuple | None]) -> dict[str, Any] | None:
    """How often the tile that decided a pothole frame overlaps one of its true pothole boxes."""
    hits = [any(boxes_overlap(h, b) for b in bs) for h, y, bs in zip(hottest, labels, boxes) if y == 1 and bs]
    if not hits:
        return None
    return {
        "rate": float(np.mean(hits)),
        "frames": len(hits),
        "meaning": "pothole frames with boxes whose hottest tile overlaps a true box",
    }


def write_report(
    out: Path,
    paths: Sequence[str],
    labels: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    class_names: Sequence[str],
    hottest: np.ndarray | None = None,
    boxes: Sequence[tuple | None] | None = None,
    subsets: dict[str, np.ndarray] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compute the metrics at `threshold` (overall and per subset), and write them with plots and per-frame
    predictions."""
    labels, probs = np.asarray(labels).astype(int), np.asarray(probs, dtype=float)
    result = metrics.binary_metrics(labels, probs, threshold, class_names)
    if hottest is not None and boxes is not None:
        result["hottest_tile_hits_box"] = box_hits(hottest, labels, boxes)
    if subsets and len(subsets) > 1:
        result["by_source"] = {}
        for name, mask in subsets.items():
            sub = metrics.binary_metrics(labels[mask], probs[mask], threshold, class_names)
            if hottest is not None and boxes is not None:
                sub["hottest_tile_hits_box"] = box_hits(
                    hottest[mask], labels[mask], [b for b, m in zip(boxes, mask) if m]
                )
            result["by_source"][name] = sub
    result |= extra or {}
    buf = io.StringIO()
    writer = csvcells.writer(buf)
    writer.writerow(["path", "label", "probability", "prediction", "tile_x0", "tile_y0", "tile_x1", "tile_y1"])
    for i, (p, y, prob) in enumerate(zip(paths, labels, probs)):
        tile = [f"{v:.1f}" for v in hottest[i]] if hottest is not None else ["", "", "", ""]
        writer.writerow([p, class_names[y], f"{prob:.6f}", class_names[int(prob >= threshold)], *tile])
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
    keys = (*metrics.HEADLINE, "false_positives_per_1000_negatives")
    rows = [f"{k:<34} {m[k]:.4f}" if isinstance(m.get(k), float) else f"{k:<34} n/a" for k in keys if k in m]
    (tn, fp), (fn, tp) = m["confusion_matrix"]
    rows.append(f"{'confusion':<34} tn={tn} fp={fp} fn={fn} tp={tp} (threshold {m['threshold']:.3f}, n={m['n']})")
    if m.get("hottest_tile_hits_box"):
        h = m["hottest_tile_hits_box"]
        rows.append(f"{'hottest tile on a true box':<34} {h['rate']:.4f} of {h['frames']} pothole frames with boxes")
    for k, why in m.get("undefined", {}).items():
        rows.append(f"{k:<34} absent: {why}")
    for name, sub in m.get("by_source", {}).items():
        auc = f"{sub['roc_auc']:.4f}" if sub.get("roc_auc") is not None else "n/a"
        rows.append(
            f"  {name}: n={sub['n']} accuracy {sub['accuracy']:.4f} ROC-AUC {auc} false positives "
            f"{sub['confusion_matrix'][0][1]}"
        )
    return "\n".join(rows)
