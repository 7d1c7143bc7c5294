"""Unit tests of dataset parsing and row validation (no services, no store)."""

from __future__ import annotations

import csv
import io
import json
import random
from typing import Any

import pytest

from textft.errors import InvalidArgument, TextftError
from textft.v1 import common_pb2, dataset_pb2
from textft_services.dataset import parsing as p
from textft_services.dataset import readers, validation
from textft_services.dataset.digests import DigestTable
from textft_services.dataset.repository import _read_report_head, write_report

pytestmark = pytest.mark.unit

UNSPEC = common_pb2.TASK_UNSPECIFIED
TASKS = [UNSPEC, p.CLASSIFICATION, p.GENERATION]


def both_paths(data: bytes, options: p.ParseOptions) -> tuple[p.ParseResult, list[dict[str, Any]], list[p.Issue]]:
    """validate_bytes with options.fast on and off: the shortcuts may only skip
    work, so the result, the rows and every issue (row, code, message, field)
    must be the same; a file-level error must be the same error."""
    outcomes = []
    for fast in (True, False):
        options.fast = fast
        try:
            outcomes.append(p.validate_bytes(data, options))
        except TextftError as e:
            outcomes.append(e)  # type: ignore[arg-type]
    options.fast = True
    fast_outcome, general = outcomes
    if isinstance(fast_outcome, TextftError):
        assert isinstance(general, TextftError) and (general.reason, str(general)) == (
            fast_outcome.reason,
            str(fast_outcome),
        )
        raise fast_outcome
    assert not isinstance(general, TextftError), general
    assert fast_outcome == general
    return fast_outcome


def run(data: bytes, fmt: int = p.CSV, task: int = UNSPEC, mapping: dict[str, str] | None = None, max_chars: int = 100):
    """validate_bytes on both paths (both_paths), without RARE_LABEL warnings (these
    small files are full of single-row labels; test_rare_labels_are_warned checks them)."""
    result, rows, issues = both_paths(data, p.ParseOptions(fmt, task, mapping or {}, max_chars))
    rare = [i for i in issues if i.code == "RARE_LABEL"]
    result.stats.warning_count -= len(rare)
    return result, rows, [i for i in issues if i.code != "RARE_LABEL"]


def test_rare_labels_and_a_split_without_eval_are_warned() -> None:
    data = b"text,label,split\na,x,train\nb,y,train\nc,x,\nd,z,train\n"
    result, _, issues = both_paths(data, p.ParseOptions(p.CSV))
    assert [(i.row, i.severity, i.code, i.field) for i in issues] == [
        (2, p.WARNING, "RARE_LABEL", "label"),
        (4, p.WARNING, "RARE_LABEL", "label"),
        (0, p.WARNING, "SPLIT_WITHOUT_EVAL", "split"),
    ]
    assert result.stats.warning_count == 3
    assert (result.stats.split_train_row_count, result.stats.split_eval_row_count) == (3, 0)


def codes(issues: list[p.Issue]) -> list[tuple[int, str]]:
    return [(i.row, i.code) for i in issues]


def test_csv_good_rows_are_normalised_with_stats() -> None:
    data = b'text,label,id,metadata,split\nnice film,pos,a1,"{""k"": 1}",train\nawful,neg,a2,,validation\nok ok ok,pos|neg,a3,,\n'
    result, rows, issues = run(data)
    assert result.task == p.CLASSIFICATION
    assert result.column_mapping == {
        "text": "text",
        "labels": "label",
        "id": "id",
        "metadata": "metadata",
        "split": "split",
    }
    assert issues == []
    assert rows[0] == {
        "row": 1,
        "text": "nice film",
        "labels": ["pos"],
        "target": "",
        "id": "a1",
        "metadata": {"k": 1},
        "split": "train",
    }
    assert rows[1]["split"] == "eval"
    assert rows[2]["labels"] == ["pos", "neg"]
    s = result.stats
    assert (s.row_count, s.valid_row_count, s.invalid_row_count, s.warning_count) == (3, 3, 0, 0)
    assert s.label_counts == {"neg": 2, "pos": 2}
    assert result.label_names == ["neg", "pos"]
    assert (s.text_length_min, s.text_length_max, s.text_length_p50, s.text_length_p95) == (5, 9, 8, 9)
    assert s.text_length_mean == pytest.approx((9 + 5 + 8) / 3)


