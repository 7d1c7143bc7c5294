"""Row validation: the row rules, the statistics they feed, and the run over a
whole file (prepare(), then Validation.run()).

The row rules live in one place, the checker Validator builds: every CSV, TSV
and JSONL record goes through it, whichever way it was read. ParseOptions.fast
only chooses shortcuts that skip work (the reader's split of plain lines, no
bad-byte scan while the file has been valid UTF-8, no parse_labels() call for
one plain label, no type checks of CSV/TSV cells); it never decides a row, and
the tests compare the two ways on the same files. Its largest shortcut: blocks
of CSV/TSV records that Arrow's reader took whole (readers.CellBlock) are
screened column by column (block_checker): rows the rules would find nothing
in go to the writer as column slices, without a Python object per cell, and
every other row goes through the checker, in row order.

The rules, in the order a row meets them. Errors drop the row: BAD_UTF8 (any
used column; the other rules are not run), text INVALID_VALUE / EMPTY_TEXT /
TOO_LONG, BAD_LABEL, MISSING_LABEL, target INVALID_VALUE / TOO_LONG,
MISSING_TARGET, id INVALID_VALUE. Warnings keep it: BAD_METADATA, BAD_SPLIT,
DUPLICATE (of an earlier valid row). The file-level warnings (UNKNOWN_COLUMN,
DUPLICATE_CHECK_PARTIAL, RARE_LABEL, SPLIT_WITHOUT_EVAL) come from _run().
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from textft.errors import InvalidArgument

from ..common import rows as stored_rows
from ..common.rows import COLUMNS, Row
from .columns import ALIASES, COMMA_LABEL_COLUMNS, check_column_mapping, infer_task, resolve_columns
from .digests import DUPLICATE_TRACK_LIMIT, DigestTable
from .model import CLASSIFICATION, ERROR, GENERATION, JSONL, WARNING, Issue, ParseOptions, ParseResult, Stats
from .readers import CellBlock, DelimitedReader, Reader, open_reader
from .values import SPLITS, bad_unicode, bad_unicode_any, parse_labels, parse_metadata, scalar

# check(row, the record's values (a CSV/TSV record's cells)) -> the normalised row, or None.
Check = Callable[[int, Sequence[Any]], Row | None]
# check_block(cells) -> the valid rows, in order: Rows, and column slices of the block.
CheckBlock = Callable[[CellBlock], Iterator[Row | pa.RecordBatch]]
_KEY_BITS = 0xFFFF_FFFF_FFFF_FFFF
# What str.isspace() and str.strip() take for space, as RE2 (Arrow's regex) spells
# it: the block checker must find a text blank exactly when check() does.
PYTHON_SPACES = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
PYTHON_SPACES += "\u2028\u2029\u202f\u205f\u3000"
_RE2_CHAR = "\\x{{{:x}}}"
_SPACE_CLASS = "".join(_RE2_CHAR.format(ord(c)) for c in PYTHON_SPACES)
_NOT_BLANK = f"[^{_SPACE_CLASS}]"  # a character strip() keeps
# Valid rows reach the writer in lists of this many: a call per batch, not per row.
ROW_BATCH = 1024


class Validator:
    """Turns records into normalised rows or issues, emits the issues, and keeps
    the statistics."""

    def __init__(
        self, task: int, resolved: dict[str, str], options: ParseOptions, emit: Callable[[Issue], None]
    ) -> None:
        self.task = task
        self.resolved = resolved
        self.options = options
        self.emit = emit
        self.stats = Stats()
        self.labels: Counter[str] = Counter()
        self.first_row: dict[str, int] = {}  # label -> first valid row carrying it
        self.lengths: Counter[int] = Counter()  # histogram: exact percentiles, bounded memory
        self.seen = DigestTable()
        self.duplicates_partial = False
        # JSONL objects need not all use the same key names: aliases are
        # resolved per row there, except for explicitly mapped columns.
        self.per_row = options.format == JSONL
        self.explicit = check_column_mapping(options.column_mapping)

    def columns(self, values: dict[str, Any]) -> dict[str, str]:
        """canonical -> file column for one record."""
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

    def reject(self, issues: list[Issue]) -> None:
        """Counts an invalid row and emits its issues."""
        s = self.stats
        s.row_count += 1
        s.invalid_row_count += 1
        s.warning_count += sum(1 for i in issues if i.severity == WARNING)
        for issue in issues:
            self.emit(issue)

    def checker(
        self, cols: dict[str, str], at: dict[str, int] | None = None, cells: DelimitedReader | None = None
    ) -> Check:
        """The row rules for records whose columns are `cols` (canonical -> file
        column), each canonical column's value at position at[name] of the
        values (default: in the order of cols); `cells`: the values are the
        cells (strings) of this CSV/TSV reader's records. The caller keeps one
        per distinct columns (a CSV/TSV file has one): the validator holds none,
        so no reference cycle keeps it and its digest table (tens of MB) past
        the run until the garbage collector's next full pass, which an upload
        of few Python objects rarely triggers."""
        at = at if at is not None else {name: k for k, name in enumerate(cols)}
        return self._checker(dict(cols), at, cells)

    def _checker(self, cols: dict[str, str], at: dict[str, int], cells: DelimitedReader | None) -> Check:
        # A closure over its columns rather than a method: the rules run once per
        # row, a large share of the ~8 µs a row costs an upload, and reads of
        # enclosing locals are the cheapest Python has.
        task, limit, emit, reject = self.task, self.options.max_text_chars, self.emit, self.reject
        text_column, labels_column, target_column = cols["text"], cols.get("labels"), cols.get("target")
        id_column, metadata_column, split_column = cols.get("id"), cols.get("metadata"), cols.get("split")
        ti, li, gi, ii, mi, si = (at.get(name, -1) for name in ("text", "labels", "target", "id", "metadata", "split"))
        comma, need_label, need_target = _rule_terms(task, labels_column)
        stats, counts, first_row, lengths, seen = self.stats, self.labels, self.first_row, self.lengths, self.seen

        # Shortcuts that skip work (the answers are the same without them): cells
        # are strings, a file read as valid UTF-8 so far holds no bad bytes, and
        # one plain label needs no parse. Off, "" as the separator is in every label.
        fast = self.options.fast
        strings = fast and cells is not None
        reader = cells if strings else None
        separator = ("," if comma else "|") if fast else ""

        def check(row: int, values: Sequence[Any]) -> dict[str, Any] | None:
            # Bad bytes first: a decoded-with-replacement value would mislead every other rule.
            if reader is None or reader.bad_bytes:
                bad = _bad_bytes(row, values, cols, at)
                if bad:
                    reject(bad)
                    return None
            # Errors come first in `issues`, then warnings; any error rejects the row.
            issues: list[Issue] = []

            text = values[ti]
            if not strings and not isinstance(text, str) and (text := scalar(text)) is None:
                issues.append(Issue(row, ERROR, "INVALID_VALUE", "text must be a string", text_column))
                text = ""
            elif not text.strip():
                issues.append(Issue(row, ERROR, "EMPTY_TEXT", "text is missing or empty", text_column))
            elif len(text) > limit:
                message = f"text has {len(text)} characters; the limit is {limit}"
                issues.append(Issue(row, ERROR, "TOO_LONG", message, text_column))

            labels: list[str] | None
            if labels_column is None:
                labels = []
            else:
                raw = values[li]
                one = raw.strip() if type(raw) is str else ""
                if one and one[0] != "[" and separator not in one:
                    labels = [one]  # one plain label, as parse_labels reads it, without the call
                else:
                    try:
                        labels = parse_labels(raw, comma)
                    except ValueError as e:
                        issues.append(Issue(row, ERROR, "BAD_LABEL", str(e), labels_column))
                        labels = None  # unreadable, which is not missing
            if need_label and not labels and labels is not None:
                field_name = cols.get("labels", "label")
                issues.append(Issue(row, ERROR, "MISSING_LABEL", "classification rows need a label", field_name))

            target = ""
            if target_column is not None:
                raw = values[gi]
                if not strings and not isinstance(raw, str):
                    raw = scalar(raw)
                if raw is None:
                    issues.append(Issue(row, ERROR, "INVALID_VALUE", "target must be a string", target_column))
                else:
                    target = raw
                    if len(target) > limit:
                        message = f"target has {len(target)} characters; the limit is {limit}"
                        issues.append(Issue(row, ERROR, "TOO_LONG", message, target_column))
            if need_target and not target.strip() and not any(i.field == target_column for i in issues):
                message = "generation rows need a target"
                issues.append(Issue(row, ERROR, "MISSING_TARGET", message, cols.get("target", "target")))

            row_id = "" if id_column is None else values[ii]
            if not strings and not isinstance(row_id, str) and (row_id := scalar(row_id)) is None:
                issues.append(Issue(row, ERROR, "INVALID_VALUE", "id must be a string", id_column))
                row_id = ""
            errors = len(issues)

            metadata: dict[str, Any] = {}
            if metadata_column is not None:
                try:
                    metadata = parse_metadata(values[mi])
                except ValueError as e:
                    message = f"{e}; the row is kept without metadata"
                    issues.append(Issue(row, WARNING, "BAD_METADATA", message, metadata_column))

            split = ""
            if split_column is not None:
                raw = values[si]
                if not strings and not isinstance(raw, str):
                    raw = scalar(raw)
                if raw:
                    split = SPLITS.get(raw.strip().lower(), "")
                    if not split:
                        message = f"split {raw[:40]!r} is not train or eval; the trainer will assign the row"
                        issues.append(Issue(row, WARNING, "BAD_SPLIT", message, split_column))

            if errors:  # (labels is None only with a BAD_LABEL)
                reject(issues)
                return None

            # The row's key: Python's 64-bit hash of (text, *labels, "\x01", target)
            # (SipHash of each string, seeded per process; the tuple's length and the
            # marker keep the fields apart): the same rows share a key, as with a
            # cryptographic digest, at a fraction of its cost; distinct rows collide
            # as rarely as with any 64-bit digest. check_block() computes the same.
            if len(labels) == 1:
                key = hash((text, labels[0], "\x01", target))
            else:
                key = hash((text, *sorted(labels), "\x01", target))
            first = seen.first_or_add(key & _KEY_BITS | 1, row)  # never 0: 0 marks an empty slot
            if first > 0:
                issues.append(_duplicate(row, first, task, text_column))
            elif first < 0:
                self.duplicates_partial = True

            stats.row_count += 1
            stats.valid_row_count += 1
            if issues:  # warnings only
                stats.warning_count += len(issues)
                for issue in issues:
                    emit(issue)
            for label in labels:
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
            return (row, text, labels, target, row_id, metadata, split)  # rows.COLUMNS order

        return check

    def block_checker(self, cols: dict[str, str], at: dict[str, int], check: Check) -> CheckBlock:
        """The row rules over a CellBlock's columns at once (Arrow compute), for
        CSV/TSV records whose columns are `cols`, at header positions `at`.
        A row is taken as a whole column slice only when the rules would find
        nothing in it: every condition below is one of check()'s, made strict
        where a shortcut would differ (a label with spaces around it is left to
        check()). Every other row goes through `check` (the checker of the same
        columns), in row order, so issues, duplicates and statistics come out as
        if each row had been checked alone; the tests compare the two paths."""
        task, limit, emit = self.task, self.options.max_text_chars, self.emit
        text_column, labels_column = cols["text"], cols.get("labels")
        ti, li, gi, ii, mi, si = (at.get(name, -1) for name in ("text", "labels", "target", "id", "metadata", "split"))
        comma, need_label, need_target = _rule_terms(task, labels_column)
        # One plain label, as check() reads it without parse_labels(): no space
        # around it (then strip() keeps it whole), no "[" first, no separator.
        separator = _RE2_CHAR.format(ord("," if comma else "|"))
        plain_label = f"^[^{_SPACE_CLASS}\\[{separator}](?:[^{separator}]*[^{_SPACE_CLASS}{separator}])?$"
        stats, counts, first_row, lengths, seen = self.stats, self.labels, self.first_row, self.lengths, self.seen

        def check_block(block: CellBlock) -> Iterator[Row | pa.RecordBatch]:
            table, first = block.table, block.first_row
            text = table.column(ti).chunk(0)
            # Arrow compute on the columns, numpy for the rest: a Python scalar as a
            # compute argument would import pandas (see _flags).
            ok = _flags(pc.match_substring_regex(text, _NOT_BLANK)) & _within(text, limit)
            labels = target = row_id = metadata = split = None
            if li >= 0:
                labels = table.column(li).chunk(0)
                ok &= _flags(pc.match_substring_regex(labels, plain_label))
            elif need_label:
                ok[:] = False  # MISSING_LABEL on every row
            if gi >= 0:
                target = table.column(gi).chunk(0)
                ok &= _within(target, limit)
                if need_target:
                    ok &= _flags(pc.match_substring_regex(target, _NOT_BLANK))
            elif need_target:
                ok[:] = False  # MISSING_TARGET on every row
            if ii >= 0:
                row_id = table.column(ii).chunk(0)
            if mi >= 0:  # parse_metadata(), per cell that has any
                encoded = []
                for k, cell in enumerate(table.column(mi).chunk(0).to_pylist()):
                    if not cell:
                        encoded.append("")
                        continue
                    try:
                        encoded.append(stored_rows.metadata_json(parse_metadata(cell)))
                    except ValueError:  # BAD_METADATA: check() warns
                        ok[k] = False
                        encoded.append("")
                metadata = stored_rows.strings(encoded)
            if si >= 0:  # SPLITS, per distinct cell
                cells = table.column(si).chunk(0).dictionary_encode()
                names = [SPLITS.get(cell.strip().lower(), "") for cell in cells.dictionary.to_pylist()]
                bad = np.array([not name for name in names], dtype=bool) & (
                    stored_rows.byte_lengths(cells.dictionary) > 0
                )
                indices = _int32s(cells.indices)
                ok &= ~bad[indices]  # BAD_SPLIT: check() warns
                split = pc.take(stored_rows.strings(names), cells.indices)

            def clean_rows(start: int, stop: int) -> pa.RecordBatch:
                """Rows [start, stop) of the block: valid, with at most a duplicate's warning."""
                size = stop - start
                texts = text.slice(start, size).to_pylist()
                names = labels.slice(start, size).to_pylist() if labels is not None else None
                targets = target.slice(start, size).to_pylist() if target is not None else None
                # The keys check() computes: hash((text, *labels, "\x01", target)).
                fields = [texts] + ([names] if names is not None else []) + [repeat("\x01", size)]
                fields.append(targets if targets is not None else repeat("", size))
                numbers = np.arange(first + start, first + stop, dtype=np.int64)
                first_or_add = seen.first_or_add
                for row, key in zip(numbers.tolist(), map(hash, zip(*fields, strict=False)), strict=False):
                    found = first_or_add(key & _KEY_BITS | 1, row)
                    if found > 0:
                        stats.warning_count += 1
                        emit(_duplicate(row, found, task, text_column))
                    elif found < 0:
                        self.duplicates_partial = True
                stats.row_count += size
                stats.valid_row_count += size
                if names is not None:
                    for name in set(names).difference(counts):
                        first_row.setdefault(name, first + start + names.index(name))
                    counts.update(names)
                if targets is not None:
                    stats.target_count += size - targets.count("")
                lengths.update(map(len, texts))
                chosen = None
                if split is not None:
                    chosen = split.slice(start, size)
                    splits = chosen.to_pylist()
                    stats.split_eval_row_count += splits.count("eval")
                    stats.split_train_row_count += splits.count("train")
                return stored_rows.columns_batch(
                    numbers,
                    text.slice(start, size),
                    None if labels is None else labels.slice(start, size),
                    None if target is None else target.slice(start, size),
                    None if row_id is None else row_id.slice(start, size),
                    None if metadata is None else metadata.slice(start, size),
                    chosen,
                )

            start = 0
            columns = table.columns
            for k in np.flatnonzero(~ok).tolist():  # the rows check() decides, in order
                if k > start:
                    yield clean_rows(start, k)
                normalised = check(first + k, [column[k].as_py() for column in columns])
                if normalised is not None:
                    yield normalised
                start = k + 1
            if start < table.num_rows:
                yield clean_rows(start, table.num_rows)

        return check_block

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


