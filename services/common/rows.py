"""A dataset version's rows as stored: written once at upload, read by everyone.

The dataset service validates an upload and hands every valid, normalised row
to a RowsWriter, which writes them as immutable Parquet parts under the
version's `rows/` prefix and, once all are stored, a RowsManifest
(textft.internal.v1) naming each part with its sha256, row count and first row
index. Readers (ReadRows, the training job, evaluation) go through the
manifest only: nothing outside the dataset service parses a source file, and
a page far into a version reads one part, not the rows before it.

Memory while writing stays bounded: rows are gathered by column up to a part's
size (PART_ROWS rows or PART_CHARS characters of text, whichever comes first),
then one background thread encodes and uploads the part while the next one
fills; a writer that is two parts ahead waits for it.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from google.protobuf import json_format

from textft.errors import FailedPrecondition
from textft.internal.v1 import rows_pb2

from .store import ObjectStore

ROWS_SCHEMA_VERSION = 1
PART_ROWS = 65536
PART_CHARS = 8 << 20  # bounds an upload's memory: about three parts are held at once
ROW_GROUP_ROWS = 8192  # the unit a page read decodes
HASH_BUFFER = 1 << 20
COLUMNS = ("row", "text", "labels", "target", "id", "metadata", "split")
SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("labels", pa.list_(pa.string()), nullable=False),
        pa.field("target", pa.string(), nullable=False),
        pa.field("id", pa.string(), nullable=False),
        pa.field("metadata", pa.string(), nullable=False),  # a JSON object, "" for none
        pa.field("split", pa.string(), nullable=False),
    ]
)
_ENCODER = json.JSONEncoder(ensure_ascii=False)


def manifest_key(version_prefix: str) -> str:
    """Where a version's RowsManifest lives, given its prefix (ending in "/")."""
    return version_prefix + "rows/manifest.json"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BUFFER):
            digest.update(block)
    return digest.hexdigest()


def _append(columns: dict[str, list[Any]], row: dict[str, Any]) -> int:
    """Adds a normalised row to columns; returns its characters of text and target."""
    columns["row"].append(row["row"])
    text = row["text"]
    columns["text"].append(text)
    columns["labels"].append(row["labels"])
    target = row["target"]
    columns["target"].append(target)
    columns["id"].append(row["id"])
    metadata = row["metadata"]
    columns["metadata"].append(_ENCODER.encode(metadata) if metadata else "")
    columns["split"].append(row["split"])
    return len(text) + len(target)


def rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Normalised rows as the Arrow table a part holds (what RowsWriter encodes)."""
    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for row in rows:
        _append(columns, row)
    return pa.Table.from_pydict(columns, schema=SCHEMA)


class RowsWriter:
    """Writes a version's rows (dicts as the validator normalises them) as
    Parquet parts under `prefix` and, on finish(), the manifest."""

    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        workdir: Path,
        dataset_version: str,
        part_rows: int = PART_ROWS,
        part_chars: int = PART_CHARS,
        row_group_rows: int = ROW_GROUP_ROWS,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.workdir = workdir
        self.dataset_version = dataset_version
        self.part_rows, self.part_chars, self.row_group_rows = part_rows, part_chars, row_group_rows
        self.row_count = 0
        self._parts: list[rows_pb2.RowsPart] = []
        self._columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        self._chars = 0
        self._pending: queue.Queue[tuple[int, dict[str, list[Any]]] | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._store_parts, name="dataset-store-rows", daemon=True)
        self._thread.start()

    def write(self, row: dict[str, Any]) -> None:
        self._chars += _append(self._columns, row)
        if len(self._columns["row"]) >= self.part_rows or self._chars >= self.part_chars:
            self._flush()

    def _flush(self) -> None:
        count = len(self._columns["row"])
        if not count:
            return
        if self._error is not None:
            raise self._error
        self._parts.append(rows_pb2.RowsPart(row_count=count, first_row=self.row_count))
        self._pending.put((len(self._parts) - 1, self._columns))
        self.row_count += count
        self._columns = {name: [] for name in COLUMNS}
        self._chars = 0

    def _store_parts(self) -> None:
        while (item := self._pending.get()) is not None:
            if self._error is not None:
                continue  # drain: the writer raises the first error
            index, columns = item
            try:
                self._store_part(index, columns)
            except BaseException as e:  # handed to the writing thread
                self._error = e

    def _store_part(self, index: int, columns: dict[str, list[Any]]) -> None:
        table = pa.Table.from_pydict(columns, schema=SCHEMA)
        path = self.workdir / f"part-{index:05d}.parquet"
        pq.write_table(table, path, row_group_size=self.row_group_rows, compression="snappy")
        del table
        key = f"{self.prefix}rows/part-{index:05d}.parquet"
        part = self._parts[index]
        part.object, part.sha256, part.size_bytes = key, sha256_of(path), path.stat().st_size
        self.store.put_file(key, path)
        path.unlink()

    def close(self) -> None:
        """Stops the background thread (after finish(), or to abandon the rows)."""
        if self._thread.is_alive():
            self._pending.put(None)
            self._thread.join()

    def finish(self, task: int, label_names: list[str]) -> str:
        """Stores the last part and the manifest; returns the manifest's key."""
        self._flush()
        self.close()
        if self._error is not None:
            raise self._error
        manifest = rows_pb2.RowsManifest(
            schema_version=ROWS_SCHEMA_VERSION,
            dataset_version=self.dataset_version,
            task=task,  # type: ignore[arg-type]
            row_count=self.row_count,
            parts=self._parts,
            label_names=label_names,
        )
        key = manifest_key(self.prefix)
        self.store.put_json(key, json_format.MessageToDict(manifest, preserving_proto_field_name=True))
        return key


