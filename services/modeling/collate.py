"""Tokenisation per batch: the collators turn rows (as stored: text, labels,
target) into padded model inputs, so no tokenised copy of a dataset is ever
held. Dynamic padding: each batch is padded to its own longest row."""

from __future__ import annotations

from typing import Any

import numpy as np

PROMPT_TEMPLATE = "{text}\n"  # generation: the model sees the text, then learns to continue with the target
IGNORE_INDEX = -100  # labels the loss skips


class ClassificationCollator:
    """Rows → input_ids, attention_mask and labels (class index, or one-hot
    floats for multi-label). A class, so DataLoader workers can pickle it."""

    def __init__(self, tokenizer: Any, max_length: int, label_names: list[str], multi_label: bool) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length
        self.index = {name: i for i, name in enumerate(label_names)}
        self.multi_label = multi_label

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.tokenizer(
            [row["text"] for row in rows],
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        )
        if self.multi_label:
            labels = torch.zeros((len(rows), len(self.index)), dtype=torch.float32)
            for i, row in enumerate(rows):
                for label in row["labels"]:
                    labels[i, self.index[label]] = 1.0
        else:
            labels = torch.tensor([self.index[row["labels"][0]] for row in rows], dtype=torch.long)
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}

    def lengths(self, columns: dict[str, list[Any]]) -> np.ndarray:
        """Tokens of each row (columns as a dataset slice gives them) as __call__ makes them: what batches are grouped by."""
        ids = self.tokenizer(columns["text"], truncation=True, max_length=self.max_length)["input_ids"]
        return np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))


def generation_example(prompt: list[int], target: list[int], eos: int, max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one row: the prompt's tokens are masked, so the
    loss is on the target (and its EOS) only, cut to max_length."""
    target = [*target, eos][: max(max_length - len(prompt), 0)]
    return prompt + target, [IGNORE_INDEX] * len(prompt) + target


class GenerationCollator:
    """Rows → input_ids, attention_mask and labels for causal LM training,
    padded on the right (labels with IGNORE_INDEX)."""

    def __init__(self, tokenizer: Any, max_length: int, prompt_template: str = PROMPT_TEMPLATE) -> None:
        self.tokenizer, self.max_length, self.prompt_template = tokenizer, max_length, prompt_template

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        tokenizer = self.tokenizer
        examples = self._examples([row["text"] for row in rows], [row["target"] for row in rows])
        longest = max(len(ids) for ids, _ in examples)
        pad = tokenizer.pad_token_id
        input_ids = torch.full((len(rows), longest), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), longest), dtype=torch.long)
        labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, row_labels) in enumerate(examples):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
            labels[i, : len(ids)] = torch.tensor(row_labels)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    def _examples(self, texts: list[str], targets: list[str]) -> list[tuple[list[int], list[int]]]:
        tokenizer = self.tokenizer
        prompts = tokenizer([self.prompt_template.format(text=text) for text in texts])["input_ids"]
        target_ids = tokenizer(targets, add_special_tokens=False)["input_ids"]
        return [
            generation_example(prompt, target, tokenizer.eos_token_id, self.max_length)
            for prompt, target in zip(prompts, target_ids, strict=True)
        ]

    def lengths(self, columns: dict[str, list[Any]]) -> np.ndarray:
        """Tokens of each row (columns as a dataset slice gives them) as __call__ makes them: what batches are grouped by."""
        examples = self._examples(columns["text"], columns["target"])
        return np.fromiter((len(ids) for ids, _ in examples), dtype=np.int64, count=len(examples))


def make_collator(
    classification: bool, tokenizer: Any, max_length: int, label_names: list[str], multi_label: bool
) -> Any:
    if classification:
        return ClassificationCollator(tokenizer, max_length, label_names, multi_label)
    return GenerationCollator(tokenizer, max_length)


def batches(dataset: Any, size: int) -> Any:
    """The dataset's rows as lists of row dicts, `size` at a time (what a collator takes)."""
    for columns in dataset.iter(batch_size=size):
        yield _row_dicts(columns)


def length_sorted_batches(dataset: Any, size: int, collator: Any, window: int = 50) -> Any:
    """(row indices, row dicts) batches whose rows have similar token lengths:
    each window of `window` batches is sorted longest first before it is cut,
    so a batch pads to its own longest row rather than a random one's (for
    scoring, where order does not matter). Lengths are counted one window at a
    time: nothing is tokenised up front."""
    span = size * max(1, window)
    for start in range(0, len(dataset), span):
        columns = dataset[start : start + span]
        order = np.argsort(-collator.lengths(columns), kind="stable")
        rows = _row_dicts(columns)
        for cut in range(0, len(order), size):
            picked = order[cut : cut + size]
            yield (start + picked), [rows[i] for i in picked]


def _row_dicts(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
