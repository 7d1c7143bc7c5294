"""A dataset version's rows as stored: written once at upload, read by everyone.

The dataset service validates an upload and hands every valid, normalised row
to a RowsWriter, which writes them as immutable Parquet parts under the
version's `rows/` prefix and, once all are stored, a RowsManifest
(textft.internal.v1) naming each part with its sha256, row count and first row
index. Readers (ReadRows, the training job, evaluation) go through the
manifest only: nothing outside the dataset service parses a source file, and
a page far into a version reads one part, not the rows before it.

The validator hands the writer its valid rows in batches: tuples (Row, in
COLUMNS order: no dict per row), or already as Arrow columns (slices of a
block of CSV cells Arrow read, columns_batch()). One background thread turns
tuple batches into Arrow columns at once, cuts parts of at most PART_ROWS rows
or PART_BYTES bytes of text and target, writes each to a local file a row
group at a time and hashes it; UPLOADING_PARTS other threads upload the
finished files, so the writer (and the validator behind it) does not wait on
the store. Memory stays bounded by one row group of Arrow data plus the few
batches queued for the writer; finished parts wait on local disk.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from google.protobuf import json_format

from textft.errors import FailedPrecondition
from textft.internal.v1 import rows_pb2

from .store import ObjectStore

ROWS_SCHEMA_VERSION = 1
PART_ROWS = 65536
PART_BYTES = 32 << 20  # text and target (UTF-8) in one part: bounds what a page read holds
ROW_GROUP_ROWS = 4096  # the unit a page read decodes
QUEUED_BATCHES = 2  # batches waiting for the writer thread
# Finished parts waiting (as local files) for the uploading threads: the writer,
# and with it the validator, runs on while the store is slow to take a part
# (busy with the upload's source, which it receives at the same time).
QUEUED_PARTS = 16
# Parts are small next to the source and the store takes each one's request in
# turn with the source's: a few in flight keep its latency off the writer.
UPLOADING_PARTS = 2
HASH_BUFFER = 1 << 20
COLUMNS = ("row", "text", "labels", "target", "id", "metadata", "split")
# A normalised row as the validator makes it, in COLUMNS order.
Row = tuple[int, str, list[str], str, str, dict[str, Any], str]
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
# zstd: under a third of snappy's bytes on text for a little more CPU, which
# the store's side (hashing, writing a third of the bytes) pays back. Dictionary pages only where values
# repeat; text, ids and targets are mostly distinct, and trying costs a hash a
# value. Statistics are read by nobody: pages are found by row offsets.
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "use_dictionary": ["labels.list.element", "split"],
    "write_statistics": False,
}
_ENCODER = json.JSONEncoder(ensure_ascii=False)
_EMPTY = pa.py_buffer(b"")


def manifest_key(version_prefix: str) -> str:
    """Where a version's RowsManifest lives, given its prefix (ending in "/")."""
    return version_prefix + "rows/manifest.json"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BUFFER):
            digest.update(block)
    return digest.hexdigest()


def row_tuple(row: dict[str, Any]) -> Row:
    """A normalised row dict (as validate() and read_page() give them) as a Row."""
    return tuple(row[name] for name in COLUMNS)  # type: ignore[return-value]


def _offsets(lengths: Iterator[int], count: int) -> pa.Array:
    offsets = np.zeros(count + 1, dtype=np.int32)
    np.cumsum(np.fromiter(lengths, dtype=np.int64, count=count), out=offsets[1:], dtype=np.int32)
    return pa.Array.from_buffers(pa.int32(), count + 1, [None, pa.py_buffer(offsets)])


def strings(values: Sequence[str]) -> pa.Array:
    """A string column built from one joined buffer: C loops only, and no
    pandas (pa.array() imports it to check its input, ~45 MB of the service's
    memory). A batch's column stays far below int32 offsets' 2 GiB."""
    if not any(values):  # all "" (target, id, metadata, split often are): nothing to copy
        return empty_strings(len(values))
    encoded = list(map(str.encode, values))  # strict: a valid row holds no lone surrogate
    offsets = _offsets(map(len, encoded), len(encoded))
    return pa.StringArray.from_buffers(len(encoded), offsets.buffers()[1], pa.py_buffer(b"".join(encoded)))


