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


def test_evaluation_in_length_sorted_batches_equals_an_in_order_pass(tmp_path) -> None:
    """Evaluation batches rows of similar length (less padding) but reports
    what scoring the rows in their own order reports."""
    import random

    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from textft_services.common.tinymodels import build_tiny_gpt_neo
    from textft_services.modeling.collate import batches, length_sorted_batches, make_collator
    from textft_services.modeling.metrics import evaluate_classification

    base = build_tiny_gpt_neo(tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=3)
    model.config.pad_token_id = tokenizer.pad_token_id
    rng = random.Random(0)
    words = ["the", "a", "film", "plot", "actor", "scene", "story", "ending", "music", "camera"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(53)]
    rows = Dataset.from_dict({"text": texts, "labels": [[rng.choice("abc")] for _ in texts]})
    collator = make_collator(True, tokenizer, 64, ["a", "b", "c"], False)

    seen = []
    padded_sorted = padded_in_order = 0
    for indices, chunk in length_sorted_batches(rows, 4, collator, window=5):
        assert [r["text"] for r in chunk] == [texts[i] for i in indices]
        lengths = collator.lengths({"text": [r["text"] for r in chunk]})
        assert list(lengths) == sorted(lengths, reverse=True)
        padded_sorted += int(lengths.max()) * len(chunk)
        seen.extend(indices.tolist())
    assert sorted(seen) == list(range(len(texts)))  # every row once
    for chunk in batches(rows, 4):
        padded_in_order += int(collator.lengths({"text": [r["text"] for r in chunk]}).max()) * len(chunk)
    assert padded_sorted < padded_in_order

    got = evaluate_classification(model, rows, collator, ["a", "b", "c"], False, 4)
    with torch.no_grad():
        logits = torch.cat([model(**{k: v for k, v in collator([r]).items() if k != "labels"}).logits for r in rows])
    truth = np.array([{"a": 0, "b": 1, "c": 2}[r["labels"][0]] for r in rows])
    predicted = logits.argmax(-1).numpy()
    assert got["metrics"]["accuracy"] == pytest.approx(float((predicted == truth).mean()))
    assert got["confusion_matrix"] == confusion(truth, predicted, 3).ravel().tolist()
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(truth)).item()
    assert got["metrics"]["loss"] == pytest.approx(loss, rel=1e-4)
