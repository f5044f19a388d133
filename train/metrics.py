"""Binary classification metrics: scikit-learn's, with the glue that names them and picks the threshold."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn import metrics as skm

log = logging.getLogger("pt-train")

# the headline figures of a set of predictions, in the order people read them
HEADLINE = ("accuracy", "specificity", "sensitivity", "precision", "f1", "average_precision", "roc_auc")


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b else None


def threshold_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, Any]:
    labels = np.asarray(labels).astype(int)
    preds = (np.asarray(probs) >= threshold).astype(int)
    (tn, fp), (fn, tp) = skm.confusion_matrix(labels, preds, labels=[0, 1]).tolist()
    negatives = tn + fp
    return {
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, labels.size),
        "specificity": _ratio(tn, negatives),
        "sensitivity": _ratio(tp, tp + fn),
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn) if (tp + fn) else None,
        "false_positive_rate": _ratio(fp, negatives),
        "false_positives_per_1000_negatives": float(1000 * fp / negatives) if negatives else None,
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def binary_metrics(
    labels: np.ndarray, probs: np.ndarray, threshold: float, class_names: list[str] | tuple[str, str]
) -> dict[str, Any]:
    """The metrics.json body. AP and AUC need both classes; when one is absent they are None with a reason."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=float)
    result: dict[str, Any] = {"n": int(labels.size), "class_names": list(class_names)}
    result |= threshold_metrics(labels, probs, threshold)
    present = set(np.unique(labels).tolist())
    if present == {0, 1}:
        result["average_precision"] = float(skm.average_precision_score(labels, probs))
        result["roc_auc"] = float(skm.roc_auc_score(labels, probs))
    else:
        only = class_names[next(iter(present))] if present else "none"
        result["average_precision"] = result["roc_auc"] = None
        result["undefined"] = {
            "average_precision": f"only '{only}' images: AP needs positive examples"
            if 1 not in present
            else "no negative examples: every ranking has precision 1",
            "roc_auc": f"only '{only}' images: ROC-AUC needs both classes",
        }
    if 1 not in present:
        del result["f1"]
    result["at_0.5"] = threshold_metrics(labels, probs, 0.5)
    return result


def roc_curve(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return skm.roc_curve(np.asarray(labels).astype(int), np.asarray(probs, float), drop_intermediate=False)


def pr_curve(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) as scikit-learn gives them: recall falls from 1 to 0."""
    return skm.precision_recall_curve(np.asarray(labels).astype(int), np.asarray(probs, float))


def _between(thresholds: np.ndarray, i: int) -> float:
    """A threshold strictly between two consecutive distinct scores, so the same images pass on either side of a tie."""
    hi = thresholds[i]
    lo = thresholds[i + 1] if i + 1 < len(thresholds) else 0.0
    hi = min(hi, 1.0) if np.isfinite(hi) else 1.0
    return float((hi + lo) / 2)


def choose_threshold(
    labels: np.ndarray, probs: np.ndarray, rule: str = "max-fpr", max_fpr: float = 0.02
) -> tuple[float, str]:
    """The decision threshold chosen on (validation) labels, and a sentence that says how.

    max-fpr: the lowest threshold whose false-positive rate on the negatives stays at or below
    `max_fpr`, which catches the most potholes for a budget of false alarms. Fewer than 1/max_fpr
    negatives cannot tell that rate from zero; the threshold then allows one of them (0 still
    means none). youden: the one that
    maximises sensitivity + specificity - 1 (ties: nearest 0.5).
    """
    labels, probs = np.asarray(labels).astype(int), np.asarray(probs, dtype=float)
    negatives, positives = int((labels == 0).sum()), int((labels == 1).sum())
    if negatives == 0 or (rule == "youden" and positives == 0):
        return 0.5, f"0.5: the validation split lacks the classes {rule} needs"
    if positives == 0:
        labels = np.r_[labels, 1]
        probs = np.r_[probs, 1.0]
    fpr, tpr, thresholds = roc_curve(labels, probs)
    if rule == "youden":
        j = tpr - fpr
        best = np.flatnonzero(np.isclose(j, j.max()))
        candidates = np.array([_between(thresholds, i) for i in best])
        t = float(candidates[np.argmin(np.abs(candidates - 0.5))])
        return (
            t,
            f"youden: sensitivity + specificity - 1 maximised on the validation split ({positives} positives, "
            f"{negatives} negatives)",
        )
    budget, note = max_fpr, ""
    if 0 < max_fpr and negatives * max_fpr < 1:
        # the budget allows no false positive at all, which pins the threshold to the single highest
        # negative: an outlier decides it. The smallest rate such a set can measure is one of them.
        budget = 1 / negatives
        note = (
            f"; {negatives} negatives cannot resolve a rate of {max_fpr:g} (one of them is {budget:.3g}), so the "
            f"threshold allows one of them: add validation negatives to resolve the budget"
        )
        log.warning("threshold: %s", note[2:])
    i = int(np.flatnonzero(fpr <= budget + 1e-12).max())
    t = _between(thresholds, i)
    measured = float(((probs[labels == 0]) >= t).mean())
    return (
        t,
        f"max-fpr: the lowest threshold with a false-positive rate at most {max_fpr:g} on the {negatives} validation "
        f"negatives (measured {measured:.4f}; sensitivity {float((probs[labels == 1] >= t).mean()):.4f}){note}",
    )