def test_csv_quoted_multiline_field_counts_as_one_row() -> None:
    data = b'text,label\n"line one\nline two, with comma",a\nnext,b\n'
    _, rows, issues = run(data)
    assert issues == []
    assert [(r["row"], r["text"]) for r in rows] == [(1, "line one\nline two, with comma"), (2, "next")]


def test_bad_rows_are_reported_with_row_numbers_not_dropped() -> None:
    data = b"text,label\ngood,a\n,a\nno label,\nx,a,extra\n" + b"caf\xe9 latin1,a\n" + b"good,a\n"
    result, rows, issues = run(data)
    assert codes(issues) == [
        (2, "EMPTY_TEXT"),
        (3, "MISSING_LABEL"),
        (4, "WRONG_COLUMN_COUNT"),
        (5, "BAD_UTF8"),
        (6, "DUPLICATE"),
    ]
    assert [r["row"] for r in rows] == [1, 6]  # the duplicate is kept
    bad_utf8 = issues[3]
    assert bad_utf8.field == "text" and bad_utf8.severity == p.ERROR
    assert issues[4].severity == p.WARNING
    s = result.stats
    assert (s.row_count, s.valid_row_count, s.invalid_row_count, s.warning_count) == (6, 2, 4, 1)


def test_blank_lines_are_skipped_but_keep_their_number() -> None:
    _, rows, _ = run(b"text,label\n\none,a\n\n\ntwo,b\n")
    assert [r["row"] for r in rows] == [2, 5]


def test_tsv_and_bom() -> None:
    result, rows, issues = run(b"\xef\xbb\xbftext\ttarget\nhello\tbonjour\nworld\t\n", fmt=p.TSV)
    assert result.task == p.GENERATION
    assert rows == [
        {"row": 1, "text": "hello", "labels": [], "target": "bonjour", "id": "", "metadata": {}, "split": ""}
    ]
    assert codes(issues) == [(2, "MISSING_TARGET")]
    assert result.stats.target_count == 1


def test_jsonl_rows_bad_json_bad_utf8_and_lists() -> None:
    lines = [
        json.dumps({"text": "a", "labels": ["x", "y"], "metadata": {"src": "web"}}).encode(),
        b"{not json",
        b"[1, 2]",
        b'{"text": "caf\xe9", "labels": ["x"]}',
        b"",
        json.dumps({"text": "b", "label": "z"}).encode(),
        json.dumps({"text": "c", "labels": []}).encode(),
        json.dumps({"text": {"nested": 1}, "labels": ["x"]}).encode(),
    ]
    result, rows, issues = run(b"\n".join(lines) + b"\n", fmt=p.JSONL)
    assert result.task == p.CLASSIFICATION
    assert [(r["row"], r["labels"]) for r in rows] == [(1, ["x", "y"]), (6, ["z"])]
    assert rows[0]["metadata"] == {"src": "web"}
    # Each object may use any accepted key ("label" on row 6): no UNKNOWN_COLUMN.
    assert codes(issues) == [
        (2, "BAD_JSON"),
        (3, "BAD_JSON"),
        (4, "BAD_UTF8"),
        (7, "MISSING_LABEL"),
        (8, "INVALID_VALUE"),
    ]


def test_jsonl_escaped_lone_surrogate_is_bad_utf8() -> None:
    _, rows, issues = run(b'{"text": "x\\udc80", "target": "t"}\n{"text": "y", "target": "t"}\n', fmt=p.JSONL)
    assert codes(issues) == [(1, "BAD_UTF8")]
    assert [r["row"] for r in rows] == [2]


def test_clarifai_current_sdk_columns() -> None:
    data = b"inputid,input,concepts,metadata\nid1,hello there,\"greet,polite\",\"{'lang': 'en'}\"\n"
    result, rows, issues = run(data)
    assert result.column_mapping == {"text": "input", "labels": "concepts", "id": "inputid", "metadata": "metadata"}
    assert issues == []
    assert rows[0]["labels"] == ["greet", "polite"]
    assert rows[0]["id"] == "id1"
    assert rows[0]["metadata"] == {"lang": "en"}