def empty_strings(count: int) -> pa.Array:
    return pa.StringArray.from_buffers(count, pa.py_buffer(np.zeros(count + 1, np.int32)), _EMPTY)


def metadata_json(metadata: dict[str, Any]) -> str:
    """A row's metadata as its column stores it: a JSON object, "" for none."""
    return _ENCODER.encode(metadata) if metadata else ""


def columns_batch(
    row_numbers: Any,
    text: pa.Array,
    labels: pa.Array | None,
    target: pa.Array | None = None,
    row_id: pa.Array | None = None,
    metadata: pa.Array | None = None,
    split: pa.Array | None = None,
) -> pa.RecordBatch:
    """A part's columns from Arrow string columns (None: "" in every row) and
    the row numbers (int64 numpy). `labels` holds one label per row, None none:
    what a block of rows checked as Arrow columns has."""
    count = len(text)
    if labels is None:
        labels = empty_strings(0)
        offsets = pa.py_buffer(np.zeros(count + 1, np.int32))
    else:
        offsets = pa.py_buffer(np.arange(count + 1, dtype=np.int32))
    label_type = SCHEMA.field("labels").type
    columns = [
        pa.Array.from_buffers(pa.int64(), count, [None, pa.py_buffer(row_numbers)]),
        text,
        pa.ListArray.from_arrays(
            pa.Array.from_buffers(pa.int32(), count + 1, [None, offsets]), labels, type=label_type
        ),
        *(empty_strings(count) if column is None else column for column in (target, row_id, metadata, split)),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def rows_batch(rows: Sequence[Row]) -> pa.RecordBatch:
    """Normalised rows as the Arrow columns a part holds."""
    count = len(rows)
    if not count:
        return pa.RecordBatch.from_pylist([], schema=SCHEMA)
    numbers, texts, labels, targets, ids, metadata, splits = zip(*rows, strict=True)
    row_numbers = np.fromiter(numbers, dtype=np.int64, count=count)
    label_values = strings(list(chain.from_iterable(labels)))
    encoded = [metadata_json(m) for m in metadata] if any(metadata) else [""] * count
    columns = [
        pa.Array.from_buffers(pa.int64(), count, [None, pa.py_buffer(row_numbers)]),
        strings(texts),
        pa.ListArray.from_arrays(_offsets(map(len, labels), count), label_values, type=SCHEMA.field("labels").type),
        strings(targets),
        strings(ids),
        strings(encoded),
        strings(splits),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def rows_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Normalised row dicts as the Arrow table a part holds (tests, previews)."""
    return pa.Table.from_batches([rows_batch([row_tuple(row) for row in rows])], schema=SCHEMA)


def byte_lengths(strings: pa.Array) -> Any:
    """The byte length of each value of a string column (a numpy array, from its offsets)."""
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32, count=len(strings) + 1, offset=4 * strings.offset)
    return np.diff(offsets)


def _sizes(batch: pa.RecordBatch) -> Any:
    """Bytes of text and target of each row of a batch."""
    return byte_lengths(batch.column(1)).astype(np.int64) + byte_lengths(batch.column(3))


class RowsWriter:
    """Writes a version's rows (batches of Rows, as the validator hands them
    over) as Parquet parts under `prefix` and, on finish(), the manifest."""

    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        workdir: Path,
        dataset_version: str,
        part_rows: int = PART_ROWS,
        part_bytes: int = PART_BYTES,
        row_group_rows: int = ROW_GROUP_ROWS,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.workdir = workdir
        self.dataset_version = dataset_version
        self.part_rows, self.part_bytes, self.row_group_rows = part_rows, part_bytes, row_group_rows
        self.row_count = 0  # rows in finished parts (the writer thread's)
        self._parts: list[rows_pb2.RowsPart] = []
        self._file: pq.ParquetWriter | None = None  # the part being written, a row group at a time
        self._group: list[pa.RecordBatch] = []  # the row group being filled
        self._group_rows = self._part_rows = self._part_bytes = 0
        self._pending: queue.Queue[Sequence[Row] | pa.RecordBatch | None] = queue.Queue(maxsize=QUEUED_BATCHES)
        self._uploads: queue.Queue[tuple[str, Path] | None] = queue.Queue(maxsize=QUEUED_PARTS)
        self._error: BaseException | None = None
        self._store_last = False  # set by finish(): the thread stores the part it was filling
        self._abandoned = False  # set by close() without finish(): store nothing more
        self._thread = threading.Thread(target=self._store_parts, name="dataset-store-rows", daemon=True)
        self._uploaders = [
            threading.Thread(target=self._upload_parts, name=f"dataset-upload-rows-{k}", daemon=True)
            for k in range(UPLOADING_PARTS)
        ]
        self._thread.start()
        for thread in self._uploaders:
            thread.start()

    def write_rows(self, rows: Sequence[Row] | pa.RecordBatch) -> None:
        """Queues a batch of rows, as Rows or already as a part's columns
        (columns_batch); the writer keeps it: do not change it after."""
        if self._error is not None:
            raise self._error
        if rows:
            self._pending.put(rows)

    def _store_parts(self) -> None:
        try:
            while (rows := self._pending.get()) is not None:
                if self._error is not None:
                    continue  # drain: the writing thread raises the first error
                try:
                    self._add(rows if isinstance(rows, pa.RecordBatch) else rows_batch(rows))
                except BaseException as e:  # handed to the writing thread
                    self._error = e
            if self._store_last and self._error is None:
                try:
                    self._flush()
                except BaseException as e:
                    self._error = e
        finally:
            for _ in self._uploaders:
                self._uploads.put(None)

    def _upload_parts(self) -> None:
        while (item := self._uploads.get()) is not None:
            key, path = item
            if self._error is None and not self._abandoned:
                try:
                    self.store.put_file(key, path)
                except BaseException as e:  # handed to the writing thread
                    self._error = e
            path.unlink(missing_ok=True)

    def _add(self, batch: pa.RecordBatch) -> None:
        """Appends a batch to the part being written, a row group at a time,
        storing each part that fills up."""
        sizes = _sizes(batch)
        start = 0
        while start < batch.num_rows:
            room = min(self.part_rows - self._part_rows, self.row_group_rows - self._group_rows)
            ends = np.cumsum(sizes[start : start + room]) + self._part_bytes
            # The row that reaches the byte limit is the part's last, as is the part_rows-th.
            take = min(int(np.searchsorted(ends, self.part_bytes)) + 1, len(ends))
            self._group.append(batch.slice(start, take))
            self._group_rows += take
            self._part_rows += take
            self._part_bytes = int(ends[take - 1])
            start += take
            if self._part_rows >= self.part_rows or self._part_bytes >= self.part_bytes:
                self._flush()
            elif self._group_rows >= self.row_group_rows:
                self._write_group()

    def _write_group(self) -> None:
        if self._file is None:
            self._file = pq.ParquetWriter(self._path(), SCHEMA, **PARQUET_OPTIONS)
        self._file.write_table(pa.Table.from_batches(self._group, schema=SCHEMA), row_group_size=self.row_group_rows)
        self._group, self._group_rows = [], 0

    def _path(self) -> Path:
        """The local file of the part being written."""
        return self.workdir / f"part-{len(self._parts):05d}.parquet"

    def _flush(self) -> None:
        if not self._part_rows:
            return
        self._write_group()
        assert self._file is not None
        self._file.close()
        self._file = None
        path = self._path()
        key = f"{self.prefix}rows/part-{len(self._parts):05d}.parquet"
        part = rows_pb2.RowsPart(
            object=key,
            sha256=sha256_of(path),
            size_bytes=path.stat().st_size,
            row_count=self._part_rows,
            first_row=self.row_count,
        )
        self._part_rows = self._part_bytes = 0
        self._uploads.put((key, path))
        self._parts.append(part)
        self.row_count += part.row_count

    def close(self) -> None:
        """Stops the writer's threads (after finish(), or to abandon the rows:
        no part is stored once it returns)."""
        if not self._store_last:
            self._abandoned = True
        if self._thread.is_alive():
            self._pending.put(None)
            self._thread.join()
        for thread in self._uploaders:
            thread.join()

    def finish(self, task: int, label_names: list[str]) -> str:
        """Stores the last part and the manifest; returns the manifest's key."""
        self._store_last = True
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
