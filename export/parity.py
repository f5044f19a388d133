"""The proof: the same tiles through two backends, compared tile by tile, frame by frame and metric by metric."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pothole_edge.train.metrics import HEADLINE, binary_metrics
from pothole_edge.view import pool

FLOAT_METRICS = HEADLINE


@dataclass(frozen=True)
class ExactGate:
    """FP32: the candidate reproduces the reference."""

    prob_tol: float
    metric_tol: float
    min_label_agreement: float


@dataclass(frozen=True)
class DropGate:
    """Reduced precision: the candidate may lose at most this much."""

    max_accuracy_drop: float
    max_auc_drop: float
    prob_tol: float | None = None


def frame_probs(tile_probs: np.ndarray, spec_view: dict[str, Any]) -> np.ndarray:
    return np.array([pool(row, spec_view)[0] for row in tile_probs], dtype=np.float64)


def compare(
    name: str,
    ref_tiles: np.ndarray,
    cand_tiles: np.ndarray,
    labels: np.ndarray,
    spec: dict[str, Any],
    gate: ExactGate | DropGate,
    candidate_threshold: float | None = None,
) -> dict[str, Any]:
    """Tile probabilities (frames x tiles) of both backends, compared tile by tile, then frame by frame after the
    view's pooling. FP32 must reproduce each tile; a reduced-precision candidate is judged on the frames, at its
    own threshold when it has one (chosen on validation by the same rule)."""
    threshold, class_names = spec["threshold"], spec["class_names"]
    cand_threshold = threshold if candidate_threshold is None else candidate_threshold
    reference, candidate = frame_probs(ref_tiles, spec["view"]), frame_probs(cand_tiles, spec["view"])
    ref_m = binary_metrics(labels, reference, threshold, class_names)
    cand_m = binary_metrics(labels, candidate, cand_threshold, class_names)
    diff = np.abs(ref_tiles - cand_tiles)
    frame_diff = np.abs(reference - candidate)
    agreement = float(np.mean((reference >= threshold) == (candidate >= cand_threshold)))
    deltas = {
        k: abs(ref_m[k] - cand_m[k]) for k in FLOAT_METRICS if ref_m.get(k) is not None and cand_m.get(k) is not None
    }
    failures = []
    if isinstance(gate, ExactGate):
        if diff.max(initial=0) > gate.prob_tol:
            failures.append(f"max |probability difference| {diff.max():.2e} > {gate.prob_tol:g}")
        if agreement < gate.min_label_agreement:
            failures.append(f"label agreement {agreement:.4f} < {gate.min_label_agreement:g}")
        if ref_m["confusion_matrix"] != cand_m["confusion_matrix"]:
            failures.append(f"confusion matrix {cand_m['confusion_matrix']} != {ref_m['confusion_matrix']}")
        failures += [f"{k} differs by {d:.2e} > {gate.metric_tol:g}" for k, d in deltas.items() if d > gate.metric_tol]
    else:
        acc_drop = ref_m["accuracy"] - cand_m["accuracy"]
        if acc_drop > gate.max_accuracy_drop:
            failures.append(f"accuracy drops {acc_drop:.4f} > {gate.max_accuracy_drop:g}")
        if ref_m["roc_auc"] is not None and ref_m["roc_auc"] - cand_m["roc_auc"] > gate.max_auc_drop:
            failures.append(f"ROC-AUC drops {ref_m['roc_auc'] - cand_m['roc_auc']:.4f} > {gate.max_auc_drop:g}")
        if gate.prob_tol is not None and frame_diff.max(initial=0) > gate.prob_tol:
            failures.append(f"max |frame probability difference| {frame_diff.max():.2e} > {gate.prob_tol:g}")
    return {
        "name": name,
        "passed": not failures,
        "failures": failures,
        "gate": {"kind": type(gate).__name__} | gate.__dict__,
        "n": int(labels.size),
        "tiles": int(diff.size),
        "max_abs_prob_diff": float(diff.max(initial=0)),
        "max_abs_frame_prob_diff": float(frame_diff.max(initial=0)),
        "candidate_threshold": cand_threshold,
        "mean_abs_prob_diff": float(diff.mean()) if diff.size else 0.0,
        "label_agreement": agreement,
        "metric_abs_diff": deltas,
        "reference_metrics": ref_m,
        "candidate_metrics": cand_m,
    }


def table(reports: list[dict[str, Any]]) -> str:
    """One row per comparison: what a person checks first."""
    width = max([len("comparison")] + [len(r["name"]) for r in reports])
    head = f"{'comparison':<{width}} {'n':>4} {'max|dprob|':>10} {'labels':>7} {'acc':>13} {'roc_auc':>15}  result"
    rows = [head, "-" * len(head)]
    for r in reports:
        ref, cand = r["reference_metrics"], r["candidate_metrics"]
        auc = f"{ref['roc_auc']:.4f}->{cand['roc_auc']:.4f}" if ref["roc_auc"] is not None else "n/a"
        acc = f"{ref['accuracy']:.4f}->{cand['accuracy']:.4f}"
        rows.append(
            f"{r['name']:<{width}} {r['n']:>4} {r['max_abs_prob_diff']:>10.2e} {r['label_agreement']:>7.2%} "
            f"{acc:>13} {auc:>15}  {'PASS' if r['passed'] else 'FAIL: ' + '; '.join(r['failures'])}"
        )
    return "\n".join(rows)
