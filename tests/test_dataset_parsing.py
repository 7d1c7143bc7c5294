"""Unit tests of dataset parsing and row validation (no services, no store)."""

from __future__ import annotations

import io
import json

import pytest

from textft.errors import InvalidArgument
from textft_services.dataset import parsing as p
from textft_services.dataset.repository import _read_report_head, write_report

pytestmark = pytest.mark.unit

UNSPEC = p.common_pb2.TASK_UNSPECIFIED


def run(data: bytes, fmt: int = p.CSV, task: int = UNSPEC, mapping: dict[str, str] | None = None, max_chars: int = 100):
    """validate_bytes, without RARE_LABEL warnings (these small files are full of
    single-row labels; test_rare_labels_are_warned checks them)."""
    result, rows, issues = p.validate_bytes(data, p.ParseOptions(fmt, task, mapping or {}, max_chars))
    rare = [i for i in issues if i.code == "RARE_LABEL"]
    result.stats.warning_count -= len(rare)
    return result, rows, [i for i in issues if i.code != "RARE_LABEL"]


def test_rare_labels_and_a_split_without_eval_are_warned() -> None:
    data = b"text,label,split\na,x,train\nb,y,train\nc,x,\nd,z,train\n"
    result, _, issues = p.validate_bytes(data, p.ParseOptions(p.CSV))
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
    assert p.infer_format(p.dataset_pb2.DATASET_FORMAT_UNSPECIFIED, "x/Data.JSONL") == p.JSONL
    assert p.infer_format(p.dataset_pb2.DATASET_FORMAT_UNSPECIFIED, "a.tsv") == p.TSV
    assert p.infer_format(p.CSV, "a.jsonl") == p.CSV
    with pytest.raises(InvalidArgument) as e:
        p.infer_format(p.dataset_pb2.DATASET_FORMAT_UNSPECIFIED, "data.txt")
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

    table = p._DigestTable(capacity=4)
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
    other = p._DigestTable(capacity=4)
    for key, row in reference.items():
        assert other.first_or_add(key, row) == 0
        assert other.first_or_add(key, row + 1) == row
    assert len(other) == len(reference)


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
        mine = p._split_simple(line, delimiter)
        if mine is not None:
            assert mine == next(csv.reader([line], delimiter=delimiter), [])
    assert p._split_simple('"x, y",pos,r1\n', ",") == ["x, y", "pos", "r1"]
    assert p._split_simple('"a""b",c\n', ",") is None