def _rule_terms(task: int, labels_column: str | None) -> tuple[bool, bool, bool]:
    """What both checkers derive from the task and the labels column: labels
    split on "," (Clarifai's concepts columns), rows need a label, a target."""
    comma = labels_column is not None and labels_column.strip().lower() in COMMA_LABEL_COLUMNS
    return comma, task == CLASSIFICATION, task == GENERATION


def _duplicate(row: int, first: int, task: int, column: str) -> Issue:
    what = {CLASSIFICATION: " and labels", GENERATION: " and target"}.get(task, "")
    return Issue(row, WARNING, "DUPLICATE", f"same text{what} as row {first}; the row is kept", column)


def _flags(mask: pa.Array) -> Any:
    """A boolean Arrow array without nulls as a numpy one, from its bitmap
    (to_numpy() imports pandas, ~45 MB of the service's memory, as does a
    Python scalar passed to a compute function)."""
    bits = np.frombuffer(mask.buffers()[1], np.uint8)
    return np.unpackbits(bits, count=mask.offset + len(mask), bitorder="little")[mask.offset :].astype(bool)


def _int32s(values: pa.Array) -> Any:
    """An int32 Arrow array without nulls as a numpy view (to_numpy() imports pandas)."""
    assert values.type == pa.int32() and not values.null_count
    return np.frombuffer(values.buffers()[1], np.int32, count=len(values), offset=4 * values.offset)


