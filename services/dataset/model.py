"""What parsing a dataset file works with and produces: the formats and tasks,
the options of one parse, a row's issues, the file's statistics and result."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from textft.v1 import common_pb2, dataset_pb2

CSV = dataset_pb2.DATASET_FORMAT_CSV
TSV = dataset_pb2.DATASET_FORMAT_TSV
JSONL = dataset_pb2.DATASET_FORMAT_JSONL
CLASSIFICATION = common_pb2.TASK_TEXT_CLASSIFICATION
GENERATION = common_pb2.TASK_TEXT_GENERATION

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Issue:
    """A validation finding. row 0 means the whole file (e.g. UNKNOWN_COLUMN)."""

    row: int
    severity: str
    code: str
    message: str
    field: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ParseOptions:
    format: int
    task: int = common_pb2.TASK_UNSPECIFIED
    # canonical name (or "label") -> file column
    column_mapping: dict[str, str] = field(default_factory=dict)
    max_text_chars: int = 100_000
    # False reads every CSV/TSV record with the csv module and checks every cell
    # for bad bytes: the same result, slower (tests compare the two).
    fast: bool = True

    @property
    def max_line_bytes(self) -> int:
        # Text and target at up to 4 UTF-8 bytes per character, plus room for
        # the other columns; a longer physical line can not be a valid row.
        return 8 * self.max_text_chars + 1024 * 1024


@dataclass
class Stats:
    row_count: int = 0
    valid_row_count: int = 0
    invalid_row_count: int = 0
    warning_count: int = 0
    label_counts: dict[str, int] = field(default_factory=dict)
    target_count: int = 0
    text_length_min: int = 0
    text_length_max: int = 0
    text_length_mean: float = 0.0
    text_length_p50: int = 0
    text_length_p95: int = 0
    # Valid rows a split column marks as train / eval.
    split_train_row_count: int = 0
    split_eval_row_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ParseResult:
    task: int
    # canonical name -> file column actually used
    column_mapping: dict[str, str]
    stats: Stats
    label_names: list[str]
    issue_count: int
    columns: list[str] = field(default_factory=list)  # the header, or the keys of a JSONL sample
