"""Rows as a job sees them (services/modeling/data.py): memory-mapped from the
stored parts, and the task checks, tolerance and split done over Arrow."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from datasets import Dataset

from textft.v1 import common_pb2
from textft_services.common import rows as stored_rows
from textft_services.common.store import LocalStore
from textft_services.modeling import data
from textft_services.modeling.data import JobFailure

pytestmark = pytest.mark.unit


def make_rows(n: int, labels: list[str] | None = None, split: str = "", target: str = "") -> list[dict]:
    names = labels or ["a", "b"]
    return [
        {
            "row": i + 1,
            "text": f"text number {i}",
            "labels": [names[i % len(names)]] if not target else [],
            "target": target,
            "id": "",
            "metadata": {},
            "split": split,
        }
        for i in range(n)
    ]


def as_dataset(rows: list[dict]) -> Dataset:
    return Dataset(stored_rows.rows_table(rows).select(data.TRAIN_COLUMNS))


def prepare(dataset: Dataset, classification: bool = True, **overrides: object) -> data.Prepared:
    options: dict = {
        "label_names": ["a", "b"],
        "prompt_tokens": None,
        "max_length": 512,
        "row_count": len(dataset),
        "invalid_row_count": 0,
        "dataset_issues": [],
        "tolerance": 0.0,
        "seed": 42,
    }
    options.update(overrides)
    return data.prepare(dataset, classification, **options)


def test_open_rows_reads_the_stored_parts_memory_mapped(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    rows = make_rows(25)
    writer = stored_rows.RowsWriter(store, "d/", tmp_path, "datasets/d/versions/v1", part_rows=10)
    writer.write_rows([stored_rows.row_tuple(row) for row in rows])
    manifest = stored_rows.load_manifest(store, writer.finish(common_pb2.TASK_TEXT_CLASSIFICATION, ["a", "b"]))
    dataset = data.open_rows(store, manifest, tmp_path / "cache")
    assert dataset.column_names == data.TRAIN_COLUMNS
    assert [r["text"] for r in dataset] == [r["text"] for r in rows]
    assert all(table_file["filename"].endswith(".arrow") for table_file in dataset.cache_files)
    for part in manifest.parts:  # a second job on the version starts from the cache
        store.delete(part.object)
    assert len(data.open_rows(store, manifest, tmp_path / "cache")) == 25


def test_the_seeded_split_is_a_shuffle_of_the_usable_rows() -> None:
    dataset = as_dataset(make_rows(50))
    prepared = prepare(dataset)
    expected = list(range(50))
    random.Random(42).shuffle(expected)  # what the job did when it held the rows in a list
    assert prepared.eval.tolist() == expected[:5] and prepared.train.tolist() == expected[5:]
    assert prepared.split_source == "random 10% holdout (seed 42)"
    assert prepared.skipped == 0 and not prepared.multi_label


def test_an_eval_split_column_decides_the_split() -> None:
    rows = make_rows(10)
    for row in rows[:3]:
        row["split"] = "eval"
    prepared = prepare(as_dataset(rows))
    assert prepared.eval.tolist() == [0, 1, 2] and prepared.train.tolist() == list(range(3, 10))
    assert prepared.split_source == "split column"


def test_unknown_labels_count_against_the_tolerance() -> None:
    rows = make_rows(10)
    rows[4]["labels"] = ["zzz"]
    rows[7]["labels"] = []
    with pytest.raises(JobFailure) as raised:
        prepare(as_dataset(rows), invalid_row_count=1, row_count=11)
    assert raised.value.reason == "MODEL_TRAINING_INVALID_DATA_TOLERANCE_EXCEEDED"
    assert raised.value.field == "invalid_data_tolerance_percent"
    assert raised.value.rows == [5, 8]
    prepared = prepare(as_dataset(rows), invalid_row_count=1, row_count=11, tolerance=30.0)
    assert prepared.skipped == 3 and 4 not in prepared.train and 7 not in prepared.train


def test_one_label_is_not_enough() -> None:
    with pytest.raises(JobFailure) as raised:
        prepare(as_dataset(make_rows(10, labels=["a"])))
    assert raised.value.reason == "MODEL_TRAINING_INSUFFICIENT_DATA"


def test_only_prompts_that_could_be_too_long_are_tokenised() -> None:
    rows = make_rows(10, target="the answer")
    rows[3]["text"] = "x" * 300
    counted: list[str] = []

    def prompt_tokens(text: str) -> int:
        counted.append(text)
        return len(text) + 1

    with pytest.raises(JobFailure) as raised:
        prepare(as_dataset(rows), classification=False, prompt_tokens=prompt_tokens, max_length=64)
    assert raised.value.rows == [4]
    assert counted == ["x" * 300]  # the short rows cannot exceed 64 tokens: not tokenised
    prepared = prepare(
        as_dataset(rows), classification=False, prompt_tokens=prompt_tokens, max_length=64, tolerance=50.0
    )
    assert 3 not in prepared.train.tolist() + prepared.eval.tolist()


def test_evaluation_skips_rows_the_model_cannot_score() -> None:
    rows = make_rows(6, labels=["a", "b", "c"])
    usable, skipped, first = data.usable_for_evaluation(as_dataset(rows), True, ["a", "b"])
    assert usable.tolist() == [0, 1, 3, 4] and skipped == 2 and first == [3, 6]
