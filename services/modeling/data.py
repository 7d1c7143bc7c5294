"""A dataset version's rows as a memory-mapped `datasets.Dataset`, and what a
job decides about them without holding them in Python lists.

The Parquet parts of a version (fetched through its RowsManifest and checked
against their sha256) are converted once to Arrow stream files in a cache
directory named by the part's sha256, so later jobs on the same version start
from the memory-mapped files at once. Every check here (task rules, the
invalid-data tolerance, the split) runs over Arrow columns; the rows
themselves are tokenised per batch by the collators (collate.py).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from textft.internal.v1 import rows_pb2

from ..common import rows as stored_rows
from ..common.store import ObjectStore

TRAIN_COLUMNS = ["row", "text", "labels", "target", "split"]
EVAL_SHARE = 10  # percent held out when the version has no eval split
ISSUES_SHOWN = 20


class JobFailure(Exception):
    """What makes a job fail, with a reason, a message a user can act on, and the field or rows concerned."""

    def __init__(self, reason: str, message: str, field: str = "", rows: list[int] | None = None) -> None:
        super().__init__(message)
        self.reason, self.message, self.field, self.rows = reason, message, field, rows or []


def open_rows(store: ObjectStore, manifest: rows_pb2.RowsManifest, cache_dir: Path) -> Any:
    """The version's rows (TRAIN_COLUMNS) as one memory-mapped datasets.Dataset."""
    from datasets import Dataset, concatenate_datasets

    parts_dir, arrow_dir = cache_dir / "parts", cache_dir / "arrow"
    arrow_dir.mkdir(parents=True, exist_ok=True)
    datasets = []
    for part, path in zip(manifest.parts, stored_rows.fetch_parts(store, manifest, parts_dir), strict=True):
        arrow = arrow_dir / f"{part.sha256}.arrow"
        if not arrow.exists():
            partial = arrow.with_suffix(f".{os.getpid()}.partial")
            with pq.ParquetFile(path) as parquet, pa.OSFile(str(partial), "wb") as sink:
                schema = parquet.schema_arrow
                schema = pa.schema([schema.field(name) for name in TRAIN_COLUMNS])
                with pa.ipc.new_stream(sink, schema) as writer:
                    for batch in parquet.iter_batches(columns=TRAIN_COLUMNS):
                        writer.write_batch(batch)
            partial.replace(arrow)
        datasets.append(Dataset.from_file(str(arrow)))
    if not datasets:
        return Dataset.from_dict({name: [] for name in TRAIN_COLUMNS})
    return datasets[0] if len(datasets) == 1 else concatenate_datasets(datasets)


def _column(dataset: Any, name: str) -> pa.ChunkedArray:
    """A column of the dataset as Arrow, zero-copy from the memory-mapped table."""
    return dataset.data.column(name)


@dataclass
class Prepared:
    """The rows a job trains and evaluates on, as index arrays into the version's rows."""

    train: np.ndarray
    eval: np.ndarray
    skipped: int
    split_source: str
    label_names: list[str] = field(default_factory=list)
    multi_label: bool = False


def _format_issues(issues: list[dict[str, Any]], limit: int = 5) -> str:
    parts = [f"row {i['row']}: {i.get('code', '')} {i.get('message', '')}".strip() for i in issues[:limit]]
    return "; ".join(parts)


