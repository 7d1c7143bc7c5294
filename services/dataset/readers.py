"""Readers of CSV/TSV and JSONL files: records with their 1-based row numbers,
in bounded memory, or a record's issue when it can not be read."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from textft.errors import InvalidArgument

from .columns import show_columns
from .model import CSV, ERROR, JSONL, TSV, Issue, ParseOptions
from .values import bad_unicode

# Columns of the sample that decides a JSONL file's columns and task.
JSONL_SAMPLE_LINES = 1000


@dataclass
class Record:
    row: int
    values: dict[str, Any] | None  # file column -> value; None when unreadable
    issue: Issue | None = None  # why values is None


def newlines(data: bytes) -> int:
    """The number of b"\\n" in data (a third of bytes.count's time on a block)."""
    return int(np.count_nonzero(np.frombuffer(data, np.uint8) == 10))


def read_lines(source: BinaryIO, limit: int) -> Iterator[tuple[bytes, bool]]:
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


class DelimitedReader:
    """CSV/TSV with a header line. Lines are decoded with surrogateescape, so bad
    bytes survive to the row they belong to and are reported there; the csv
    module still sees whole records (quoted multi-line fields work).

    With options.fast, each block of lines is first offered to Arrow's CSV
    reader (C++, and without the GIL): a block whose records all have the
    header's width and are those the line-by-line path reads (_arrow() says
    when) comes back whole, as a CellBlock; any other block (a blank line, a
    bare carriage return, bad bytes, a ragged row, a quote open at its end) is
    read line by line, as without it. The row numbers and the cells are the
    same either way (the tests compare the two on the same files)."""

    BLOCK = 1024 * 1024  # below any max_line_bytes, so an over-long line spans two blocks
    # Blocks Arrow refused in a row make it skip the next 2**n - 1 blocks (up to
    # this many): a file with blank lines throughout does not pay for both readers.
    MAX_ARROW_BACKOFF = 64

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
        # Nothing here refers back to the reader: no reference cycle keeps an
        # upload's buffers until the garbage collector's next full pass.
        self._lines = _Lines(_blocks(source, self.BLOCK, options))
        self._handed = HandBack(self._lines)
        self._reader = csv.reader(self._handed, delimiter=delimiter)
        self.columns = self._header()
        self.arrow_blocks = 0  # blocks read by Arrow (tests check both paths ran)
        self._refused = 0  # blocks Arrow refused in a row
        self._skip = 0  # blocks still to read line by line before Arrow is offered one again

    @property
    def bad_bytes(self) -> bool:
        """Set once a block of the file is not valid UTF-8; until then no cell
        can hold a surrogate, and the validator skips its bad-byte scan."""
        return self._lines.bad_bytes

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
            bad = next((c for c in columns if bad_unicode(c) >= 0), None)
            if bad is not None:
                raise InvalidArgument(
                    "the header line is not valid UTF-8; save the file as UTF-8", reason="BAD_UTF8_HEADER"
                )
            if len(set(columns)) != len(columns):
                dupes = sorted({c for c in columns if columns.count(c) > 1})
                raise InvalidArgument(f"the header repeats column(s) {show_columns(dupes)}", reason="DUPLICATE_COLUMN")
            self._header_line = self._reader.line_num
            return columns
        raise InvalidArgument("the file is empty: expected a header line and data rows", reason="EMPTY_FILE")

    def records(self) -> Iterator[Record | tuple[int, list[str]] | CellBlock]:
        """(row, cells) for each record with the header's width, a Record with
        its issue for the others, blank lines skipped; with options.fast, a
        CellBlock for each block Arrow reads whole. Lines of the common shapes
        skip the csv module unless options.fast is off."""
        if not self.options.fast:
            for row, record in enumerate(self._csv_records(), 1):
                item = self._odd(row, record)
                if item is not None:
                    yield item
            return
        delimiter, handed, reader, lines = self.delimiter, self._handed, self._reader, self._lines
        width = len(self.columns)
        row = 0
        data: bytes | None = lines.rest()  # the first block, after the header
        while True:
            if data is not None:  # a block not yet read: Arrow's, if it reads it whole
                cells = self._arrow(data, row + 1) if width > 1 else None
                if cells is not None:
                    yield cells
                    row += cells.table.num_rows
                    data = lines.next_block()
                    if data is None:
                        return
                    continue
                lines.start(data)
            block = lines.current
            for line in block:
                row += 1  # a blank line keeps its number; a quoted multi-line record counts once
                record = split_simple(line, delimiter)
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
            if lines.current is not block:  # the csv module read on into the next block
                data = None
                continue
            data = lines.next_block()
            if data is None:
                return

    def _arrow(self, data: bytes, first_row: int) -> CellBlock | None:
        """The block as Arrow reads it, or None unless its records are those
        the line-by-line path reads, in the same order. Arrow reads quotes as
        the csv module does; its record separators are the newlines outside
        quotes once there is no bare carriage return. It skips blank lines,
        which keep their row number here: every newline of the block must be
        either inside a cell or one record's end. A quote left open at the end
        would take the last newline into the last cell: a last cell ending in a
        newline is refused too."""
        if self._skip:
            self._skip -= 1
            return None
        table = None
        if data.endswith(b"\n") and (b"\r" not in data or data.count(b"\r") == data.count(b"\r\n")):
            names = [f"c{k}" for k in range(len(self.columns))]
            try:
                table = pa_csv.read_csv(
                    pa.py_buffer(data),
                    read_options=pa_csv.ReadOptions(column_names=names, use_threads=False, block_size=len(data) + 1),
                    parse_options=pa_csv.ParseOptions(
                        delimiter=self.delimiter, newlines_in_values=True, ignore_empty_lines=True
                    ),
                    convert_options=pa_csv.ConvertOptions(
                        column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False
                    ),
                )
                if any(column.num_chunks != 1 for column in table.columns):  # one block: one chunk, kept as read
                    table = table.combine_chunks()
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # bad UTF-8, a ragged row, ...
                table = None
            if table is not None:
                lines = newlines(data)
                inside = 0
                if table.num_rows < lines:  # quoted newlines, or blank lines
                    inside = sum(pc.sum(pc.count_substring(column, "\n")).as_py() or 0 for column in table.columns)
                if table.num_rows + inside != lines or table.column(-1)[-1].as_py().endswith("\n"):
                    table = None
        if table is None:
            self._refused += 1
            self._skip = min(2**self._refused - 1, self.MAX_ARROW_BACKOFF)
            return None
        self._refused = 0
        self.arrow_blocks += 1
        return CellBlock(first_row, table)

    def _csv_records(self) -> Iterator[list[str] | csv.Error]:
        while True:
            try:
                yield next(self._reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield e

    def _odd(self, row: int, record: list[str] | csv.Error) -> Record | tuple[int, list[str]] | None:
        """What records() yields for a record: None for a blank line."""
        if isinstance(record, csv.Error):
            code = "TOO_LONG" if "field limit" in str(record) else "BAD_CSV"
            return Record(row, None, Issue(row, ERROR, code, f"unreadable record: {record}"))
        width = len(self.columns)
        if len(record) == width and (width > 1 or record[0].strip()):
            return row, record
        if len(record) <= 1 and not "".join(record).strip():
            return None
        hint = "; quote fields that contain the delimiter" if len(record) > width else ""
        message = f"expected {width} columns as in the header, found {len(record)}{hint}"
        return Record(row, None, Issue(row, ERROR, "WRONG_COLUMN_COUNT", message))


def _blocks(source: BinaryIO, size: int, options: ParseOptions) -> Iterator[bytes]:
    """A delimited file in blocks of whole lines, read `size` bytes at a time. A
    line over max_line_bytes (which memory would have to hold) stops the file
    with LINE_TOO_LONG."""
    limit = options.max_line_bytes
    carry = b""  # the unfinished last line of the previous blocks
    lines = 0  # newlines before carry
    first = True
    while True:
        block = source.read(size)
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
                f"to {options.max_text_chars} characters of text (max_text_chars)",
                reason="LINE_TOO_LONG",
            )
        if not block:
            if carry:
                yield carry
            return
        if end < 0:
            carry += block
            continue
        data = carry + block[: end + 1] if carry else block[: end + 1]
        lines += newlines(data)
        carry = block[end + 1 :]
        yield data


@dataclass
class CellBlock:
    """Records read by Arrow: row first_row + k is the table's row k, its cells
    (strings, columns in the header's order) those the line-by-line path reads."""

    first_row: int
    table: pa.Table


class _Lines:
    """A delimited file's decoded lines, a block at a time. Iterating reads on
    across blocks (the csv module does, inside a multi-line field); records()
    reads a block's lines from `current` and takes the next block's bytes with
    next_block() when it would read them another way first. Blocks are decoded
    strictly while they are valid UTF-8, then with surrogateescape, so bad bytes
    survive to the row they belong to (bad_bytes tells which)."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks
        self.bad_bytes = False
        self.current: io.StringIO = io.StringIO()

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        while True:
            line = self.current.readline()
            if line:
                return line
            block = next(self._blocks)  # StopIteration ends the lines
            self.current = io.StringIO(self._decode(block))

    def _decode(self, block: bytes) -> str:
        try:
            return block.decode("utf-8")  # strict: valid UTF-8 decodes to no surrogate
        except UnicodeDecodeError:
            self.bad_bytes = True
            return block.decode("utf-8", "surrogateescape")

    def start(self, data: bytes) -> None:
        """Reads the lines of this block next."""
        self.current = io.StringIO(self._decode(data))

    def next_block(self) -> bytes | None:
        """The next block, not decoded; None at the end of the file."""
        return next(self._blocks, None)

    def rest(self) -> bytes | None:
        """The unread lines of the current block as bytes (the header's block,
        after it), else the next block; None at the end of the file."""
        rest = self.current.read()
        if rest:
            return rest.encode("utf-8", "surrogateescape")  # the bytes as read
        return self.next_block()


class HandBack:
    """The lines the csv module reads: a line handed back first, then the rest."""

    def __init__(self, lines: Iterator[str]) -> None:
        self.lines = lines
        self.line: str | None = None

    def __iter__(self) -> HandBack:
        return self

    def __next__(self) -> str:
        line = self.line
        if line is None:
            return next(self.lines)
        self.line = None
        return line


def split_simple(line: str, delimiter: str) -> list[str] | None:
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


class JsonlReader:
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
        for number, (raw, too_long) in enumerate(read_lines(self.source, self.options.max_line_bytes), 1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # UTF-8 byte order mark
            yield raw, too_long

    def __iter__(self) -> Iterator[Record]:
        for row, (raw, too_long) in enumerate(self._raw_lines(), 1):
            if too_long:
                yield Record(
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
                yield Record(row, None, issue)
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                yield Record(row, None, Issue(row, ERROR, "BAD_JSON", f"not valid JSON: {e.msg} at column {e.colno}"))
                continue
            if not isinstance(value, dict):
                kind = type(value).__name__
                yield Record(row, None, Issue(row, ERROR, "BAD_JSON", f"expected a JSON object, got a {kind}"))
                continue
            yield Record(row, value)


Reader = DelimitedReader | JsonlReader


def open_reader(source: BinaryIO, options: ParseOptions, jsonl_columns: list[str] | None = None) -> Reader:
    """The reader of options.format, its header (CSV/TSV) or sample (JSONL) read."""
    if options.format == JSONL:
        return JsonlReader(source, options, jsonl_columns)
    if options.format in (CSV, TSV):
        return DelimitedReader(source, "," if options.format == CSV else "\t", options)
    raise InvalidArgument.for_field("header.format", f"unknown format value {options.format}")
