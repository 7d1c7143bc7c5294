"""Parsing and row validation of dataset files (CSV, TSV, JSONL). Pure: no gRPC,
no store; reads a binary file, writes normalised rows and issues to writers.

Memory stays bounded whatever the file size: the source is read one physical
line at a time (with a byte cap per line), statistics are kept as histograms,
and duplicate detection remembers at most DUPLICATE_TRACK_LIMIT row digests.

Row numbers are 1-based data-record numbers, header excluded. Blank lines are
skipped but keep their number, so for files without multi-line fields row N is
line N+1 of a CSV/TSV and line N of a JSONL file.
"""

from __future__ import annotations

import csv
import io
import json
import math
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO

from textft.errors import InvalidArgument
from textft.v1 import common_pb2, dataset_pb2

CSV = dataset_pb2.DATASET_FORMAT_CSV
TSV = dataset_pb2.DATASET_FORMAT_TSV
JSONL = dataset_pb2.DATASET_FORMAT_JSONL
CLASSIFICATION = common_pb2.TASK_TEXT_CLASSIFICATION
GENERATION = common_pb2.TASK_TEXT_GENERATION

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
SPLITS = {"train": "train", "training": "train", "eval": "eval", "validation": "eval", "valid": "eval", "val": "eval"}
SPLITS.update({"test": "eval", "dev": "eval"})

# Columns of the sample that decides a JSONL file's columns and task.
JSONL_SAMPLE_LINES = 1000
DUPLICATE_TRACK_LIMIT = 1_000_000
# Recorded with each version; bump it when a change makes some file validate differently.
# CSV/TSV rows take _Validator.fast_path first (tests switch it off to compare).
FAST_PATH = True
MAX_ISSUES_PER_CODE_IN_MESSAGE = 5

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


# ---------------------------------------------------------------- helpers


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
                f"column {column!r} is not in the file; columns found: {_show(columns)}",
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
            f"the file has no text column; columns found: {_show(columns)}. Accepted names: {_accepted_names()}. "
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
            f"task is TEXT_CLASSIFICATION but the file has no label column (columns found: {_show(columns)}); "
            f"add one named {' or '.join(ALIASES['labels'][:2])}, or map yours with column_mapping",
            reason="NO_LABEL_COLUMN",
        )
    if task == GENERATION and "target" not in resolved:
        raise InvalidArgument.for_field(
            "header.task",
            f"task is TEXT_GENERATION but the file has no target column (columns found: {_show(columns)}); "
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
        f"label column (classification); columns found: {_show(columns)}",
        reason="TASK_NOT_INFERRED",
    )


def _show(columns: list[str]) -> str:
    shown = ", ".join(repr(c) for c in columns[:30])
    return (shown + f", … ({len(columns)} in all)") if len(columns) > 30 else (shown or "none")


def _bad_unicode(value: str) -> int:
    """Index of the first character that is not valid UTF-8 (a surrogate), or -1."""
    try:
        value.encode("utf-8")
        return -1
    except UnicodeEncodeError as e:
        return e.start