def test_clarifai_template_columns() -> None:
    data = b"input.id,input.data.text.raw,input.data.concepts[*].id,input.data.metadata\nq,some text,spam,\n"
    result, rows, _ = run(data)
    assert result.task == p.CLASSIFICATION
    assert rows[0]["text"] == "some text" and rows[0]["labels"] == ["spam"] and rows[0]["id"] == "q"


def test_column_mapping_overrides_aliases() -> None:
    data = b"text,body,category\nignored,real text,c1\n"
    result, rows, issues = run(data, mapping={"text": "body", "label": "category"})
    assert rows[0]["text"] == "real text" and rows[0]["labels"] == ["c1"]
    assert result.column_mapping["text"] == "body"
    assert codes(issues) == [(0, "UNKNOWN_COLUMN")]
    assert issues[0].field == "text"


def test_column_mapping_to_missing_column_names_the_field() -> None:
    with pytest.raises(InvalidArgument) as e:
        run(b"text,label\na,b\n", mapping={"target": "answer"})
    assert e.value.violations[0].field == "header.column_mapping[target]"
    with pytest.raises(InvalidArgument) as e:
        run(b"text,label\na,b\n", mapping={"colour": "x"})
    assert e.value.violations[0].field == "header.column_mapping[colour]"


@pytest.mark.parametrize(
    ("value", "comma", "expected"),
    [
        ("a|b", False, ["a", "b"]),
        (' ["a", "b c"] ', False, ["a", "b c"]),
        ("a, b", True, ["a", "b"]),
        ("a|a| ", False, ["a"]),
        ("", False, []),
        (["x", 2], False, ["x", "2"]),
        (3, False, ["3"]),
    ],
)
def test_label_forms(value: object, comma: bool, expected: list[str]) -> None:
    assert p.parse_labels(value, comma) == expected


def test_malformed_label_list_is_a_row_error() -> None:
    _, rows, issues = run(b'text,labels\nx,"[""a"", "\ny,"[1,{}]"\n')
    assert rows == []
    assert codes(issues) == [(1, "BAD_LABEL"), (2, "BAD_LABEL")]


def test_duplicates_depend_on_labels_too() -> None:
    _, rows, issues = run(b"text,label\nsame,a\nsame,b\nsame,a\n")
    assert len(rows) == 3
    assert codes(issues) == [(3, "DUPLICATE")]


def test_too_long_text() -> None:
    _, rows, issues = run(b"text,label\n" + b"x" * 11 + b",a\nshort,a\n", max_chars=10)
    assert codes(issues) == [(1, "TOO_LONG")]
    assert issues[0].field == "text"
    assert len(rows) == 1


def test_over_long_jsonl_line_is_drained_not_held() -> None:
    options = p.ParseOptions(p.JSONL, UNSPEC, {}, max_text_chars=10)
    huge = b'{"text": "' + b"x" * (options.max_line_bytes + 10) + b'", "label": "a"}'
    data = b'{"text": "ok", "label": "a"}\n' + huge + b'\n{"text": "fine", "label": "b"}\n'
    _, rows, issues = run(data, p.JSONL, max_chars=10)
    assert codes(issues) == [(2, "TOO_LONG")]
    assert [r["row"] for r in rows] == [1, 3]


@pytest.mark.parametrize(
    ("header", "task", "expected"),
    [
        (b"text,target", UNSPEC, p.GENERATION),
        (b"text,target,label", UNSPEC, p.GENERATION),
        (b"text,label", UNSPEC, p.CLASSIFICATION),
        (b"input,concepts", UNSPEC, p.CLASSIFICATION),
        (b"text,target,label", p.CLASSIFICATION, p.CLASSIFICATION),
    ],
)
def test_task_inference(header: bytes, task: int, expected: int) -> None:
    width = header.count(b",")
    result, _, _ = run(header + b"\nx" + b",y" * width + b"\n", task=task)
    assert result.task == expected


def test_task_that_does_not_fit_the_columns() -> None:
    with pytest.raises(InvalidArgument) as e:
        run(b"text\nhello\n")
    assert e.value.violations[0].field == "header.task"
    with pytest.raises(InvalidArgument) as e:
        run(b"text,label\nhello,a\n", task=p.GENERATION)
    assert e.value.violations[0].field == "header.task"
    assert "target" in e.value.violations[0].description


