"""The SDK's upload progress: rows counted as the bytes go out, whatever the
chunk boundaries, as the server's CSV reader counts them."""

from __future__ import annotations

import csv
import io
import json
import random

import pytest

from textft.uploads import RowCounter

pytestmark = pytest.mark.unit


def _count(data: bytes, delimited: bool, chunk: int) -> int:
    counter = RowCounter(delimited)
    for i in range(0, len(data), chunk):
        counter.feed(data[i : i + chunk])
    return counter.rows


def _csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([["text", "label"], *rows])
    return out.getvalue().encode()


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
def test_csv_rows_with_quoted_newlines_and_quotes_across_chunks(chunk: int) -> None:
    rng = random.Random(chunk)
    pieces = ["plain", "a,b", 'say "hi"', "two\nlines", '"', "\n\n", "x" * 50, "é"]
    rows = [[rng.choice(pieces) + rng.choice(pieces), rng.choice(["pos", "neg"])] for _ in range(300)]
    data = _csv(rows)
    assert len(list(csv.reader(io.StringIO(data.decode())))) - 1 == 300  # the reference count
    assert _count(data, True, chunk) == 300
    assert _count(data.rstrip(b"\n"), True, chunk) == 300  # no newline after the last row


def test_jsonl_and_empty_inputs() -> None:
    data = b"".join(json.dumps({"text": f'a "quote" {i}\nstill one line'}).encode() + b"\n" for i in range(25))
    assert _count(data, False, 5) == 25
    assert _count(data.rstrip(b"\n"), False, 1 << 20) == 25
    assert RowCounter(True).rows == 0 and RowCounter(False).rows == 0
    header_only = RowCounter(True)
    header_only.feed(b"text,label\n")
    assert header_only.rows == 0