def _bad_unicode_any(value: Any) -> bool:
    if isinstance(value, str):
        return _bad_unicode(value) >= 0
    if isinstance(value, dict):
        return any(_bad_unicode_any(k) or _bad_unicode_any(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_bad_unicode_any(v) for v in value)
    return False


def parse_labels(value: Any, comma: bool = False) -> list[str]:
    """A label cell: a JSON list (in a string or not), else `a|b` (`a,b` for
    Clarifai's concepts columns). Raises ValueError for a malformed list."""
    if type(value) is str:  # the common case, a single label: no list to build and check
        text = value.strip()
        if not text.startswith("[") and ("," if comma else "|") not in text:
            return [text] if text else []
    if value is None:
        return []
    if isinstance(value, list):
        items = value
    elif isinstance(value, bool):
        items = [str(value).lower()]
    elif isinstance(value, (int, float)):
        items = [value]
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError:
                raise ValueError(f"{text[:80]!r} looks like a JSON list but is not valid JSON") from None
            if not isinstance(items, list):
                raise ValueError("not a JSON list")
        else:
            items = text.split("," if comma else "|")
    else:
        raise ValueError(f"labels must be a string or a list, got {type(value).__name__}")
    labels: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise ValueError(f"each label must be a string, got {json.dumps(item)[:80]}")
        label = str(item).strip()
        if label and label not in labels:
            labels.append(label)
    return labels


def _scalar(value: Any) -> str | None:
    """A cell as a string; None for values that are not scalars."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    return None


def _metadata(value: Any) -> dict[str, Any]:
    """A metadata cell: an object, or a JSON object in a string (Clarifai's CSVs
    sometimes use single quotes). Raises ValueError."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            try:
                parsed = json.loads(value.replace("'", '"'))
            except json.JSONDecodeError:
                raise ValueError("metadata is not valid JSON") from None
        if isinstance(parsed, dict):
            return parsed
    raise ValueError("metadata must be a JSON object")


# ---------------------------------------------------------------- readers


@dataclass
class _Record:
    row: int
    values: dict[str, Any] | None  # file column -> value; None when unreadable
    issue: Issue | None = None  # why values is None


def _lines(source: BinaryIO, limit: int) -> Iterator[tuple[bytes, bool]]:
    """Physical lines, each at most `limit` bytes; an over-long line is drained
    and yielded as (first part, True) so memory stays bounded."""
    while True:
        line = source.readline(limit)
        if not line:
            return
        if len(line) >= limit and not line.endswith(b"\n"):
            while True:
                rest = source.readline(limit)
                if not rest or rest.endswith(b"\n"):
                    break
            yield line, True
        else:
            yield line, False


class _DelimitedReader:
    """CSV/TSV with a header line. Lines are decoded with surrogateescape, so bad
    bytes survive to the row they belong to and are reported there; the csv
    module still sees whole records (quoted multi-line fields work)."""

    BLOCK = 1024 * 1024  # below any max_line_bytes, so an over-long line spans two blocks

    def __init__(self, source: BinaryIO, delimiter: str, options: ParseOptions) -> None:
        self.options = options
        self.delimiter = delimiter
        self.source = source
        limit = options.max_line_bytes
        if csv.field_size_limit() < limit:
            csv.field_size_limit(limit)  # process-wide; only ever raised
        # Lines come through C iterators (StringIO splits on "\n" only, as
        # readline did): no Python frame per line. Lines of the common shapes
        # are split without the csv module (records()); the others are handed
        # to it, and it reads on from the same lines for a multi-line field.
        self._lines = chain.from_iterable(map(io.StringIO, self._text_blocks()))
        self._handed = _HandBack(self._lines)
        self._reader = csv.reader(self._handed, delimiter=delimiter)
        self.columns = self._header()

    def _text_blocks(self) -> Iterator[str]:
        """The file decoded in blocks of whole lines. A line over max_line_bytes
        (which memory would have to hold) stops the file with LINE_TOO_LONG."""
        limit = self.options.max_line_bytes
        carry = b""  # the unfinished last line of the previous blocks
        lines = 0  # newlines before carry
        first = True
        while True:
            block = self.source.read(self.BLOCK)
            if first:
                first = False
                if block.startswith(b"\xef\xbb\xbf"):
                    block = block[3:]  # UTF-8 byte order mark (Excel)
            end = block.rfind(b"\n")
            # Lines inside a block are shorter than the limit; only the one
            # that carries over from earlier blocks can be longer.
            if carry and len(carry) + (block.find(b"\n") if end >= 0 else len(block)) >= limit:
                raise InvalidArgument(
                    f"line {lines + 1} is longer than {limit} bytes; rows are limited "
                    f"to {self.options.max_text_chars} characters of text (max_text_chars)",
                    reason="LINE_TOO_LONG",
                )
            if not block:
                if carry:
                    yield carry.decode("utf-8", "surrogateescape")
                return
            if end < 0:
                carry += block
                continue
            text = carry + block[: end + 1] if carry else block[: end + 1]
            lines += text.count(b"\n")
            carry = block[end + 1 :]
            yield text.decode("utf-8", "surrogateescape")

    def _header(self) -> list[str]:
        try:
            return self._read_header()
        except csv.Error as e:  # e.g. a bare carriage return inside the header line
            raise InvalidArgument(
                f"the header line could not be read as {'CSV' if self.delimiter == ',' else 'TSV'}: {e}",
                reason="BAD_HEADER",
            ) from None

    def _read_header(self) -> list[str]:
        for record in self._reader:
            if not record or all(not cell.strip() for cell in record):
                continue
            columns = [cell.strip() for cell in record]
            bad = next((c for c in columns if _bad_unicode(c) >= 0), None)
            if bad is not None:
                raise InvalidArgument(
                    "the header line is not valid UTF-8; save the file as UTF-8", reason="BAD_UTF8_HEADER"
                )
            if len(set(columns)) != len(columns):
                dupes = sorted({c for c in columns if columns.count(c) > 1})
                raise InvalidArgument(f"the header repeats column(s) {_show(dupes)}", reason="DUPLICATE_COLUMN")
            self._header_line = self._reader.line_num
            return columns
        raise InvalidArgument("the file is empty: expected a header line and data rows", reason="EMPTY_FILE")

    def records(self) -> Iterator[_Record | tuple[int, list[str]]]:
        """(row, cells) for each record with the header's width, a _Record with
        its issue for the others; blank lines skipped."""
        if not FAST_PATH:
            for row, record in enumerate(self._csv_records(), 1):
                item = self._odd(row, record)
                if item is not None:
                    yield item
            return
        delimiter, handed, reader = self.delimiter, self._handed, self._reader
        width = len(self.columns)
        row = 0
        for line in self._lines:
            row += 1  # a blank line keeps its number; a quoted multi-line record counts once
            record = _split_simple(line, delimiter)
            if record is None:  # the csv module reads it (and the lines of a multi-line field)
                handed.line = line
                try:
                    record = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    yield self._odd(row, e)  # type: ignore[misc]
                    continue
            if len(record) == width and (width > 1 or record[0].strip()):
                yield row, record
            else:
                item = self._odd(row, record)
                if item is not None:
                    yield item

    def _csv_records(self) -> Iterator[list[str] | csv.Error]:
        while True:
            try:
                yield next(self._reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield e

    def _odd(self, row: int, record: list[str] | csv.Error) -> _Record | tuple[int, list[str]] | None:
        """What records() yields for a record: None for a blank line."""
        if isinstance(record, csv.Error):
            code = "TOO_LONG" if "field limit" in str(record) else "BAD_CSV"
            return _Record(row, None, Issue(row, ERROR, code, f"unreadable record: {record}"))
        width = len(self.columns)
        if len(record) == width and (width > 1 or record[0].strip()):
            return row, record
        if len(record) <= 1 and not "".join(record).strip():
            return None
        hint = "; quote fields that contain the delimiter" if len(record) > width else ""
        message = f"expected {width} columns as in the header, found {len(record)}{hint}"
        return _Record(row, None, Issue(row, ERROR, "WRONG_COLUMN_COUNT", message))


class _HandBack:
    """The lines the csv module reads: a line handed back first, then the rest."""

    def __init__(self, lines: Iterator[str]) -> None:
        self.lines = lines
        self.line: str | None = None

    def __iter__(self) -> _HandBack:
        return self

    def __next__(self) -> str:
        line = self.line
        if line is None:
            return next(self.lines)
        self.line = None
        return line


def _split_simple(line: str, delimiter: str) -> list[str] | None:
    """The cells of one line as the csv module reads them, for the common
    shapes: no quotes, or whole fields in quotes with no "" inside (what
    spreadsheets and pandas write for text with commas). None for anything
    else (escaped or unbalanced quotes, a carriage return inside, NUL)."""
    if line[-1:] == "\n":
        line = line[:-2] if line[-2:] == "\r\n" else line[:-1]
    if "\r" in line or "\x00" in line:
        return None
    if '"' not in line:
        return line.split(delimiter) if line else []
    parts = line.split('"')  # outside, inside, outside, ... quotes
    n = len(parts)
    head = parts[0]
    if n % 2 == 0 or (head and head[-1] != delimiter):
        return None
    cells = head.split(delimiter)[:-1]
    for k in range(1, n, 2):
        cells.append(parts[k])
        after = parts[k + 1]
        if k + 2 < n:  # another quoted field follows: delimiters on both sides
            if not after or after[0] != delimiter or after[-1] != delimiter:
                return None
            cells += after[1:].split(delimiter)[:-1]
        elif after:
            if after[0] != delimiter:
                return None
            cells += after[1:].split(delimiter)
    return cells


class _JsonlReader:
    """One JSON object per line. Columns are the keys seen in the first
    JSONL_SAMPLE_LINES lines (decides the task and the column mapping)."""

    def __init__(self, source: BinaryIO, options: ParseOptions, columns: list[str] | None = None) -> None:
        self.source = source
        self.options = options
        # Known columns (a version read again) spare the sample and its seek.
        self.columns = list(columns) if columns is not None else self._sample()

    def _sample(self) -> list[str]:
        keys: dict[str, None] = {}
        content = 0
        for number, (raw, too_long) in enumerate(self._raw_lines(), 1):
            if number > JSONL_SAMPLE_LINES:
                break
            if too_long or raw.strip():
                content += 1
            if too_long:
                continue
            try:
                value = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(value, dict):
                for key in value:
                    keys.setdefault(str(key), None)
        self.source.seek(0)
        if content == 0:
            raise InvalidArgument("the file is empty: expected one JSON object per line", reason="EMPTY_FILE")
        return list(keys)

    def _raw_lines(self) -> Iterator[tuple[bytes, bool]]:
        for number, (raw, too_long) in enumerate(_lines(self.source, self.options.max_line_bytes), 1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # UTF-8 byte order mark
            yield raw, too_long

    def __iter__(self) -> Iterator[_Record]:
        for row, (raw, too_long) in enumerate(self._raw_lines(), 1):
            if too_long:
                yield _Record(
                    row, None, Issue(row, ERROR, "TOO_LONG", f"line longer than {self.options.max_line_bytes} bytes")
                )
                continue
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                issue = Issue(
                    row, ERROR, "BAD_UTF8", f"not valid UTF-8 (byte offset {e.start}); save the file as UTF-8"
                )
                yield _Record(row, None, issue)
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                yield _Record(row, None, Issue(row, ERROR, "BAD_JSON", f"not valid JSON: {e.msg} at column {e.colno}"))
                continue
            if not isinstance(value, dict):
                kind = type(value).__name__
                yield _Record(row, None, Issue(row, ERROR, "BAD_JSON", f"expected a JSON object, got a {kind}"))
                continue
            yield _Record(row, value)


# ---------------------------------------------------------------- validation


class _DigestTable:
    """64-bit row digest -> first row number, in two flat arrays (open
    addressing, linear probing): 12-24 bytes per row where a dict of bytes
    needs over 100, so a million tracked rows cost about 24 MB. Row numbers
    are kept in 32 bits until one needs more."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        # array * n: zeroed without a temporary buffer of the same size.
        self._keys = array("Q", [0]) * capacity
        self._rows = array("I", [0]) * capacity
        self._mask = capacity - 1
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def get(self, key: int) -> int:
        """The row stored for key, or 0."""
        keys, i = self._keys, key & self._mask
        while True:
            found = keys[i]
            if found == key:
                return self._rows[i]
            if found == 0:
                return 0
            i = (i + 1) & self._mask

    def first_or_add(self, key: int, row: int) -> int:
        """get() and add() in one probe: the row stored for key; else 0 once
        row is stored, or -1 when the table already holds `limit` keys."""
        keys, mask = self._keys, self._mask
        i = key & mask
        while True:
            found = keys[i]
            if found == key:
                return self._rows[i]
            if not found:
                break
            i = (i + 1) & mask
        if self._count >= DUPLICATE_TRACK_LIMIT:
            return -1
        if 2 * (self._count + 1) > len(keys) or (row > 0xFFFF_FFFF and self._rows.typecode != "Q"):
            self.add(key, row)
            return 0
        keys[i] = key
        self._rows[i] = row
        self._count += 1
        return 0

    def add(self, key: int, row: int) -> None:
        """Stores a key that get() did not find."""
        if 2 * (self._count + 1) > len(self._keys):
            self._grow()
        if row > 0xFFFF_FFFF and self._rows.typecode != "Q":
            self._rows = array("Q", self._rows)
        keys, i = self._keys, key & self._mask
        while keys[i]:
            i = (i + 1) & self._mask
        keys[i] = key
        self._rows[i] = row
        self._count += 1

    def _grow(self) -> None:
        old_keys, old_rows = self._keys, self._rows
        capacity = 2 * len(old_keys)
        self._keys, self._rows, self._mask = (
            array("Q", [0]) * capacity,
            array(old_rows.typecode, [0]) * capacity,
            capacity - 1,
        )
        keys, rows, mask = self._keys, self._rows, self._mask
        for k, r in zip(old_keys, old_rows, strict=True):
            if k:
                i = k & mask
                while keys[i]:
                    i = (i + 1) & mask
                keys[i], rows[i] = k, r


class _Validator:
    """Turns records into normalised rows or issues, and keeps the statistics."""

    def __init__(self, task: int, resolved: dict[str, str], options: ParseOptions) -> None:
        self.task = task
        self.resolved = resolved
        self.options = options
        self.stats = Stats()
        self.labels: Counter[str] = Counter()
        self.first_row: dict[str, int] = {}  # label -> first valid row carrying it
        self.lengths: Counter[int] = Counter()  # histogram: exact percentiles, bounded memory
        self.seen = _DigestTable()
        self.duplicates_partial = False
        # JSONL objects need not all use the same key names: aliases are
        # resolved per row there, except for explicitly mapped columns.
        self.per_row = options.format == JSONL
        self.explicit = check_column_mapping(options.column_mapping)
        self._comma: dict[str, bool] = {}  # label column -> whether commas separate its labels

    def _columns(self, values: dict[str, Any]) -> dict[str, str]:
        if not self.per_row:
            return self.resolved
        cols = dict(self.resolved)
        for canonical, aliases in ALIASES.items():
            if canonical in self.explicit or cols.get(canonical) in values:
                continue
            found = next((alias for alias in aliases if alias in values), None)
            if found is not None:
                cols[canonical] = found
        return cols

    @staticmethod
    def _get(values: dict[str, Any], cols: dict[str, str], canonical: str) -> Any:
        column = cols.get(canonical)
        return values.get(column) if column is not None else None

    def check(self, record: _Record) -> tuple[dict[str, Any] | None, list[Issue]]:
        """Returns (normalised row or None, issues of this row)."""
        row = record.row
        if record.values is None:
            assert record.issue is not None
            return None, [record.issue]
        values = record.values
        cols = self._columns(values)
        errors: list[Issue] = []
        warnings: list[Issue] = []
        # Bad bytes first: a decoded-with-replacement value would mislead every other check.
        for column in cols.values():
            value = values.get(column)
            if isinstance(value, str):
                if value.isascii():  # plain ASCII holds no surrogate: skip the encode
                    continue
                at = _bad_unicode(value)
                if at < 0:
                    continue
            elif _bad_unicode_any(value):
                at = -1
            else:
                continue
            where = f" at character {at + 1}" if at >= 0 else ""
            errors.append(Issue(row, ERROR, "BAD_UTF8", f"column {column!r} is not valid UTF-8{where}", column))
        if errors:
            return None, errors

        text_column = cols["text"]
        text = values.get(text_column)
        if not isinstance(text, str):
            text = _scalar(text)
        if text is None:
            errors.append(Issue(row, ERROR, "INVALID_VALUE", "text must be a string", text_column))
            text = ""
        elif not text.strip():
            errors.append(Issue(row, ERROR, "EMPTY_TEXT", "text is missing or empty", text_column))
        elif len(text) > self.options.max_text_chars:
            errors.append(
                Issue(
                    row,
                    ERROR,
                    "TOO_LONG",
                    f"text has {len(text)} characters; the limit is {self.options.max_text_chars}",
                    text_column,
                )
            )

        labels: list[str] = []
        labels_column = cols.get("labels")
        if labels_column is not None:
            try:
                comma = self._comma.get(labels_column)
                if comma is None:
                    comma = self._comma[labels_column] = labels_column.strip().lower() in COMMA_LABEL_COLUMNS
                labels = parse_labels(values.get(labels_column), comma)
            except ValueError as e:
                errors.append(Issue(row, ERROR, "BAD_LABEL", str(e), cols["labels"]))
        if self.task == CLASSIFICATION and not labels and not any(i.code == "BAD_LABEL" for i in errors):
            field_name = cols.get("labels", "label")
            errors.append(Issue(row, ERROR, "MISSING_LABEL", "classification rows need a label", field_name))

        target = ""
        if "target" in cols:
            raw_target = _scalar(self._get(values, cols, "target"))
            if raw_target is None:
                errors.append(Issue(row, ERROR, "INVALID_VALUE", "target must be a string", cols["target"]))
            else:
                target = raw_target
                if len(target) > self.options.max_text_chars:
                    errors.append(
                        Issue(
                            row,
                            ERROR,
                            "TOO_LONG",
                            f"target has {len(target)} characters; the limit is {self.options.max_text_chars}",
                            cols["target"],
                        )
                    )
        if self.task == GENERATION and not target.strip() and not any(i.field == cols.get("target") for i in errors):
            field_name = cols.get("target", "target")
            errors.append(Issue(row, ERROR, "MISSING_TARGET", "generation rows need a target", field_name))

        id_column = cols.get("id")
        row_id = values.get(id_column) if id_column is not None else None
        if not isinstance(row_id, str):
            row_id = _scalar(row_id)
        if row_id is None:
            errors.append(Issue(row, ERROR, "INVALID_VALUE", "id must be a string", cols["id"]))
            row_id = ""

        metadata: dict[str, Any] = {}
        if "metadata" in cols:
            try:
                metadata = _metadata(self._get(values, cols, "metadata"))
            except ValueError as e:
                warnings.append(
                    Issue(
                        row,
                        WARNING,
                        "BAD_METADATA",
                        f"{e}; the row is kept without metadata",
                        cols["metadata"],
                    )
                )

        split = ""
        raw_split = _scalar(self._get(values, cols, "split"))
        if raw_split:
            split = SPLITS.get(raw_split.strip().lower(), "")
            if not split:
                warnings.append(
                    Issue(
                        row,
                        WARNING,
                        "BAD_SPLIT",
                        f"split {raw_split[:40]!r} is not train or eval; the trainer will assign the row",
                        cols["split"],
                    )
                )

        if errors:
            return None, errors + warnings

        parts = [text, labels[0], "\x01", target] if len(labels) == 1 else [text, *sorted(labels), "\x01", target]
        # Python's 64-bit string hash (SipHash, seeded per process): the same
        # rows share a key, as with a cryptographic digest, at a quarter of its
        # cost; distinct rows collide as rarely as with any 64-bit digest.
        key = hash("\x00".join(parts)) & 0xFFFF_FFFF_FFFF_FFFF | 1  # never 0: 0 marks an empty slot
        first = self.seen.get(key)
        if first:
            warnings.append(
                Issue(
                    row, WARNING, "DUPLICATE", f"same text{self._what()} as row {first}; the row is kept", text_column
                )
            )
        elif len(self.seen) < DUPLICATE_TRACK_LIMIT:
            self.seen.add(key, row)
        else:
            self.duplicates_partial = True

        normalised = {
            "row": row,
            "text": text,
            "labels": labels,
            "target": target,
            "id": row_id,
            "metadata": metadata,
            "split": split,
        }
        return normalised, warnings

    def fast_path(self, columns: list[str]) -> Callable[[int, list[str]], dict[str, Any] | None]:
        """A checker for CSV/TSV cells that handles the common row (valid, no
        warning, single label, no metadata) with the least work, counting it as
        count() would; it returns None for anything else, which then takes
        check(). About three times faster; the same rows, issues and stats
        (tests/test_dataset_parsing.py compares the two)."""
        index = {name: columns.index(column) for name, column in self.resolved.items()}
        ti = index["text"]
        li, gi, ii, mi, si = (index.get(name, -1) for name in ("labels", "target", "id", "metadata", "split"))
        separator = "," if li >= 0 and self.resolved["labels"].strip().lower() in COMMA_LABEL_COLUMNS else "|"
        limit = self.options.max_text_chars
        need_label, need_target = self.task == CLASSIFICATION, self.task == GENERATION
        stats, counts, first_row, lengths, seen = self.stats, self.labels, self.first_row, self.lengths, self.seen
        others = [i for i in (gi, ii, si) if i >= 0]

        def check(row: int, cells: list[str]) -> dict[str, Any] | None:
            text = cells[ti]
            if not text.isascii() and _bad_unicode(text) >= 0:
                return None
            if len(text) > limit or not text.strip():
                return None
            for i in others:
                cell = cells[i]
                if not cell.isascii() and _bad_unicode(cell) >= 0:
                    return None
            if mi >= 0 and cells[mi]:
                return None
            if li >= 0:
                label = cells[li]
                if not label.isascii() and _bad_unicode(label) >= 0:
                    return None
                label = label.strip()
                if not label or label[0] == "[" or separator in label:
                    return None
                labels = [label]
            elif need_label:
                return None
            else:
                labels = []
            target = cells[gi] if gi >= 0 else ""
            if len(target) > limit or (need_target and not target.strip()):
                return None
            split = ""
            if si >= 0 and cells[si]:
                split = SPLITS.get(cells[si].strip().lower(), "")
                if not split:
                    return None
            key = hash("\x00".join((text, label, "\x01", target) if labels else (text, "\x01", target)))
            key = key & 0xFFFF_FFFF_FFFF_FFFF | 1
            first = seen.first_or_add(key, row)
            if first > 0:
                return None  # a duplicate: check() reports it
            if first < 0:
                self.duplicates_partial = True
            stats.row_count += 1
            stats.valid_row_count += 1
            if labels:
                n = counts.get(label)
                if n is None:
                    counts[label] = 1
                    first_row.setdefault(label, row)
                else:
                    counts[label] = n + 1
            if target:
                stats.target_count += 1
            lengths[len(text)] += 1
            if split == "eval":
                stats.split_eval_row_count += 1
            elif split == "train":
                stats.split_train_row_count += 1
            return {
                "row": row,
                "text": text,
                "labels": labels,
                "target": target,
                "id": cells[ii] if ii >= 0 else "",
                "metadata": {},
                "split": split,
            }

        return check

    def _what(self) -> str:
        return {CLASSIFICATION: " and labels", GENERATION: " and target"}.get(self.task, "")

    def count(self, normalised: dict[str, Any] | None, issues: list[Issue]) -> None:
        s = self.stats
        s.row_count += 1
        if issues:
            s.warning_count += sum(1 for i in issues if i.severity == WARNING)
        if normalised is None:
            s.invalid_row_count += 1
            return
        s.valid_row_count += 1
        counts, first_row = self.labels, self.first_row
        for label in normalised["labels"]:
            n = counts.get(label)
            if n is None:
                counts[label] = 1
                first_row.setdefault(label, normalised["row"])
            else:
                counts[label] = n + 1
        if normalised["target"]:
            s.target_count += 1
        self.lengths[len(normalised["text"])] += 1
        split = normalised["split"]
        if split == "eval":
            s.split_eval_row_count += 1
        elif split == "train":
            s.split_train_row_count += 1

    def finish(self) -> Stats:
        s = self.stats
        s.label_counts = dict(sorted(self.labels.items()))
        total = sum(self.lengths.values())
        if total:
            ordered = sorted(self.lengths.items())
            s.text_length_min = ordered[0][0]
            s.text_length_max = ordered[-1][0]
            s.text_length_mean = sum(length * n for length, n in ordered) / total
            s.text_length_p50 = _percentile(ordered, total, 0.50)
            s.text_length_p95 = _percentile(ordered, total, 0.95)
        return s


def _percentile(ordered: list[tuple[int, int]], total: int, q: float) -> int:
    """Nearest-rank percentile over a (value, count) histogram."""
    rank = max(1, math.ceil(q * total))
    seen = 0
    for value, n in ordered:
        seen += n
        if seen >= rank:
            return value
    return ordered[-1][0]


@dataclass
class Validation:
    """A file whose header (columns, task) has been checked; run() validates its rows."""

    reader: _DelimitedReader | _JsonlReader
    resolved: dict[str, str]
    unknown: list[str]
    task: int
    options: ParseOptions

    def run(self, write_row: Callable[[dict[str, Any]], None], write_issue: Callable[[Issue], None]) -> ParseResult:
        return _run(self, write_row, write_issue)


def prepare(source: BinaryIO, options: ParseOptions, jsonl_columns: list[str] | None = None) -> Validation:
    """Reads and checks the header (CSV/TSV) or a sample (JSONL; not read when
    jsonl_columns gives its columns): the columns, their mapping and the task.
    Raises InvalidArgument for file-level problems (empty, no text column, a
    task that does not fit the columns), so a caller learns about them before
    it commits to anything."""
    reader: _DelimitedReader | _JsonlReader
    if options.format == JSONL:
        reader = _JsonlReader(source, options, jsonl_columns)
    elif options.format in (CSV, TSV):
        reader = _DelimitedReader(source, "," if options.format == CSV else "\t", options)
    else:
        raise InvalidArgument.for_field("header.format", f"unknown format value {options.format}")
    resolved, unknown = resolve_columns(reader.columns, options.column_mapping)
    if options.format == JSONL:  # other aliases are used per row (see _Validator._columns)
        known = {alias for aliases in ALIASES.values() for alias in aliases}
        unknown = [c for c in unknown if c not in known]
    task = infer_task(options.task, resolved, reader.columns)
    return Validation(reader, resolved, unknown, task, options)


def validate(
    source: BinaryIO,
    options: ParseOptions,
    write_row: Callable[[dict[str, Any]], None],
    write_issue: Callable[[Issue], None],
) -> ParseResult:
    """Parses and validates a whole file (seekable binary stream), calling
    write_row for each valid normalised row and write_issue for each finding.
    Raises InvalidArgument for file-level problems (empty, no text column,
    task that does not fit the columns, a CSV line over the byte cap)."""
    return prepare(source, options).run(write_row, write_issue)


def _rows(prepared: Validation, validator: _Validator, emit: Callable[[Issue], None]) -> Iterator[dict[str, Any]]:
    """Checks every record: yields the valid rows, emits the issues."""
    reader = prepared.reader
    records: Iterator[_Record | tuple[int, list[str]]]
    fast: Callable[[int, list[str]], dict[str, Any] | None] | None = None
    if isinstance(reader, _DelimitedReader):
        records = reader.records()
        fast = validator.fast_path(reader.columns) if FAST_PATH else None
    else:
        records = iter(reader)
    columns = reader.columns
    for record in records:
        if type(record) is tuple:
            if fast is not None:
                normalised = fast(*record)
                if normalised is not None:
                    yield normalised
                    continue
            record = _Record(record[0], dict(zip(columns, record[1], strict=True)))
        normalised, issues = validator.check(record)  # type: ignore[arg-type]
        validator.count(normalised, issues)
        for issue in issues:
            emit(issue)
        if normalised is not None:
            yield normalised


def _run(
    prepared: Validation, write_row: Callable[[dict[str, Any]], None], write_issue: Callable[[Issue], None]
) -> ParseResult:
    resolved, unknown, task = prepared.resolved, prepared.unknown, prepared.task
    validator = _Validator(task, resolved, prepared.options)
    issue_count = 0

    def emit(issue: Issue) -> None:
        nonlocal issue_count
        issue_count += 1
        write_issue(issue)

    for column in unknown:
        validator.stats.warning_count += 1
        emit(Issue(0, WARNING, "UNKNOWN_COLUMN", f"column {column!r} is not used (ignored)", column))
    for row in _rows(prepared, validator, emit):
        write_row(row)
    if validator.stats.row_count == 0:
        raise InvalidArgument("the file has no data rows, only a header", reason="NO_DATA_ROWS")
    if validator.duplicates_partial:
        validator.stats.warning_count += 1
        emit(
            Issue(
                0,
                WARNING,
                "DUPLICATE_CHECK_PARTIAL",
                f"duplicates were looked for among the first {DUPLICATE_TRACK_LIMIT} distinct rows only",
            )
        )
    for label, n in sorted(validator.labels.items()):
        if n < 2:
            validator.stats.warning_count += 1
            emit(
                Issue(
                    validator.first_row[label],
                    WARNING,
                    "RARE_LABEL",
                    f"label {label[:80]!r} is on only {n} valid row; a model can hardly learn it from one example, "
                    "and it can not be in both the train and the eval split",
                    resolved.get("labels", "label"),
                )
            )
    if validator.stats.split_train_row_count and not validator.stats.split_eval_row_count:
        validator.stats.warning_count += 1
        emit(
            Issue(
                0,
                WARNING,
                "SPLIT_WITHOUT_EVAL",
                "the split column marks no valid row as eval; the trainer holds out a seeded random share instead",
                resolved.get("split", "split"),
            )
        )
    stats = validator.finish()
    return ParseResult(task, resolved, stats, sorted(stats.label_counts), issue_count, list(prepared.reader.columns))


def validate_bytes(data: bytes, options: ParseOptions) -> tuple[ParseResult, list[dict[str, Any]], list[Issue]]:
    """validate() over an in-memory file, collecting rows and issues (tests, previews)."""
    import io

    rows: list[dict[str, Any]] = []
    issues: list[Issue] = []
    result = validate(io.BytesIO(data), options, rows.append, issues.append)
    return result, rows, issues