def _within(strings: pa.Array, limit: int) -> Any:
    """Whether each value is at most `limit` characters long (len()), counted
    only when some value has more bytes (a character is at least one)."""
    lengths = stored_rows.byte_lengths(strings)
    if int(np.max(lengths, initial=0)) <= limit:
        return np.ones(len(strings), dtype=bool)
    return _int32s(pc.utf8_length(strings)) <= limit


def _bad_bytes(row: int, values: Sequence[Any], cols: dict[str, str], position: dict[str, int]) -> list[Issue]:
    """BAD_UTF8 for each used column whose value holds bytes that are not UTF-8."""
    issues: list[Issue] = []
    for canonical, column in cols.items():
        value = values[position[canonical]]
        if isinstance(value, str):
            if value.isascii():
                continue
            at = bad_unicode(value)
            if at < 0:
                continue
        elif bad_unicode_any(value):
            at = -1
        else:
            continue
        where = f" at character {at + 1}" if at >= 0 else ""
        issues.append(Issue(row, ERROR, "BAD_UTF8", f"column {column!r} is not valid UTF-8{where}", column))
    return issues


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

    reader: Reader
    resolved: dict[str, str]
    unknown: list[str]
    task: int
    options: ParseOptions

    def run(
        self, write_rows: Callable[[list[Row] | pa.RecordBatch], None], write_issue: Callable[[Issue], None]
    ) -> ParseResult:
        """Validates the rows, handing the valid ones to write_rows in batches
        (lists of Rows, or a part's columns: rows.columns_batch) and every
        finding to write_issue."""
        return _run(self, write_rows, write_issue)


