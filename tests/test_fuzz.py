"""Property-based fuzzing (hypothesis) of everything that parses untrusted input:
dataset files, the four configuration dictionaries, resource names and store
keys. The only acceptable outcomes are a result that keeps its invariants or a
TextftError (which the interceptor maps to a status); anything else is a crash."""

from __future__ import annotations

import csv
import io
import json
import string
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability import HEAVY, record

from textft.errors import InvalidArgument, TextftError
from textft.v1 import common_pb2
from textft_services.common import names
from textft_services.common import rows as rows_store
from textft_services.common.store import check_key
from textft_services.dataset import parsing
from textft_services.trainer import configs
from textft_services.trainer.templates import TEMPLATES

pytestmark = pytest.mark.reliability
EXAMPLES = 2000 if HEAVY else 250
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
FORMATS = [parsing.CSV, parsing.TSV, parsing.JSONL]
TASKS = [common_pb2.TASK_UNSPECIFIED, common_pb2.TASK_TEXT_CLASSIFICATION, common_pb2.TASK_TEXT_GENERATION]
COUNTS: dict[str, list[int]] = {}


@contextmanager
def _counted(area: str) -> Iterator[None]:
    """Counts one fuzz input of `area`, and a crash when the body raises."""
    crashed = True
    try:
        yield
        crashed = False
    finally:
        tried, crashes = COUNTS.setdefault(area, [0, 0])
        COUNTS[area] = [tried + 1, crashes + int(crashed)]
        record(area, "inputs tried / crashes", f"{COUNTS[area][0]} / {COUNTS[area][1]}")


def _parse(
    data: bytes, fmt: int, task: int, mapping: dict[str, str] | None = None, fast: bool = True
) -> tuple[parsing.ParseResult | None, list[dict], list[parsing.Issue]]:
    rows: list[dict] = []
    issues: list[parsing.Issue] = []
    options = parsing.ParseOptions(format=fmt, task=task, column_mapping=mapping or {}, max_text_chars=2000, fast=fast)
    try:
        result = parsing.validate(io.BytesIO(data), options, rows.append, issues.append)
    except TextftError:
        return None, rows, issues
    return result, rows, issues


def _check_invariants(result: parsing.ParseResult, rows: list[dict], issues: list[parsing.Issue]) -> None:
    s = result.stats
    assert s.row_count == s.valid_row_count + s.invalid_row_count
    assert len(rows) == s.valid_row_count
    for row in rows:
        assert row["text"].strip(), row
        assert row["row"] >= 1  # row numbers follow the file's lines: blank lines keep theirs
        assert set(row) == {"row", "text", "labels", "target", "id", "metadata", "split"}
        json.dumps(row)  # rows travel as JSON (the trainer's job files, the CLI's --json)
    assert all(i.row >= 0 for i in issues)
    numbers = [row["row"] for row in rows]
    assert numbers == sorted(set(numbers))
    assert sum(1 for i in issues if i.severity == parsing.ERROR and i.row > 0) >= s.invalid_row_count


def _check_rereads(
    data: bytes, fmt: int, task: int, result: parsing.ParseResult, rows: list[dict], issues: list
) -> None:
    """A stored version's rows read back from their Parquet encoding as the
    validator made them; and the shortcuts of ParseOptions.fast must change nothing."""
    assert [rows_store.to_row(r) for r in rows_store.rows_table(rows).to_pylist()] == rows
    slow, slow_rows, slow_issues = _parse(data, fmt, task, fast=False)
    assert slow is not None
    assert (slow, slow_rows, slow_issues) == (result, rows, issues)


@FUZZ
@given(data=st.binary(max_size=2048), fmt=st.sampled_from(FORMATS), task=st.sampled_from(TASKS))
def test_parsers_survive_arbitrary_bytes(data: bytes, fmt: int, task: int) -> None:
    with _counted("dataset parser (bytes)"):
        result, rows, issues = _parse(data, fmt, task)
        if result is not None:
            _check_invariants(result, rows, issues)
            _check_rereads(data, fmt, task, result, rows, issues)


_cell = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", '"', '""', "a,b", "x\ny", "pos|neg", '["a", "b"]', "[1,", "\t", "\r\n", "é", "\udcff"]),
)


