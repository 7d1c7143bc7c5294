"""Formats and columns: a file's format from its name, the canonical columns
and the file column names accepted for each, and the task a file's columns fit."""

from __future__ import annotations

from pathlib import Path

from textft.errors import InvalidArgument
from textft.v1 import common_pb2, dataset_pb2

from .model import CLASSIFICATION, CSV, GENERATION, JSONL, TSV

EXTENSIONS = {
    ".csv": CSV,
    ".tsv": TSV,
    ".tab": TSV,
    ".jsonl": JSONL,
    ".ndjson": JSONL,
}
# Store suffix of the raw source per format.
SOURCE_SUFFIX = {CSV: "csv", TSV: "tsv", JSONL: "jsonl"}

# Canonical columns and the file column names accepted for each, in order of
# preference: ours, then clarifai-python's Dataset.upload_from_csv columns
# (inputid, input, concepts, metadata), then Clarifai's older template names.
ALIASES: dict[str, tuple[str, ...]] = {
    "text": ("text", "input", "input.data.text.raw"),
    "labels": ("labels", "label", "concepts", "input.data.concepts[*].id"),
    "target": ("target",),
    "id": ("id", "inputid", "input.id"),
    "metadata": ("metadata", "input.data.metadata"),
    "split": ("split",),
}
# column_mapping keys accepted in an upload header ("label" is a synonym).
MAPPING_KEYS = {**{name: name for name in ALIASES}, "label": "labels"}
# Clarifai's concept columns separate several labels with commas.
COMMA_LABEL_COLUMNS = {"concepts", "input.data.concepts[*].id"}


def infer_format(fmt: int, filename: str) -> int:
    """The header's format, else the one its filename's extension implies."""
    if fmt != dataset_pb2.DATASET_FORMAT_UNSPECIFIED:
        if fmt not in SOURCE_SUFFIX:
            raise InvalidArgument.for_field("header.format", f"unknown format value {fmt}")
        return fmt
    suffix = Path(filename or "").suffix.lower()
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    shown = f"the filename {filename!r} does not tell it" if filename else "no filename was given"
    raise InvalidArgument.for_field(
        "header.format",
        f"format is unspecified and {shown}: set format to CSV, TSV or JSONL "
        f"(or name the file with one of {', '.join(sorted(EXTENSIONS))})",
        reason="FORMAT_UNSPECIFIED",
    )


def check_column_mapping(mapping: dict[str, str]) -> dict[str, str]:
    """Normalises mapping keys to canonical names; rejects unknown keys."""
    result: dict[str, str] = {}
    for key, column in mapping.items():
        canonical = MAPPING_KEYS.get(key.strip().lower())
        if canonical is None:
            raise InvalidArgument.for_field(
                f"header.column_mapping[{key}]",
                f"unknown canonical column {key!r}; use one of {', '.join(sorted(MAPPING_KEYS))}",
                reason="UNKNOWN_MAPPING_KEY",
            )
        if not column:
            raise InvalidArgument.for_field(f"header.column_mapping[{key}]", "the file column name is empty")
        result[canonical] = column
    return result


def _accepted_names() -> str:
    return "; ".join(f"{name}: {', '.join(names)}" for name, names in ALIASES.items())


def resolve_columns(columns: list[str], mapping: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Maps canonical names to file columns: the explicit mapping first, then
    aliases (case-insensitive). Returns (canonical -> column, unknown columns).
    Raises InvalidArgument when there is no text column."""
    mapping = check_column_mapping(mapping)
    present = set(columns)
    resolved: dict[str, str] = {}
    for canonical, column in mapping.items():
        if column not in present:
            raise InvalidArgument.for_field(
                f"header.column_mapping[{canonical}]",
                f"column {column!r} is not in the file; columns found: {show_columns(columns)}",
                reason="MAPPED_COLUMN_NOT_FOUND",
            )
        resolved[canonical] = column
    by_lower: dict[str, str] = {}
    for column in columns:
        by_lower.setdefault(column.strip().lower(), column)
    used = set(resolved.values())
    for canonical, aliases in ALIASES.items():
        if canonical in resolved:
            continue
        for alias in aliases:
            column = by_lower.get(alias)
            if column is not None and column not in used:
                resolved[canonical] = column
                used.add(column)
                break
    if "text" not in resolved:
        raise InvalidArgument.for_field(
            "header.column_mapping[text]",
            f"the file has no text column; columns found: {show_columns(columns)}. Accepted names: {_accepted_names()}. "
            "Rename the column or map it with column_mapping {'text': '<your column>'}",
            reason="NO_TEXT_COLUMN",
        )
    unknown = [c for c in columns if c not in used]
    return resolved, unknown


def infer_task(task: int, resolved: dict[str, str], columns: list[str]) -> int:
    """The requested task, checked against the columns; else inferred from them."""
    if task == CLASSIFICATION and "labels" not in resolved:
        raise InvalidArgument.for_field(
            "header.task",
            f"task is TEXT_CLASSIFICATION but the file has no label column (columns found: {show_columns(columns)}); "
            f"add one named {' or '.join(ALIASES['labels'][:2])}, or map yours with column_mapping",
            reason="NO_LABEL_COLUMN",
        )
    if task == GENERATION and "target" not in resolved:
        raise InvalidArgument.for_field(
            "header.task",
            f"task is TEXT_GENERATION but the file has no target column (columns found: {show_columns(columns)}); "
            "add one named target, or map yours with column_mapping",
            reason="NO_TARGET_COLUMN",
        )
    if task in (CLASSIFICATION, GENERATION):
        return task
    if task != common_pb2.TASK_UNSPECIFIED:
        raise InvalidArgument.for_field("header.task", f"unknown task value {task}")
    if "target" in resolved:
        return GENERATION
    if "labels" in resolved:
        return CLASSIFICATION
    raise InvalidArgument.for_field(
        "header.task",
        f"task is unspecified and can not be inferred: the file has neither a target column (generation) nor a "
        f"label column (classification); columns found: {show_columns(columns)}",
        reason="TASK_NOT_INFERRED",
    )


def show_columns(columns: list[str]) -> str:
    shown = ", ".join(repr(c) for c in columns[:30])
    return (shown + f", … ({len(columns)} in all)") if len(columns) > 30 else (shown or "none")