def test_missing_text_column_lists_columns_and_aliases() -> None:
    with pytest.raises(InvalidArgument) as e:
        run(b"sentence,label\nhello,a\n")
    violation = e.value.violations[0]
    assert violation.field == "header.column_mapping[text]"
    assert "'sentence'" in violation.description and "input.data.text.raw" in violation.description
    assert e.value.reason == "NO_TEXT_COLUMN"


@pytest.mark.parametrize(
    ("data", "fmt", "reason"),
    [
        (b"", p.CSV, "EMPTY_FILE"),
        (b"\n\n", p.CSV, "EMPTY_FILE"),
        (b"  \n", p.JSONL, "EMPTY_FILE"),
        (b"text,label\n", p.CSV, "NO_DATA_ROWS"),
        (b"text,text\nx,y\n", p.CSV, "DUPLICATE_COLUMN"),
    ],
)
def test_file_level_errors(data: bytes, fmt: int, reason: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        run(data, fmt=fmt)
    assert e.value.reason == reason


def test_format_inference() -> None:
    assert p.infer_format(dataset_pb2.DATASET_FORMAT_UNSPECIFIED, "x/Data.JSONL") == p.JSONL
    assert p.infer_format(dataset_pb2.DATASET_FORMAT_UNSPECIFIED, "a.tsv") == p.TSV
    assert p.infer_format(p.CSV, "a.jsonl") == p.CSV
    with pytest.raises(InvalidArgument) as e:
        p.infer_format(dataset_pb2.DATASET_FORMAT_UNSPECIFIED, "data.txt")
    assert e.value.violations[0].field == "header.format"


def test_report_layout_is_json_and_streamable() -> None:
    issues = [p.Issue(1, p.ERROR, "EMPTY_TEXT", "m", "text"), p.Issue(2, p.WARNING, "DUPLICATE", "d\nx", "text")]
    source = io.StringIO("".join(json.dumps(i.to_dict()) + "\n" for i in issues))
    out = io.StringIO()
    write_report(out, {"row_count": 2}, 2, source)
    whole = json.loads(out.getvalue())
    assert whole["stats"] == {"row_count": 2} and len(whole["issues"]) == 2
    assert whole["issues"][1]["message"] == "d\nx"
    lines = iter(out.getvalue().encode().splitlines(keepends=True))
    assert _read_report_head(lines)["issue_count"] == 2
    empty = io.StringIO()
    write_report(empty, {}, 0, io.StringIO(""))
    assert json.loads(empty.getvalue())["issues"] == []


def test_duplicate_digest_table_grows_and_keeps_first_rows() -> None:
    import random

    table = DigestTable(capacity=4)
    reference: dict[int, int] = {}
    rng = random.Random(7)
    for row in range(1, 20_000):
        key = rng.choice(list(reference)[:50]) if reference and rng.random() < 0.2 else rng.getrandbits(64) | 1
        assert table.get(key) == reference.get(key, 0)
        if key not in reference:
            table.add(key, row)
            reference[key] = row
    assert len(table) == len(reference) and all(table.get(k) == r for k, r in reference.items())
    # first_or_add(): the same answers in one probe.
    other = DigestTable(capacity=4)
    for key, row in reference.items():
        assert other.first_or_add(key, row) == 0
        assert other.first_or_add(key, row + 1) == row
    assert len(other) == len(reference)
    # A row number past 32 bits widens the row array, through either path.
    wide = DigestTable(capacity=4)
    assert wide.first_or_add(3, 1 << 33) == 0 and wide.first_or_add(3, 1) == 1 << 33
    assert wide.first_or_add(5, 7) == 0 and wide.get(5) == 7


@pytest.mark.parametrize(
    "line",
    [
        "a,b,c\n",
        "a,b,c\r\n",
        "a,b,c",
        "\n",
        "   \n",
        ",,\n",
        '"x, y",pos,r1\n',
        'a,"x, y",b\n',
        '"x","y"\n',
        '"",""\n',
        '"a""b",c\n',
        '"a"b,c\n',
        'a"b,c\n',
        '"a" ,b\n',
        '"open, field\n',
        "a\rb,c\n",
        '"a\rb",c\n',
        "a\x00b\n",
        "\t\t\n",
    ],
)
def test_simple_line_split_agrees_with_the_csv_module(line: str) -> None:
    """Lines of the common shapes skip the csv module; any other line (None) is
    left to it. Where the split answers, it is the csv module's answer."""
    import csv

    for delimiter in ",\t":
        mine = readers.split_simple(line, delimiter)
        if mine is not None:
            assert mine == next(csv.reader([line], delimiter=delimiter), [])
    assert readers.split_simple('"x, y",pos,r1\n', ",") == ["x, y", "pos", "r1"]
    assert readers.split_simple('"a""b",c\n', ",") is None


# ------------------------------------------- the fast and the general path agree

# Cells that hit every row rule from a CSV/TSV: empty and blank text, bad
# bytes, over-long values, quotes, delimiters and newlines inside fields, label
# lists good and bad, Clarifai's comma concepts, metadata good and bad, splits.
_CELLS = [
    "",
    " ",
    "plain",
    "dup",
    "a,b",
    "a\tb",
    'say "hi"',
    '"',
    "x\ny",
    "x\r\ny",
    "cr\rinside",
    "nul\x00byte",
    "pos|neg",
    '["a", "b c"]',
    "[1,",
    '["a", {}]',
    "café ünïcode 日本",
    "emoji 🙂",
    "\udcff\udcfe",
    "x" * 41,
    "é" * 41,
    "train",
    "eval",
    "validation",
    " TEST ",
    "bogus",
    "{}",
    '{"k": 1}',
    "{'a': 2}",
    "{not json",
    "[]",
    "1",
]
_HEADERS = [
    ["text", "label"],
    ["text", "label", "split"],
    ["text", "labels", "id", "metadata", "split"],
    ["text", "target"],
    ["text", "target", "label", "split", "other"],
    ["input", "concepts", "inputid", "metadata"],
    ["input.data.text.raw", "input.data.concepts[*].id", "input.id", "input.data.metadata"],
    ["text"],
    ["id", "text", "label", "target"],
]


def _random_file(rng: random.Random, tidy: bool = False) -> tuple[bytes, int, int]:
    """A CSV or TSV file of 0-40 rows from _CELLS, some rows of the wrong width,
    blank lines, CRLF endings, a BOM, bad bytes; with a random task. tidy: only
    rows of the header's width and valid UTF-8, which the reader takes as Arrow
    blocks whatever the cells hold (but a bare carriage return)."""
    fmt = rng.choice([p.CSV, p.TSV])
    header = rng.choice(_HEADERS)
    out = io.StringIO()
    writer = csv.writer(
        out,
        delimiter="," if fmt == p.CSV else "\t",
        lineterminator=rng.choice(["\n", "\r\n"]),
        quoting=rng.choice([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
    )
    writer.writerow(header)
    cells = [c for c in _CELLS if "\r" not in c and "\udcff" not in c] if tidy else _CELLS
    for _ in range(rng.randrange(41)):
        shape = 1.0 if tidy else rng.random()
        if shape < 0.05:
            out.write("\n")  # a blank line keeps its number
            continue
        width = len(header) if shape > 0.1 else rng.choice([0, 1, len(header) + 1])
        writer.writerow([rng.choice(cells) if rng.random() < 0.6 else f"c{rng.randrange(6)}" for _ in range(width)])
    data = out.getvalue().encode("utf-8", "surrogateescape")
    if rng.random() < 0.2:
        data = b"\xef\xbb\xbf" + data
    if not tidy and rng.random() < 0.2:
        data = data.replace(b"c", b"\xff", 1)  # bytes that are not UTF-8
    if not tidy and rng.random() < 0.1:
        data = data.replace(b",", b'"', 1)  # an unbalanced quote
    return data, fmt, rng.choice(TASKS)


def test_fast_and_general_paths_agree_on_generated_files() -> None:
    """Seeded random files through both paths (both_paths compares every
    result, row and issue); the corpus must reach every row rule, so the
    comparison covers each of them."""
    rng = random.Random(14)
    seen: set[str] = set()
    compared = 0
    for k in range(1200):
        data, fmt, task = _random_file(rng, tidy=k % 2 == 1)
        options = p.ParseOptions(fmt, task, {}, max_text_chars=40)
        try:
            result, rows, issues = both_paths(data, options)
        except TextftError:
            continue
        compared += 1
        seen.update(i.code for i in issues)
        assert len(rows) == result.stats.valid_row_count
    row_codes = {"BAD_UTF8", "EMPTY_TEXT", "TOO_LONG", "BAD_LABEL", "MISSING_LABEL", "MISSING_TARGET"}
    row_codes |= {"BAD_METADATA", "BAD_SPLIT", "DUPLICATE", "WRONG_COLUMN_COUNT", "BAD_CSV"}
    assert row_codes <= seen, row_codes - seen
    assert compared > 600


def test_general_path_reads_every_record_with_the_csv_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """fast=False really is the other path: no line takes the simple split and
    no block Arrow's reader; fast=True reads a block with Arrow (multi-line
    fields too) and the lines of a block it refuses with the simple split."""
    calls = []
    real = readers.split_simple
    monkeypatch.setattr(readers, "split_simple", lambda *a: calls.append(a) or real(*a))
    blocks = _count_arrow_blocks(monkeypatch)
    clean = b'text,label\n"a, b",x\n"c\n\nd",y\n'
    blank = b'text,label\n"a, b",x\n\nc,y\n'  # a blank line: Arrow would skip its number
    for data, fast, split, arrow in ((clean, False, 0, 0), (clean, True, 0, 1), (blank, True, 3, 0)):
        calls.clear()
        blocks.clear()
        p.validate_bytes(data, p.ParseOptions(p.CSV, fast=fast))
        assert (len(calls), len(blocks)) == (split, arrow), data


def _count_arrow_blocks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the row count of each block Arrow reads whole from now on."""
    blocks: list[int] = []
    real = readers.DelimitedReader._arrow

    def counted(self: readers.DelimitedReader, data: bytes, first_row: int) -> readers.CellBlock | None:
        cells = real(self, data, first_row)
        if cells is not None:
            blocks.append(cells.table.num_rows)
        return cells

    monkeypatch.setattr(readers.DelimitedReader, "_arrow", counted)
    return blocks


def test_python_spaces_are_what_strip_removes() -> None:
    """The block checker's regex finds a text blank exactly when str.strip() does."""
    assert "".join(c for c in map(chr, range(0x110000)) if c.isspace()) == validation.PYTHON_SPACES


def test_generated_files_take_both_ways_through_arrow_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agreement above is not vacuous: many of its files are read as Arrow
    blocks, and in those blocks both clean rows (column slices) and rows that
    check() decides (a rule finds something) occur."""
    blocks = _count_arrow_blocks(monkeypatch)
    checked_in_blocks = 0
    real_checker = validation.Validator.block_checker

    def spied(self: Any, cols: dict[str, str], at: dict[str, int], check: Any) -> Any:
        def counting(row: int, values: Any) -> Any:
            nonlocal checked_in_blocks
            checked_in_blocks += 1
            return check(row, values)

        return real_checker(self, cols, at, counting)

    monkeypatch.setattr(validation.Validator, "block_checker", spied)
    rng = random.Random(14)
    for k in range(1200):
        data, fmt, task = _random_file(rng, tidy=k % 2 == 1)
        try:
            p.validate_bytes(data, p.ParseOptions(fmt, task, {}, max_text_chars=40))
        except TextftError:
            continue
    assert len(blocks) > 100 and sum(blocks) > 1000
    assert checked_in_blocks > 500


def test_arrow_blocks_and_line_by_line_blocks_mix_in_one_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 6 MiB file whose blocks go both ways: Arrow's, and line by line for a
    quoted multi-line field across a block boundary, a blank line, a ragged
    row, a bare carriage return; duplicates across blocks of either kind; rows
    that fail a rule inside Arrow's blocks. Both paths agree on every row and issue."""
    blocks = _count_arrow_blocks(monkeypatch)
    lines = [b"text,label,split,metadata"]
    for i in range(1, 80_001):
        text = f"row {i % 15_000} {'w' * (i % 120)}"  # rows 15,000 apart repeat: duplicates
        split = ("train", "eval", "", "Validation", "bogus")[i % 5]
        metadata = '"{""k"": 1}"' if i % 7 == 0 else ('"{bad"' if i % 1_003 == 0 else "")
        label = ("pos", "neg", " spaced ", "[1", "a|b")[i % 5] if i % 9 else ""
        lines.append(f"{text},{label},{split},{metadata}".encode())
    # Multi-line fields around the first block's end (one of them spans it), later a
    # blank line, a ragged row and a CRLF ending, each in a block of its own.
    offset, end = 0, 0
    while offset + len(lines[end]) + 1 <= readers.DelimitedReader.BLOCK:
        offset += len(lines[end]) + 1
        end += 1
    for k in range(end - 2, end + 3):
        lines[k] = b'"a field over\n two lines",pos,train,'
    lines[30_000] = b""
    lines[50_000] = b"too,many,cells,in,this,row"
    lines[70_000] = b"a bare\rcarriage return,pos,,"
    data = b"\n".join(lines) + b"\n"
    assert len(data) > 6 * readers.DelimitedReader.BLOCK
    for task in (UNSPEC, p.CLASSIFICATION):  # (no target column for generation)
        blocks.clear()
        result, rows, issues = both_paths(data, p.ParseOptions(p.CSV, task, {}, max_text_chars=100))
        codes = {i.code for i in issues}
        assert {"DUPLICATE", "BAD_SPLIT", "BAD_METADATA", "WRONG_COLUMN_COUNT", "BAD_LABEL"} <= codes
        assert result.stats.valid_row_count == len(rows) > 20_000
        assert 0 < len(blocks) < 6  # some blocks by Arrow, some line by line


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # the seeded generator above still compares the paths
    pass
else:

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(
        header=st.sampled_from(_HEADERS),
        body=st.lists(st.lists(st.sampled_from(_CELLS) | st.text(max_size=12), max_size=6), max_size=15),
        fmt=st.sampled_from([p.CSV, p.TSV]),
        task=st.sampled_from(TASKS),
    )
    def test_fast_and_general_paths_agree_on_fuzzed_files(
        header: list[str], body: list[list[str]], fmt: int, task: int
    ) -> None:
        out = io.StringIO()
        writer = csv.writer(out, delimiter="," if fmt == p.CSV else "\t")
        writer.writerow(header)
        writer.writerows(body)
        data = out.getvalue().encode("utf-8", "surrogateescape")
        try:
            both_paths(data, p.ParseOptions(fmt, task, {}, max_text_chars=40))
        except TextftError:
            pass


def test_bad_bytes_after_the_first_block_are_found() -> None:
    """The bad-byte scan is skipped while the file has read as valid UTF-8: a
    bad byte past the reader's first block (1 MiB) is still found, on its row."""
    rows = [f"row {i} caf\u00e9 {'x' * 90},l{i % 3}\n".encode() for i in range(1, 12_001)]
    rows[11_000] = rows[11_000].replace(b"caf\xc3\xa9", b"caf\xe9")  # latin-1, not UTF-8
    data = b"text,label\n" + b"".join(rows)
    assert len(data) > readers.DelimitedReader.BLOCK
    result, out, issues = both_paths(data, p.ParseOptions(p.CSV, max_text_chars=200))
    assert [(i.row, i.code) for i in issues] == [(11_001, "BAD_UTF8")]
    assert result.stats.valid_row_count == 11_999 and out[0]["text"].startswith("row 1 café")


@pytest.mark.parametrize("fmt", [p.CSV, p.JSONL])
def test_validation_leaves_no_reference_cycles(fmt: int) -> None:
    """An upload's reader, validator and digest table are freed when it ends:
    a cycle would keep them until the collector's next full pass, which an
    upload (few container objects) rarely triggers, so a service's memory
    grew by the digest table of each upload."""
    import gc

    if fmt == p.CSV:
        data = b"text,label,split\n" + b"".join(b'"t %d",l%d,train\n' % (i, i % 3) for i in range(3000))
    else:
        data = b"".join(b'{"text": "t %d", "label": "l%d"}\n' % (i, i % 3) for i in range(3000))
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        p.validate_bytes(data, p.ParseOptions(fmt))
        gc.collect()
        assert [type(o).__name__ for o in gc.garbage] == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def test_metadata_with_an_escaped_lone_surrogate_is_dropped_with_a_warning() -> None:
    """JSON may escape a lone surrogate ("\\ud800"), which no UTF-8 part can
    store: the row is kept without its metadata, on both paths."""
    data = b'text,label,metadata\nhello,pos,"{""k"": ""\\ud800""}"\nworld,neg,"{""k"": 1}"\n'
    _, rows, issues = run(data)
    assert [(i.row, i.code) for i in issues] == [(1, "BAD_METADATA")]
    assert [r["metadata"] for r in rows] == [{}, {"k": 1}]