@FUZZ
@given(
    header=st.lists(
        st.sampled_from(
            [
                "text",
                "label",
                "labels",
                "target",
                "id",
                "metadata",
                "split",
                "input",
                "concepts",
                "input.data.text.raw",
                "other",
                "",
            ]
        ),
        min_size=1,
        max_size=5,
    ),
    body=st.lists(st.lists(_cell, min_size=0, max_size=6), max_size=20),
    fmt=st.sampled_from([parsing.CSV, parsing.TSV]),
    task=st.sampled_from(TASKS),
    bad_bytes=st.booleans(),
)
def test_delimited_files_keep_invariants(
    header: list[str], body: list[list[str]], fmt: int, task: int, bad_bytes: bool
) -> None:
    out = io.StringIO()
    writer = csv.writer(out, delimiter="," if fmt == parsing.CSV else "\t")
    writer.writerow(header)
    writer.writerows(body)
    data = out.getvalue().encode("utf-8", "surrogateescape")
    if bad_bytes:
        data = data.replace(b"e", b"\xff\xfe", 1)
    with _counted("dataset parser (CSV/TSV)"):
        result, rows, issues = _parse(data, fmt, task)
        if result is not None:
            _check_invariants(result, rows, issues)
            _check_rereads(data, fmt, task, result, rows, issues)


_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


@FUZZ
@given(
    objects=st.lists(
        st.dictionaries(
            st.sampled_from(["text", "label", "labels", "target", "id", "metadata", "split", "x"]),
            _json_value,
            max_size=6,
        )
        | _json_value,
        max_size=15,
    ),
    task=st.sampled_from(TASKS),
)
def test_jsonl_files_keep_invariants(objects: list[object], task: int) -> None:
    data = "\n".join(json.dumps(o) for o in objects).encode()
    with _counted("dataset parser (JSONL)"):
        result, rows, issues = _parse(data, parsing.JSONL, task)
        if result is not None:
            _check_invariants(result, rows, issues)
            _check_rereads(data, parsing.JSONL, task, result, rows, issues)


_config_key = st.one_of(
    st.sampled_from(
        [
            "learning_rate",
            "num_train_epochs",
            "per_device_train_batch_size",
            "optim",
            "report_to",
            "seed",
            "output_dir",
            "push_to_hub",
            "hub_token",
            "trust_remote_code",
            "r",
            "lora_alpha",
            "target_modules",
            "modules_to_save",
            "pretrained_model_name_or_path",
            "model_max_length",
            "padding_side",
            "dtype",
            "lr_scheduler_type",
            "save_steps",
            "deepspeed",
            "bf16",
            "max_steps",
            "logging_steps",
            "peft_type",
        ]
    ),
    st.text(max_size=12),
)
_config_section = st.dictionaries(_config_key, _json_value, max_size=5)


@FUZZ
@given(
    overrides=st.fixed_dictionaries(
        {},
        optional={s: _config_section for s in ("model_config", "peft_config", "tokenizer_config", "trainer_config")},
    ),
    template=st.sampled_from(sorted(TEMPLATES)),
)
def test_config_validation_only_refuses_with_invalid_argument(overrides: dict, template: str) -> None:
    with _counted("config validation"):
        merged = configs.merge(TEMPLATES[template].defaults(), overrides)
        try:
            resolved = configs.validate(merged)
        except InvalidArgument as e:
            assert e.violations and all(v.field for v in e.violations)
        else:
            flat = {k for section in resolved.values() for k in section}
            assert not flat & set(configs.FORBIDDEN) - {"task_type"}, flat


_name_text = st.text(alphabet=string.printable + "\x00\x7f/é.", max_size=80)


@FUZZ
@given(value=_name_text)
def test_names_and_keys_never_escape(value: str) -> None:
    with _counted("names and store keys"):
        for parse in (
            names.parse_dataset,
            names.parse_dataset_version,
            names.parse_model,
            names.parse_model_version,
            names.parse_template,
        ):
            try:
                parsed = parse(value)
            except InvalidArgument:
                continue
            text = str(parsed)
            assert ".." not in text and "\x00" not in text and "\n" not in text
        try:
            key = check_key(value)
        except InvalidArgument:
            pass
        else:
            parts = key.split("/")
            assert not key.startswith("/") and ".." not in parts and "." not in parts
            assert all(c.isprintable() and c not in "\\" for c in key)
