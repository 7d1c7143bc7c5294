"""Parsing and row validation of dataset files (CSV, TSV, JSONL). Pure: no gRPC,
no store; reads a binary file, writes normalised rows and issues to writers.

This module is the façade the service imports; the work is done in
    model.py       formats, tasks, ParseOptions, Issue, Stats, ParseResult
    columns.py     format from a filename, column aliases and mapping, the task
    values.py      cell values: bad bytes, labels, scalars, metadata, splits
    readers.py     CSV/TSV and JSONL readers
    digests.py     the row digests duplicate detection remembers
    validation.py  the row rules, statistics, prepare() and validate()

Memory stays bounded whatever the file size: the source is read a block of
whole lines at a time (with a byte cap per line), statistics are kept as histograms,
and duplicate detection remembers at most DUPLICATE_TRACK_LIMIT row digests.

Row numbers are 1-based data-record numbers, header excluded. Blank lines are
skipped but keep their number, so for files without multi-line fields row N is
line N+1 of a CSV/TSV and line N of a JSONL file.
"""

from __future__ import annotations

from .columns import (
    ALIASES,
    COMMA_LABEL_COLUMNS,
    EXTENSIONS,
    MAPPING_KEYS,
    SOURCE_SUFFIX,
    check_column_mapping,
    infer_format,
    infer_task,
    resolve_columns,
)
from .digests import DUPLICATE_TRACK_LIMIT
from .model import (
    CLASSIFICATION,
    CSV,
    ERROR,
    GENERATION,
    JSONL,
    TSV,
    WARNING,
    Issue,
    ParseOptions,
    ParseResult,
    Stats,
)
from .readers import JSONL_SAMPLE_LINES
from .validation import Validation, prepare, validate, validate_bytes
from .values import SPLITS, parse_labels

__all__ = [
    "ALIASES",
    "CLASSIFICATION",
    "COMMA_LABEL_COLUMNS",
    "CSV",
    "DUPLICATE_TRACK_LIMIT",
    "ERROR",
    "EXTENSIONS",
    "GENERATION",
    "JSONL",
    "JSONL_SAMPLE_LINES",
    "MAPPING_KEYS",
    "SOURCE_SUFFIX",
    "SPLITS",
    "TSV",
    "WARNING",
    "Issue",
    "ParseOptions",
    "ParseResult",
    "Stats",
    "Validation",
    "check_column_mapping",
    "infer_format",
    "infer_task",
    "parse_labels",
    "prepare",
    "resolve_columns",
    "validate",
    "validate_bytes",
]
