"""Rows as the dataset service stores them (services/common/rows.py): Parquet
parts and their manifest, on both store backends."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from textft.errors import FailedPrecondition
from textft.v1 import common_pb2
from textft_services.common import rows as stored_rows
from textft_services.common.store import ObjectStore

pytestmark = pytest.mark.integration

PREFIX = "datasets/d/versions/v1/"


def make_rows(n: int) -> list[dict]:
    return [
        {
            "row": 2 * i + 1,  # row numbers of the source: invalid rows leave gaps
            "text": f"text {i} caf\u00e9",
            "labels": ["a", "b"] if i % 3 == 0 else ["b"],
            "target": "",
            "id": f"r{i}",
            "metadata": {"n": i} if i % 5 == 0 else {},
            "split": "eval" if i % 7 == 0 else "",
        }
        for i in range(n)
    ]


def write(store: ObjectStore, tmp_path: Path, rows: list[dict], **sizes: int) -> str:
    writer = stored_rows.RowsWriter(store, PREFIX, tmp_path, "datasets/d/versions/v1", **sizes)
    try:
        for start in range(0, len(rows), 3):  # batches that straddle parts and row groups
            writer.write_rows([stored_rows.row_tuple(row) for row in rows[start : start + 3]])
        return writer.finish(common_pb2.TASK_TEXT_CLASSIFICATION, ["a", "b"])
    finally:
        writer.close()


def test_parts_and_manifest_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    rows = make_rows(23)
    work = tmp_path / "work"
    work.mkdir()
    key = write(store, work, rows, part_rows=10, row_group_rows=4)
    assert key == PREFIX + "rows/manifest.json"
    manifest = stored_rows.load_manifest(store, key)
    assert manifest.schema_version == stored_rows.ROWS_SCHEMA_VERSION
    assert manifest.row_count == 23 and list(manifest.label_names) == ["a", "b"]
    assert [(p.first_row, p.row_count) for p in manifest.parts] == [(0, 10), (10, 10), (20, 3)]
    for part in manifest.parts:
        data = store.get_bytes(part.object)
        assert (part.sha256, part.size_bytes) == (hashlib.sha256(data).hexdigest(), len(data))
    assert stored_rows.read_page(store, manifest, 0, 100) == rows
    assert list(work.iterdir()) == []  # local copies of the parts are gone once stored


@pytest.mark.parametrize(("start", "stop"), [(0, 1), (3, 5), (9, 11), (13, 22), (19, 23), (22, 40), (23, 30)])
def test_a_page_anywhere_reads_the_same_rows(store: ObjectStore, tmp_path: Path, start: int, stop: int) -> None:
    rows = make_rows(23)
    manifest = stored_rows.load_manifest(store, write(store, tmp_path, rows, part_rows=10, row_group_rows=4))
    assert stored_rows.read_page(store, manifest, start, stop) == rows[start:stop]


def test_a_far_page_reads_only_its_part(store: ObjectStore, tmp_path: Path) -> None:
    rows = make_rows(30)
    manifest = stored_rows.load_manifest(store, write(store, tmp_path, rows, part_rows=10))
    store.delete(manifest.parts[0].object)  # a page in the last part never touches the first
    store.delete(manifest.parts[1].object)
    assert stored_rows.read_page(store, manifest, 25, 28) == rows[25:28]


def test_parts_are_cut_by_characters_too(store: ObjectStore, tmp_path: Path) -> None:
    rows = make_rows(12)
    manifest = stored_rows.load_manifest(store, write(store, tmp_path, rows, part_bytes=30))
    assert len(manifest.parts) > 1 and sum(p.row_count for p in manifest.parts) == 12
    assert stored_rows.read_page(store, manifest, 0, 12) == rows


def test_fetched_parts_are_checked_against_their_sha256(store: ObjectStore, tmp_path: Path) -> None:
    rows = make_rows(15)
    manifest = stored_rows.load_manifest(store, write(store, tmp_path, rows, part_rows=10))
    paths = stored_rows.fetch_parts(store, manifest, tmp_path / "cache")
    assert [p.name for p in paths] == [f"{part.sha256}.parquet" for part in manifest.parts]
    records = [r for batch in stored_rows.iter_records(paths) for r in batch.to_pylist()]
    assert [stored_rows.to_row(r) for r in records] == rows

    store.put_bytes(manifest.parts[1].object, b"changed")
    paths[1].unlink()
    with pytest.raises(FailedPrecondition) as raised:
        stored_rows.fetch_parts(store, manifest, tmp_path / "cache")
    assert raised.value.reason == "DATASET_ROWS_CORRUPT"


def test_an_unknown_layout_is_refused(store: ObjectStore, tmp_path: Path) -> None:
    key = write(store, tmp_path, make_rows(2))
    store.put_json(key, {**store.get_json(key), "schema_version": stored_rows.ROWS_SCHEMA_VERSION + 1})
    with pytest.raises(FailedPrecondition) as raised:
        stored_rows.load_manifest(store, key)
    assert raised.value.reason == "DATASET_ROWS_UNREADABLE"


def test_an_empty_version_has_no_parts(store: ObjectStore, tmp_path: Path) -> None:
    manifest = stored_rows.load_manifest(store, write(store, tmp_path, []))
    assert manifest.row_count == 0 and list(manifest.parts) == []
    assert stored_rows.read_page(store, manifest, 0, 10) == []


def test_validation_and_rows_do_not_import_pandas() -> None:
    """pandas (installed with datasets) costs the dataset service ~45 MB; a
    BooleanArray.to_numpy() or a pa.array() of Python objects would import it."""
    script = """
import sys
from textft_services.common import rows
from textft_services.dataset import parsing
data = b"text,label,split,metadata\\n" + b"".join(b'"t %d",l%d,train,"{""k"": 1}"\\n' % (i, i % 3) for i in range(3000))
result, rows_out, issues = parsing.validate_bytes(data, parsing.ParseOptions(parsing.CSV))
assert result.stats.valid_row_count == 3000
rows.rows_table(rows_out)
print("pandas" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