def _task_issues(
    dataset: Any, classification: bool, label_names: list[str], prompt_tokens: Any, max_length: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(mask of the rows the task can use, the first issues of the others)."""
    numbers = _column(dataset, "row")
    if classification:
        labels = _column(dataset, "labels")
        counts = pc.list_value_length(labels).to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(labels)
        unknown_at = pc.list_parent_indices(labels).to_numpy(zero_copy_only=False)[
            np.asarray(pc.invert(pc.is_in(flat, value_set=pa.array(label_names, pa.string()))))
        ]
        unknown = np.zeros(len(dataset), dtype=bool)
        unknown[unknown_at] = True
        bad = (counts == 0) | unknown
        first = np.flatnonzero(bad)[:ISSUES_SHOWN]
        issues = [
            {
                "row": int(numbers[i].as_py()),
                "code": "MISSING_LABEL" if counts[i] == 0 else "UNKNOWN_LABEL",
                "message": f"labels {_column(dataset, 'labels')[int(i)].as_py()}",
            }
            for i in first
        ]
        return ~bad, issues
    missing = np.asarray(pc.equal(pc.utf8_length(_column(dataset, "target")), 0).to_numpy(zero_copy_only=False))
    # A byte-level tokenizer makes at most one token per byte (two leave room for
    # any other): only rows that could be too long are tokenised to find out.
    budget = max_length - 1
    bytes_ = pc.binary_length(_column(dataset, "text")).to_numpy(zero_copy_only=False)
    too_long = np.zeros(len(dataset), dtype=bool)
    lengths: dict[int, int] = {}
    for i in np.flatnonzero(2 * bytes_ + 8 >= budget):
        lengths[int(i)] = prompt_tokens(_column(dataset, "text")[int(i)].as_py())
        too_long[i] = lengths[int(i)] >= budget
    bad = missing | too_long
    issues = []
    for i in np.flatnonzero(bad)[:ISSUES_SHOWN]:
        if missing[i]:
            issues.append({"row": int(numbers[int(i)].as_py()), "code": "MISSING_TARGET", "message": "no target text"})
        else:
            issues.append(
                {
                    "row": int(numbers[int(i)].as_py()),
                    "code": "TOO_LONG_AFTER_TOKENIZATION",
                    "message": f"prompt is {lengths[int(i)]} tokens, max_length {max_length} leaves no room for "
                    "the target",
                }
            )
    return ~bad, issues


def prepare(
    dataset: Any,
    classification: bool,
    label_names: list[str],
    prompt_tokens: Any,
    max_length: int,
    row_count: int,
    invalid_row_count: int,
    dataset_issues: list[dict[str, Any]],
    tolerance: float,
    seed: int,
) -> Prepared:
    """Task checks, the invalid-data tolerance and the train/eval split, over
    Arrow columns. prompt_tokens(text) counts a generation prompt's tokens.
    The split is the one a seeded shuffle of the usable rows gives (as
    random.Random(seed).shuffle), the first 10% held out."""
    usable, task_issues = _task_issues(dataset, classification, label_names, prompt_tokens, max_length)
    task_invalid = int((~usable).sum())
    total = row_count or len(dataset)
    invalid = invalid_row_count + task_invalid
    share = 100.0 * invalid / total if total else 0.0
    issues = sorted([*dataset_issues, *task_issues], key=lambda i: i["row"])
    if invalid and share > tolerance:
        raise JobFailure(
            "MODEL_TRAINING_INVALID_DATA_TOLERANCE_EXCEEDED",
            f"{invalid} of {total} rows ({share:.1f}%) are invalid, above invalid_data_tolerance_percent={tolerance:g}. "
            f"First: {_format_issues(issues)}. Fix the rows or raise the tolerance to skip them.",
            field="invalid_data_tolerance_percent",
            rows=[int(i["row"]) for i in issues[:ISSUES_SHOWN]],
        )
    valid = np.flatnonzero(usable)
    if not len(valid):
        raise JobFailure("MODEL_TRAINING_INSUFFICIENT_DATA", "no valid rows to train on", field="dataset_version")
    multi_label = False
    if classification:
        labels = _column(dataset, "labels")
        counts = pc.list_value_length(labels).to_numpy(zero_copy_only=False)[valid]
        multi_label = bool((counts > 1).any())
        used = pc.unique(pc.list_flatten(labels.take(pa.array(valid)))).to_pylist()
        if len(used) < 2 and not multi_label:
            raise JobFailure(
                "MODEL_TRAINING_INSUFFICIENT_DATA",
                f"classification needs at least 2 distinct labels among valid rows, found {sorted(used)}",
                field="dataset_version",
            )
    eval_mask = np.asarray(pc.equal(_column(dataset, "split"), "eval").to_numpy(zero_copy_only=False))[valid]
    if eval_mask.any():
        return Prepared(valid[~eval_mask], valid[eval_mask], invalid, "split column", label_names, multi_label)
    order = list(range(len(valid)))
    random.Random(seed).shuffle(order)
    shuffled = valid[np.asarray(order, dtype=np.int64)]
    del order
    n_eval = max(1, len(shuffled) // EVAL_SHARE) if len(shuffled) >= 5 else 0
    evaluation, train = shuffled[:n_eval], shuffled[n_eval:]
    source = f"random 10% holdout (seed {seed})" if n_eval else "none (fewer than 5 rows): evaluated on train"
    if not n_eval:
        evaluation = train
    return Prepared(train, evaluation, invalid, source, label_names, multi_label)


def usable_for_evaluation(
    dataset: Any, classification: bool, label_names: list[str]
) -> tuple[np.ndarray, int, list[int]]:
    """(indices of the rows a model can be scored on, how many others, row
    numbers of the first others): classification rows need labels the model
    knows, generation rows a target."""
    if classification:
        usable, _ = _task_issues(dataset, True, label_names, None, 0)
    else:
        usable = ~np.asarray(pc.equal(pc.utf8_length(_column(dataset, "target")), 0).to_numpy(zero_copy_only=False))
    usable &= ~np.asarray(pc.equal(pc.utf8_length(_column(dataset, "text")), 0).to_numpy(zero_copy_only=False))
    skipped = np.flatnonzero(~usable)
    numbers = _column(dataset, "row")
    return np.flatnonzero(usable), len(skipped), [int(numbers[int(i)].as_py()) for i in skipped[:ISSUES_SHOWN]]