def prepare(source: BinaryIO, options: ParseOptions, jsonl_columns: list[str] | None = None) -> Validation:
    """Reads and checks the header (CSV/TSV) or a sample (JSONL; not read when
    jsonl_columns gives its columns): the columns, their mapping and the task.
    Raises InvalidArgument for file-level problems (empty, no text column, a
    task that does not fit the columns), so a caller learns about them before
    it commits to anything."""
    reader = open_reader(source, options, jsonl_columns)
    resolved, unknown = resolve_columns(reader.columns, options.column_mapping)
    if options.format == JSONL:  # other aliases are used per row (see Validator.columns)
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

    def write_rows(rows: list[Row] | pa.RecordBatch) -> None:
        if isinstance(rows, pa.RecordBatch):
            for record in rows.to_pylist():
                write_row(stored_rows.to_row(record))
            return
        for row in rows:
            write_row(dict(zip(COLUMNS, row, strict=True)))

    return prepare(source, options).run(write_rows, write_issue)


def _rows(prepared: Validation, validator: Validator) -> Iterator[Row | pa.RecordBatch]:
    """Checks every record: yields the valid rows, as Rows or as a block's column
    slices, in row order (the checkers emit the issues)."""
    reader, reject = prepared.reader, validator.reject
    if isinstance(reader, DelimitedReader):
        resolved, header = validator.resolved, reader.columns
        at = {name: header.index(column) for name, column in resolved.items()}
        check = validator.checker(resolved, at, cells=reader)
        check_block = validator.block_checker(resolved, at, check)
        for record in reader.records():
            if type(record) is tuple:
                normalised = check(*record)
                if normalised is not None:
                    yield normalised
            elif type(record) is CellBlock:
                yield from check_block(record)
            else:
                reject([record.issue])  # type: ignore[union-attr,list-item]
        return
    checkers: dict[tuple[tuple[str, str], ...], Check] = {}  # JSONL: one per distinct columns
    for item in reader:
        if item.values is None:
            reject([item.issue])  # type: ignore[list-item]
            continue
        values = item.values
        cols = validator.columns(values)
        key = tuple(cols.items())
        check = checkers.get(key)
        if check is None:
            check = checkers[key] = validator.checker(cols)
        normalised = check(item.row, [values.get(column) for column in cols.values()])
        if normalised is not None:
            yield normalised


def _run(
    prepared: Validation, write_rows: Callable[[list[Row] | pa.RecordBatch], None], write_issue: Callable[[Issue], None]
) -> ParseResult:
    resolved, unknown, task = prepared.resolved, prepared.unknown, prepared.task
    issue_count = 0

    def emit(issue: Issue) -> None:
        nonlocal issue_count
        issue_count += 1
        write_issue(issue)

    validator = Validator(task, resolved, prepared.options, emit)
    for column in unknown:
        validator.stats.warning_count += 1
        emit(Issue(0, WARNING, "UNKNOWN_COLUMN", f"column {column!r} is not used (ignored)", column))
    batch: list[Row] = []
    for row in _rows(prepared, validator):
        if type(row) is tuple:
            batch.append(row)
            if len(batch) >= ROW_BATCH:
                write_rows(batch)
                batch = []
            continue
        if batch:  # rows in order: the ones before the block's first
            write_rows(batch)
            batch = []
        write_rows(row)  # type: ignore[arg-type]
    if batch:
        write_rows(batch)
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