def load_manifest(store: ObjectStore, key: str) -> rows_pb2.RowsManifest:
    """The RowsManifest at key; FailedPrecondition for a layout this release cannot read."""
    manifest = json_format.ParseDict(store.get_json(key), rows_pb2.RowsManifest(), ignore_unknown_fields=True)
    if manifest.schema_version != ROWS_SCHEMA_VERSION:
        raise FailedPrecondition(
            f"the rows of {manifest.dataset_version} are stored in layout {manifest.schema_version}; this release "
            f"reads layout {ROWS_SCHEMA_VERSION}. Upload the file again as a new version.",
            reason="DATASET_ROWS_UNREADABLE",
        )
    return manifest


def require_rows(rows_manifest_object: str, dataset_version: str) -> str:
    """The manifest key of a version, or FailedPrecondition for a version
    stored before rows were materialised (its file must be uploaded again)."""
    if not rows_manifest_object:
        raise FailedPrecondition(
            f"{dataset_version} was stored by an earlier release that kept no rows manifest; upload its file "
            "again as a new version (textft datasets upload) to read or train on it",
            reason="DATASET_VERSION_NOT_MATERIALIZED",
        )
    return rows_manifest_object


def to_row(record: dict[str, Any]) -> dict[str, Any]:
    """A stored record as the normalised row dict the validator made."""
    metadata = record["metadata"]
    return {**record, "metadata": json.loads(metadata) if metadata else {}}


def _open_part(store: ObjectStore, part: rows_pb2.RowsPart) -> pq.ParquetFile:
    raw = store.open(part.object)
    if raw.seekable():
        return pq.ParquetFile(raw)
    with raw:  # a stream (S3): a part is bounded, read it whole
        return pq.ParquetFile(io.BytesIO(raw.read()))


def read_page(store: ObjectStore, manifest: rows_pb2.RowsManifest, start: int, stop: int) -> list[dict[str, Any]]:
    """Rows [start, stop) of the version, decoding only the row groups of the
    parts that hold them."""
    stop = min(stop, manifest.row_count)
    firsts = [part.first_row for part in manifest.parts]
    rows: list[dict[str, Any]] = []
    index = max(bisect.bisect_right(firsts, start) - 1, 0)
    while start < stop and index < len(manifest.parts):
        part = manifest.parts[index]
        parquet = _open_part(store, part)
        try:
            offset = part.first_row
            for group in range(parquet.metadata.num_row_groups):
                size = parquet.metadata.row_group(group).num_rows
                if offset + size > start and offset < stop:
                    table = parquet.read_row_group(group)
                    low, high = max(start - offset, 0), min(stop - offset, size)
                    rows.extend(to_row(record) for record in table.slice(low, high - low).to_pylist())
                offset += size
        finally:
            parquet.close()
        start = part.first_row + part.row_count
        index += 1
    return rows


def fetch_parts(store: ObjectStore, manifest: rows_pb2.RowsManifest, directory: Path) -> list[Path]:
    """The manifest's parts as local files under directory (named by sha256, so
    a part already there is not fetched again), each checked against its
    sha256. FailedPrecondition if a stored part does not match its manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for part in manifest.parts:
        path = directory / f"{part.sha256}.parquet"
        if not path.exists():
            partial = path.with_suffix(f".{os.getpid()}.partial")
            store.get_file(part.object, partial)
            actual = sha256_of(partial)
            if actual != part.sha256:
                partial.unlink()
                raise FailedPrecondition(
                    f"{part.object} of {manifest.dataset_version} has sha256 {actual}, its manifest says "
                    f"{part.sha256}: the stored rows were changed; upload the file again as a new version",
                    reason="DATASET_ROWS_CORRUPT",
                )
            partial.replace(path)
        paths.append(path)
    return paths


def iter_records(paths: list[Path], columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The record batches of local parts, in order (bounded memory)."""
    for path in paths:
        with pq.ParquetFile(path) as parquet:
            yield from parquet.iter_batches(columns=columns)
