import numpy as np
import pytest
from sklearn import metrics as sk

from train import metrics

CASES = [
    # (labels, scores): ties, perfect ranking, inverted ranking, a mix
    ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]),
    ([0, 1, 1, 0, 1, 0, 1], [0.5, 0.5, 0.9, 0.2, 0.5, 0.7, 0.1]),
    ([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.8, 0.9]),
    ([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]),
]


@pytest.mark.parametrize("labels, scores", CASES)
def test_ranking_metrics_match_sklearn(labels, scores):
    y, s = np.array(labels), np.array(scores)
    assert metrics.roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s))
    assert metrics.average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s))
    fpr, tpr, _ = metrics.roc_curve(y, s)
    sk_fpr, sk_tpr, _ = sk.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


def test_random_vectors_match_sklearn():
    rng = np.random.default_rng(1)
    for _ in range(100):
        y = rng.integers(0, 2, 40)
        y[:2] = [0, 1]
        s = np.round(rng.random(40), 1)  # coarse scores: many ties
        assert metrics.roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s))
        assert metrics.average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s))


def test_threshold_metrics_match_sklearn():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    p = np.array([0.1, 0.6, 0.3, 0.7, 0.4, 0.9, 0.8, 0.2])
    m = metrics.binary_metrics(y, p, 0.5, ("normal", "pothole"))
    pred = p >= 0.5
    assert m["confusion_matrix"] == sk.confusion_matrix(y, pred).tolist() == [[3, 1], [1, 3]]
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(sk.precision_score(y, pred))
    assert m["sensitivity"] == pytest.approx(sk.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(sk.recall_score(y, pred, pos_label=0))
    assert m["f1"] == pytest.approx(sk.f1_score(y, pred))
    assert m["n"] == 8 and m["class_names"] == ["normal", "pothole"]


def test_one_class_reports_what_exists_and_why_the_rest_is_absent():
    m = metrics.binary_metrics(np.zeros(4, int), np.array([0.1, 0.7, 0.2, 0.3]), 0.5, ("normal", "pothole"))
    assert m["specificity"] == 0.75 and m["false_positive_rate"] == 0.25
    assert m["sensitivity"] is None and m["roc_auc"] is None and m["average_precision"] is None
    assert "both classes" in m["undefined"]["roc_auc"]
    m = metrics.binary_metrics(np.ones(3, int), np.array([0.9, 0.2, 0.8]), 0.5, ("normal", "pothole"))
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] is None


def test_threshold_choice_separates_validation_and_prefers_half():
    y = np.array([0, 0, 0, 1, 1, 1])
    t = metrics.choose_threshold(y, np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.9]))
    assert 0.2 < t <= 0.3
    assert metrics.choose_threshold(y, np.array([0.0, 0.1, 0.2, 0.8, 0.9, 1.0])) == 0.5
    assert metrics.choose_threshold(np.zeros(3, int), np.array([0.1, 0.2, 0.3])) == 0.5
