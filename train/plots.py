"""PNG plots a person reads at a glance: confusion matrix, ROC, PR, and training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pothole_edge.fileio import atomic_write


# matplotlib is imported here, not at module level, so that importing train stays light
def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = pyplot()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def confusion_matrix(cm: Sequence[Sequence[int]], class_names: Sequence[str], threshold: float, path: Path) -> Path:
    plt = pyplot()
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black", fontsize=14)
    ax.set_xticks([0, 1], [f"pred {c}" for c in class_names])
    ax.set_yticks([0, 1], [f"true {c}" for c in class_names])
    ax.set_title(f"Confusion matrix (threshold {threshold:.3f})")
    return _save(fig, path)


def roc(fpr: np.ndarray, tpr: np.ndarray, auc: float, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot(fpr, tpr, lw=2, label=f"AUC = {auc:.4f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    return _save(fig, path)


def pr(precision: np.ndarray, recall: np.ndarray, ap: float, base_rate: float, path: Path) -> Path:
    """Drawn as scikit-learn's PrecisionRecallDisplay draws it: a step line through (recall, precision)
    in the order precision_recall_curve returns them, from recall 1 down to the (0, 1) point."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot(recall, precision, drawstyle="steps-post", lw=2, label=f"AP = {ap:.4f}")
    ax.axhline(base_rate, ls="--", color="grey", lw=1, label=f"chance = {base_rate:.2f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve", xlim=(-0.01, 1.01), ylim=(0, 1.01))
    ax.legend(loc="lower left")
    return _save(fig, path)


def history(rows: list[dict[str, Any]], best_epoch: int | None, path: Path) -> Path:
    plt = pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in ((a, "loss", "Loss"), (b, "acc", "Accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in rows], "o-", label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in rows], "o-", label="val")
        if best_epoch is not None:
            ax.axvline(best_epoch, ls="--", color="grey", lw=1, label="best (restored)")
        ax.set(xlabel="epoch", title=title)
        ax.legend()
    return _save(fig, path)


def cv_folds(result: dict[str, Any], path: Path) -> Path:
    """Per data source, each fold's held-out ROC-AUC, AP, sensitivity and false alarms, with the means."""
    plt = pyplot()
    names = list(result["summary"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), squeeze=False)
    keys = (
        ("roc_auc", "ROC-AUC"),
        ("average_precision", "AP"),
        ("sensitivity", "sensitivity"),
        ("false_alarm_rate", "false alarms"),
    )
    for ax, name in zip(axes[0], names):
        folds = [f for f in result["per_fold"] if name in f["sources"]]
        width = 0.8 / max(1, len(folds))
        for i, f in enumerate(folds):
            r = f["sources"][name]
            values = [r[k] if r[k] is not None else 0 for k, _ in keys]
            label = f"fold {f['fold']}: {', '.join(r['groups'])}" if r["groups"] else f"fold {f['fold']}"
            ax.bar(np.arange(len(keys)) + (i - (len(folds) - 1) / 2) * width, values, width, label=label)
        for j, (k, _) in enumerate(keys):
            s = result["summary"][name].get(k)
            if s:
                ax.hlines(s["mean"], j - 0.45, j + 0.45, colors="black", linestyles="dashed")
        ax.axhline(result["max_fpr"], color="red", linewidth=0.8, label=f"false-alarm budget {result['max_fpr']:g}")
        ax.set_xticks(np.arange(len(keys)), [t for _, t in keys])
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{name}: held out by {result['group_column']} (dashes: mean)")
        ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)
