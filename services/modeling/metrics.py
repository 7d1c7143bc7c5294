"""Evaluation metrics per task, computed batch by batch over a dataset of rows
(the collators tokenise): what the training job reports and
EvaluateModelVersion returns."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .collate import PROMPT_TEMPLATE, batches, length_sorted_batches


# The classification metrics in numpy, as scikit-learn computes them
# (zero_division=0, roc_curve's drop_intermediate): importing sklearn.metrics
# alone takes 2-3 s of every job's evaluation.
def macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Mean per-label F1 over the columns of one-hot (n, labels) arrays; 0 for a label never true nor predicted."""
    tp = (truth & predicted).sum(axis=0)
    denominator = truth.sum(axis=0) + predicted.sum(axis=0)
    return float(np.mean(np.divide(2 * tp, denominator, out=np.zeros(len(tp)), where=denominator > 0)))


def confusion(truth: np.ndarray, predicted: np.ndarray, n_labels: int) -> np.ndarray:
    """(labels, labels) counts: row the true label, column the predicted one."""
    return np.bincount(truth * n_labels + predicted, minlength=n_labels * n_labels).reshape(n_labels, n_labels)


def roc_curve(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) at each distinct score,
    from (0, 0), without the points collinear with their neighbours."""
    order = np.argsort(-scores, kind="mergesort")
    scores, truth = scores[order], truth[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # last row of each distinct score
    tps = np.cumsum(truth)[last]
    fps = last + 1 - tps
    if len(fps) > 2:
        keep = np.flatnonzero(np.r_[True, np.diff(fps, 2) | np.diff(tps, 2), True])
        fps, tps = fps[keep], tps[keep]
    fps, tps = np.r_[0, fps], np.r_[0, tps]
    return fps / fps[-1], tps / tps[-1]


def roc_auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.trapezoid(tpr, fpr))


def evaluate_classification(
    model: Any,
    rows: Any,
    collator: Any,
    label_names: list[str],
    multi_label: bool,
    batch_size: int,
    on_rows: Callable[[int, int], None] = lambda done, total: None,
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-label ROC AUC with curve points, confusion matrix, loss."""
    import torch

    model.eval()
    logits_all, labels_all, order, losses = [], [], [], []
    with torch.inference_mode():
        done = 0
        # Rows of similar length batched together (less padding); results go back to the rows' order.
        for indices, chunk in length_sorted_batches(rows, batch_size, collator):
            batch = collator(chunk)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            out = model(**batch)
            losses.append(float(out.loss) * len(batch["input_ids"]))
            done += len(chunk)
            on_rows(done, len(rows))
            logits_all.append(out.logits.float().cpu().numpy())
            labels_all.append(batch["labels"].cpu().numpy())
            order.append(indices)
    back = np.argsort(np.concatenate(order)) if order else np.zeros(0, dtype=int)
    logits, labels = np.concatenate(logits_all)[back], np.concatenate(labels_all)[back]
    n_labels = len(label_names)
    if multi_label:
        scores = 1 / (1 + np.exp(-logits))
        onehot = labels.astype(int)
        predicted = (scores >= 0.5).astype(int)
        accuracy = float((predicted == onehot).all(axis=1).mean())
        f1 = macro_f1(onehot.astype(bool), predicted.astype(bool))
        cm = np.zeros((n_labels, n_labels), dtype=int)
    else:
        shifted = logits - logits.max(axis=1, keepdims=True)
        scores = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        predicted = scores.argmax(axis=1)
        labels = labels.astype(int)
        onehot = np.eye(n_labels, dtype=int)[labels]
        accuracy = float((labels == predicted).mean())
        f1 = macro_f1(onehot.astype(bool), np.eye(n_labels, dtype=bool)[predicted])
        cm = confusion(labels, predicted, n_labels)
    per_label, curves = {}, []
    for i, name in enumerate(label_names):
        if 0 < onehot[:, i].sum() < len(onehot):  # AUC needs both classes present
            fpr, tpr = roc_curve(onehot[:, i], scores[:, i])
            per_label[name] = roc_auc(fpr, tpr)
            keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 50)).astype(int))
            curves.append(
                {"label": name, "false_positive_rate": fpr[keep].tolist(), "true_positive_rate": tpr[keep].tolist()}
            )
    metrics = {"accuracy": accuracy, "macro_f1": f1, "loss": sum(losses) / len(rows)}
    if per_label:
        metrics["roc_auc"] = float(np.mean(list(per_label.values())))
    return {
        "metrics": metrics,
        "roc_auc_per_label": per_label,
        "roc_curves": curves,
        "label_names": label_names,
        "confusion_matrix": [int(x) for x in np.asarray(cm).ravel()],
        "example_count": len(rows),
    }


def evaluate_generation(
    model: Any,
    tokenizer: Any,
    rows: Any,
    collator: Any,
    batch_size: int,
    max_exact: int = 32,
    prompt_template: str = PROMPT_TEMPLATE,
    on_rows: Callable[[int, int], None] = lambda done, total: None,
) -> dict[str, Any]:
    """Loss and perplexity on target tokens; exact match and ROUGE-L (F-measure,
    Google's rouge-score package) of greedy generations on a sample."""
    import torch
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])

    model.eval()
    total_loss, total_tokens = 0.0, 0
    sample = rows.select(range(min(max_exact, len(rows))))
    work, done = len(rows) + len(sample), 0  # rows scored, then rows generated
    with torch.no_grad():
        for _, chunk in length_sorted_batches(rows, batch_size, collator):  # a sum: order does not matter
            batch = collator(chunk)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            out = model(**batch)
            tokens = int((batch["labels"][:, 1:] != -100).sum())
            total_loss += float(out.loss) * tokens
            total_tokens += tokens
            done += len(chunk)
            on_rows(done, work)
        loss = total_loss / max(total_tokens, 1)
        matches, rouge_l = 0, 0.0
        tokenizer.padding_side = "left"  # batched generation needs left padding
        for chunk in batches(sample, batch_size):
            prompts = [prompt_template.format(text=r["text"]) for r in chunk]
            inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
            longest = max(len(tokenizer(r["target"])["input_ids"]) for r in chunk) + 2
            generated = model.generate(
                **inputs, max_new_tokens=longest, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            for row, ids in zip(chunk, generated[:, inputs["input_ids"].shape[1] :], strict=True):
                text = tokenizer.decode(ids, skip_special_tokens=True)
                matches += int(text.strip() == row["target"].strip())
                rouge_l += scorer.score(row["target"], text)["rougeL"].fmeasure
            done += len(chunk)
            on_rows(done, work)
        tokenizer.padding_side = "right"
    return {
        "metrics": {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "exact_match": matches / max(len(sample), 1),
            "rouge_l": rouge_l / max(len(sample), 1),
        },
        "example_count": len(rows),
    }


def evaluate(
    classification: bool,
    model: Any,
    tokenizer: Any,
    rows: Any,
    collator: Any,
    labels: list[str],
    multi: bool,
    batch_size: int,
    max_generations: int = 32,
    prompt_template: str = PROMPT_TEMPLATE,
    on_rows: Callable[[int, int], None] = lambda done, total: None,
) -> dict[str, Any]:
    """The version's metrics on rows (a datasets.Dataset), tokenised batch by
    batch; on_rows(done, total) after each batch."""
    if classification:
        return evaluate_classification(model, rows, collator, labels, multi, batch_size, on_rows)
    return evaluate_generation(model, tokenizer, rows, collator, batch_size, max_generations, prompt_template, on_rows)
