"""Binary classification metrics in numpy, so every stage (and the edge) computes them the same way."""

from __future__ import annotations

from typing import Any

import numpy as np

THRESHOLD_METHOD = "Youden's J (sensitivity + specificity - 1) maximised on the validation split; ties go to the value nearest 0.5"


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b else None


def confusion(labels: np.ndarray, preds: np.ndarray) -> list[list[int]]:
    """[[tn, fp], [fn, tp]]"""
    labels, preds = np.asarray(labels).astype(bool), np.asarray(preds).astype(bool)
    return [[int(np.sum(~labels & ~preds)), int(np.sum(~labels & preds))], [int(np.sum(labels & ~preds)), int(np.sum(labels & preds))]]


def _curve_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct score, highest first."""
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order].astype(float)
    last_of_tie = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
    tps = np.cumsum(labels)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return tps, fps, scores[last_of_tie]


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), starting at (0, 0) like scikit-learn."""
    tps, fps, thr = _curve_points(np.asarray(labels), np.asarray(scores, dtype=float))
    tps, fps, thr = np.r_[0, tps], np.r_[0, fps], np.r_[np.inf, thr]
    return fps / max(fps[-1], 1), tps / max(tps[-1], 1), thr


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def pr_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) in order of decreasing threshold, ending at recall 0."""
    tps, fps, thr = _curve_points(np.asarray(labels), np.asarray(scores, dtype=float))
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return np.r_[precision, 1.0], np.r_[recall, 0.0], thr


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Sum over thresholds of (R_n - R_{n-1}) * P_n: no interpolation, as scikit-learn."""
    tps, fps, _ = _curve_points(np.asarray(labels), np.asarray(scores, dtype=float))
    precision, recall = tps / (tps + fps), tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def threshold_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, Any]:
    labels = np.asarray(labels).astype(int)
    preds = np.asarray(probs) >= threshold
    (tn, fp), (fn, tp) = confusion(labels, preds)
    precision, sensitivity = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn) if (tp + fn) else None
    return {
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, labels.size),
        "specificity": _ratio(tn, tn + fp),
        "sensitivity": sensitivity,
        "precision": precision,
        "f1": f1,
        "false_positive_rate": _ratio(fp, tn + fp),
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def binary_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float, class_names: list[str] | tuple[str, str]) -> dict[str, Any]:
    """The metrics.json body. AP and AUC need both classes; when one is absent they are None with a reason."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=float)
    result: dict[str, Any] = {"n": int(labels.size), "class_names": list(class_names)}
    result |= threshold_metrics(labels, probs, threshold)
    present = set(np.unique(labels).tolist())
    if present == {0, 1}:
        result["average_precision"] = average_precision(labels, probs)
        result["roc_auc"] = roc_auc(labels, probs)
    else:
        only = class_names[next(iter(present))] if present else "none"
        result["average_precision"] = result["roc_auc"] = None
        result["undefined"] = {
            "average_precision": f"only '{only}' images: AP needs positive examples" if 1 not in present else "no negative examples: every ranking has precision 1",
            "roc_auc": f"only '{only}' images: ROC-AUC needs both classes",
        }
    if 1 not in present:
        del result["f1"]
    result["at_0.5"] = threshold_metrics(labels, probs, 0.5)
    return result


def choose_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """The threshold that maximises Youden's J on (validation) labels; 0.5 when that is undecided."""
    labels, probs = np.asarray(labels).astype(int), np.asarray(probs, dtype=float)
    if len(set(labels.tolist())) < 2:
        return 0.5
    values = np.unique(probs)
    # midpoints between consecutive scores, plus 0.5, are the distinct decision rules
    candidates = np.unique(np.r_[(values[:-1] + values[1:]) / 2, 0.5, values[0] / 2, (values[-1] + 1) / 2])
    pos, neg = labels == 1, labels == 0
    tpr = np.array([(probs[pos] >= t).mean() for t in candidates])
    tnr = np.array([(probs[neg] < t).mean() for t in candidates])
    j = tpr + tnr - 1
    best = np.flatnonzero(np.isclose(j, j.max()))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])
