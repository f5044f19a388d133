"""The glue around scikit-learn's metrics: the threshold rules, one-class reports, and the PR plot."""

import numpy as np
import pytest

from pothole_edge.train import metrics, plots


def test_threshold_metrics_and_false_positives_per_1000():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    p = np.array([0.1, 0.6, 0.3, 0.7, 0.4, 0.9, 0.8, 0.2])
    m = metrics.binary_metrics(y, p, 0.5, ("normal", "pothole"))
    assert m["confusion_matrix"] == [[3, 1], [1, 3]] and m["accuracy"] == 0.75
    assert m["specificity"] == 0.75 and m["false_positives_per_1000_negatives"] == 250.0
    assert m["roc_auc"] == pytest.approx(0.9375) and m["at_0.5"]["threshold"] == 0.5


def test_one_class_reports_what_exists_and_why_the_rest_is_absent():
    m = metrics.binary_metrics(np.zeros(4, int), np.array([0.1, 0.7, 0.2, 0.3]), 0.5, ("normal", "pothole"))
    assert (
        m["specificity"] == 0.75
        and m["false_positive_rate"] == 0.25
        and m["false_positives_per_1000_negatives"] == 250.0
    )
    assert m["sensitivity"] is None and m["roc_auc"] is None and m["average_precision"] is None
    assert "both classes" in m["undefined"]["roc_auc"] and "f1" not in m
    m = metrics.binary_metrics(np.ones(3, int), np.array([0.9, 0.2, 0.8]), 0.5, ("normal", "pothole"))
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] is None


def test_max_fpr_threshold_keeps_false_alarms_within_budget():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(200, int), np.ones(50, int)]
    p = np.r_[rng.beta(2, 5, 200), rng.beta(5, 2, 50)]
    for budget in (0.0, 0.02, 0.1):
        t, how = metrics.choose_threshold(y, p, "max-fpr", budget)
        fpr = (p[y == 0] >= t).mean()
        assert fpr <= budget and "max-fpr" in how
        # the lowest such threshold: the next negative below it would break the budget
        below = np.sort(p[(y == 0) & (p < t)])
        if below.size:
            assert ((p[y == 0] >= below[-1]).mean()) > budget
    assert metrics.choose_threshold(y, p, "max-fpr", 0.1)[0] < metrics.choose_threshold(y, p, "max-fpr", 0.0)[0]


def test_max_fpr_says_when_too_few_negatives_resolve_the_budget():
    """42 negatives cannot resolve 2%: the threshold must not sit on the single highest negative."""
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(42, int), np.ones(40, int)]
    p = np.r_[rng.beta(2, 8, 41), [0.992], rng.beta(6, 2, 40)]
    t, how = metrics.choose_threshold(y, p, "max-fpr", 0.02)
    negatives = np.sort(p[y == 0])
    assert negatives[-2] < t < negatives[-1]  # one negative above it, the outlier; no more
    assert "cannot resolve" in how and "42 negatives" in how
    # enough negatives for the budget: no note, and the rule is the plain one
    y2 = np.r_[np.zeros(100, int), np.ones(40, int)]
    p2 = np.r_[rng.beta(2, 8, 100), rng.beta(6, 2, 40)]
    t2, how2 = metrics.choose_threshold(y2, p2, "max-fpr", 0.02)
    assert "cannot resolve" not in how2 and (p2[y2 == 0] >= t2).mean() <= 0.02


def test_youden_separates_validation_and_prefers_half():
    y = np.array([0, 0, 0, 1, 1, 1])
    t, _ = metrics.choose_threshold(y, np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.9]), "youden")
    assert 0.2 < t < 0.3
    t, _ = metrics.choose_threshold(y, np.array([0.0, 0.1, 0.2, 0.8, 0.9, 1.0]), "youden")
    assert 0.2 < t < 0.8
    assert metrics.choose_threshold(np.ones(3, int), np.array([0.1, 0.2, 0.3]), "youden")[0] == 0.5


def test_pr_curve_is_drawn_monotone_in_recall(tmp_path, monkeypatch):
    drawn = {}
    real_save = plots._save

    def keep(fig, path):
        drawn["line"] = fig.axes[0].lines[0]
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    y = np.array([0, 1, 1, 0, 1, 0, 1, 1])
    p = np.array([0.2, 0.9, 0.4, 0.6, 0.8, 0.1, 0.7, 0.95])
    precision, recall, _ = metrics.pr_curve(y, p)
    plots.pr(precision, recall, 0.9, y.mean(), tmp_path / "pr.png")
    x, yy = np.asarray(drawn["line"].get_xdata()), np.asarray(drawn["line"].get_ydata())
    assert np.all(np.diff(x) <= 0)  # one sweep from recall 1 to 0, never back
    assert x[0] == 1 and x[-1] == 0 and yy[-1] == 1 and drawn["line"].get_drawstyle() == "steps-post"
    precision, recall, _ = metrics.pr_curve(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    plots.pr(precision, recall, 1.0, 0.5, tmp_path / "perfect.png")
    x, yy = np.asarray(drawn["line"].get_xdata()), np.asarray(drawn["line"].get_ydata())
    assert np.all(yy[x < 1] == 1)  # AP 1 runs along precision 1, not along 0.5 and up the axis
