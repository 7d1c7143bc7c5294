"""The classification metrics, computed in numpy, are scikit-learn's: the
same F1, confusion matrix, ROC curve points and AUC, ties and all."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from textft_services.modeling.metrics import confusion, macro_f1, roc_auc, roc_curve

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, labels = 300, 4
    truth = rng.integers(0, labels, n)
    predicted = np.where(rng.random(n) < 0.6, truth, rng.integers(0, labels - 1, n))  # label 3 rarely predicted
    eye = np.eye(labels, dtype=bool)
    expected_f1 = sk.f1_score(truth, predicted, average="macro", labels=list(range(labels)), zero_division=0)
    assert macro_f1(eye[truth], eye[predicted]) == pytest.approx(expected_f1)
    multi_truth, multi_predicted = rng.random((n, labels)) < 0.3, rng.random((n, labels)) < 0.3
    multi_predicted[:, 0] = False  # a label never predicted
    expected_multi = sk.f1_score(multi_truth, multi_predicted, average="macro", zero_division=0)
    assert macro_f1(multi_truth, multi_predicted) == pytest.approx(expected_multi)
    np.testing.assert_array_equal(
        confusion(truth, predicted, labels), sk.confusion_matrix(truth, predicted, labels=list(range(labels)))
    )
    binary = (truth == 1).astype(int)
    for scores in (rng.random(n), rng.integers(0, 10, n) / 10):  # distinct scores, then many ties
        fpr, tpr = roc_curve(binary, scores)
        expected_fpr, expected_tpr, _ = sk.roc_curve(binary, scores)
        np.testing.assert_allclose(fpr, expected_fpr)
        np.testing.assert_allclose(tpr, expected_tpr)
        assert roc_auc(fpr, tpr) == pytest.approx(sk.roc_auc_score(binary, scores))
