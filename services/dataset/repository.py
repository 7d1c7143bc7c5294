"""Datasets and their versions: records in the metadata database, bytes in the
object store.

The database (schema.datasets, schema.dataset_versions) holds every Dataset and
DatasetVersion record, keyed by its full name; Get and List answer from it. A
version's row is inserted UPLOADING when its id is allocated (one transaction,
so no two uploads on any replica share an id, and ids are never handed out
again) and turns PUBLISHED, with its record, only once its objects are in the
store; only published versions are visible and they never change.

Store layout (under the app's prefix: `apps/{app}/`, nothing for the default app; a
dataset's prefix is its name, see names.py), artifacts only:
    datasets/{dataset}/versions/{version}/source.{ext}  the uploaded bytes as they came
    datasets/{dataset}/versions/{version}/rows/         the valid rows, normalised: Parquet parts and
                                                        their manifest.json (services/common/rows.py)
    datasets/{dataset}/versions/{version}/report.json   stats and every issue (see write_report)

Stores written by earlier releases also hold datasets/{dataset}/dataset.json and
versions/{version}/manifest.json (the records, the manifest written last as the
publish marker): they are imported into the database once, when the first
service on that database starts (import_store_records), and are left in place.

An upload is received, validated and stored at the same time: the receiving
thread appends the chunks to a local spool file (sha256 computed and size cap
applied on the way in), while a second thread reads the spool as it grows,
checks the header, reserves the version id, copies the source to the store
(multipart, from a third reader of the spool) and validates the rows, whose
valid ones (in batches) a RowsWriter stores as Parquet parts as they come; the rows
manifest and the report follow, the version's row is published last. A header problem ends the
upload before the rest is received. Memory stays bounded whatever the file
size (a few store parts in flight), a cut-off stream publishes nothing, and
any failure removes everything under the version's prefix and its row.

Rows are materialised once, here: ReadRows and the trainer read the Parquet
parts through the rows manifest (DatasetVersion.rows_manifest_object) and never
parse the source again. Versions stored by earlier releases (parse.json or
rows.jsonl, no rows manifest) are not read: ReadRows and training answer
FAILED_PRECONDITION DATASET_VERSION_NOT_MATERIALIZED, and the file must be
uploaded again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

import sqlalchemy as sa
from google.protobuf import json_format, struct_pb2

from textft.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from textft.v1 import common_pb2, dataset_pb2

from ..common import names, schema
from ..common import rows as stored_rows
from ..common.config import Settings
from ..common.db import Database, open_database
from ..common.names import DatasetName, DatasetVersionName, app_prefix, check_id, paginate, version_sort_key
from ..common.protojson import now, to_dict
from ..common.store import ObjectStore, check_key
from ..common.usage import StoredBytes, exceeded
from . import parsing
from .inuse import UsageCheck

log = logging.getLogger("textft.dataset")
COPY_BUFFER = 1024 * 1024
# ImportDatasetVersion reads only objects under this prefix of the bucket.
IMPORTS_PREFIX = "imports/"
DATASETS, VERSIONS, COUNTERS = schema.datasets, schema.dataset_versions, schema.id_counters
UPLOADING, PUBLISHED = "UPLOADING", "PUBLISHED"
# import_store_records: its id_counters marker, and its pg_advisory_xact_lock key.
IMPORT_KIND = "store_import:datasets"
IMPORT_LOCK = 0x7465787466740002
_SEVERITY = {parsing.ERROR: common_pb2.RowIssue.SEVERITY_ERROR, parsing.WARNING: common_pb2.RowIssue.SEVERITY_WARNING}


def dataset_name(dataset: DatasetName | str) -> DatasetName:
    """A dataset's name; a bare id is one of the default app."""
    return dataset if isinstance(dataset, DatasetName) else DatasetName(dataset)


@dataclass
class UploadSpec:
    """What an upload header asks for, in domain terms."""

    dataset: DatasetName | str
    format: int = dataset_pb2.DATASET_FORMAT_UNSPECIFIED
    task: int = common_pb2.TASK_UNSPECIFIED
    column_mapping: dict[str, str] = field(default_factory=dict)
    description: str = ""
    filename: str = ""

    def __post_init__(self) -> None:
        self.dataset = dataset_name(self.dataset)


def dataset_prefix(dataset: DatasetName | str) -> str:
    return f"{dataset_name(dataset)}/"


def dataset_key(dataset: DatasetName | str) -> str:
    """Where earlier releases kept the Dataset record (imported, see import_store_records)."""
    return f"{dataset_name(dataset)}/dataset.json"


def version_prefix(dataset: DatasetName | str, version: str) -> str:
    name = dataset_name(dataset)
    return f"{DatasetVersionName(name.dataset, version, name.app)}/"


def manifest_key(dataset: DatasetName | str, version: str) -> str:
    """Where earlier releases kept the DatasetVersion record, written last."""
    return version_prefix(dataset, version) + "manifest.json"


_ENCODER = json.JSONEncoder(ensure_ascii=False)  # one encoder: json.dumps(..., ensure_ascii=False) builds one per call


def _encode(value: Any) -> str:
    return _ENCODER.encode(value)


def stats_to_proto(stats: dict[str, Any]) -> dataset_pb2.DatasetStats:
    return dataset_pb2.DatasetStats(**stats)


def issue_to_proto(issue: dict[str, Any]) -> common_pb2.RowIssue:
    return common_pb2.RowIssue(
        row=int(issue.get("row", 0)),
        severity=_SEVERITY.get(issue.get("severity", ""), common_pb2.RowIssue.SEVERITY_UNSPECIFIED),
        code=issue.get("code", ""),
        message=issue.get("message", ""),
        field=issue.get("field", ""),
    )


def row_to_proto(row: dict[str, Any]) -> dataset_pb2.Row:
    metadata = None
    if row.get("metadata"):
        metadata = struct_pb2.Struct()
        metadata.update(row["metadata"])
    return dataset_pb2.Row(
        row=int(row["row"]),
        text=row.get("text", ""),
        labels=row.get("labels", []),
        target=row.get("target", ""),
        id=row.get("id", ""),
        metadata=metadata,
        split=row.get("split", ""),
    )


def write_report(out: IO[str], stats: dict[str, Any], issue_count: int, issues: IO[str]) -> None:
    """report.json is one JSON document laid out one issue per line, so it can
    be paged by streaming lines without loading it:
        {"issue_count": N, "stats": {...},
        "issues": [
        {...},
        {...}
        ]}
    """
    out.write(json.dumps({"issue_count": issue_count, "stats": stats}, sort_keys=True)[:-1] + ",\n")
    out.write('"issues": [\n')
    first = True
    for line in issues:
        out.write(("" if first else ",\n") + line.rstrip("\n"))
        first = False
    out.write(("" if first else "\n") + "]}\n")


def _read_report_head(lines: Iterator[bytes]) -> dict[str, Any]:
    head = next(lines, b"").decode().rstrip().rstrip(",")
    value = json.loads(head + "}")
    if next(lines, b"").strip() != b'"issues": [':
        raise ValueError("report.json is not laid out as write_report writes it")
    return value


class _SpoolAborted(Exception):
    """The upload's stream failed; readers of its spool stop with this."""


class _Spool:
    """The upload's bytes in a local file, written by the receiving thread and
    read at the same time by others (reader() waits at the current end until
    more arrives), so receiving, validating and storing overlap. The sha256 and
    the size cap are applied on the way in."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.size = 0  # bytes written so far; readers see up to here
        self.sha256 = hashlib.sha256()
        self._file = open(path, "wb")  # noqa: SIM115 - closed in finish() / fail()
        self._changed = threading.Condition()
        self._done = False
        self._failed = False

    def write(self, chunk: bytes) -> None:
        if self.size + len(chunk) > self.limit:
            raise InvalidArgument.for_field(
                "chunk",
                f"the upload exceeds the limit of {self.limit} bytes (max_upload_bytes); "
                "split the file into several datasets or ask the operator to raise TEXTFT_MAX_UPLOAD_BYTES",
                reason="UPLOAD_TOO_LARGE",
            )
        self.sha256.update(chunk)
        self._file.write(chunk)
        self._file.flush()  # readers use their own descriptor
        with self._changed:
            self.size += len(chunk)
            self._changed.notify_all()

    def finish(self) -> None:
        """Every byte has arrived: readers reach the end of the file."""
        self._end(failed=False)

    def fail(self) -> None:
        """The stream broke: readers raise _SpoolAborted."""
        self._end(failed=True)

    def _end(self, failed: bool) -> None:
        self._file.close()
        with self._changed:
            self._done, self._failed = True, failed
            self._changed.notify_all()

    def wait_beyond(self, position: int) -> int:
        """The size once it is past position or the stream has ended."""
        self._wait(lambda: self.size > position)
        return self.size

    def wait_done(self) -> None:
        self._wait(lambda: False)

    def _wait(self, ready: Callable[[], bool]) -> None:
        with self._changed:
            self._changed.wait_for(lambda: ready() or self._done)
            if self._failed:
                raise _SpoolAborted("the upload stream failed")

    def reader(self) -> BinaryIO:
        return io.BufferedReader(_SpoolReader(self), COPY_BUFFER)  # type: ignore[return-value]


class _SpoolReader(io.RawIOBase):
    """A seekable reader of a _Spool that waits for bytes not yet written."""

    def __init__(self, spool: _Spool) -> None:
        self._spool = spool
        self._fd = os.open(spool.path, os.O_RDONLY)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = self._spool.wait_beyond(self._position)
        n = min(len(buffer), size - self._position)
        if n <= 0:
            return 0
        read = os.preadv(self._fd, [memoryview(buffer)[:n]], self._position)
        self._position += read
        return read

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._position = offset
        elif whence == io.SEEK_CUR:
            self._position += offset
        else:
            self._spool.wait_done()
            self._position = self._spool.size + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class DatasetCore:
    """The dataset service's core (what TrainerCore is to the trainer): datasets,
    versions, rows and reports."""

    def __init__(
        self, store: ObjectStore, settings: Settings, usage: UsageCheck | None = None, database: Database | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        # Version numbers come from the metadata database, shared by every replica.
        self.database = database or open_database(settings)
        self.usage = usage  # who uses a dataset (the trainer); None: nobody is asked
        self._tmp_root = Path(settings.home) / "tmp" / "dataset"
        self._uploads: dict[str, int] = {}  # uploads in progress per app (TEXTFT_QUOTA_UPLOADS)
        self._uploads_lock = threading.Lock()
        self.stored = StoredBytes(self.database)
        self.import_store_records()

    # ------------------------------------------------------------ datasets
    def create_dataset(
        self, dataset_id: str, description: str, labels: dict[str, str], app: str = names.DEFAULT_APP
    ) -> dataset_pb2.Dataset:
        name = DatasetName(check_id(dataset_id, "dataset_id"), app)
        dataset = dataset_pb2.Dataset(name=str(name), description=description, labels=labels, create_time=now())
        try:
            with self.database.write() as conn:
                conn.execute(
                    sa.insert(DATASETS).values(
                        name=str(name),
                        app=app,
                        dataset_id=name.dataset,
                        record=_encode(to_dict(dataset)),
                        created_at=time.time(),
                    )
                )
                # Leftovers of an interrupted delete must not resurface as versions of the new
                # dataset; removed before the row is visible, so no upload of it has begun.
                self.store.delete_prefix(dataset_prefix(name))
        except sa.exc.IntegrityError:
            raise AlreadyExists(f"dataset {name} already exists", reason="DATASET_EXISTS") from None
        return dataset

    def require_dataset(self, dataset_id: DatasetName | str) -> None:
        dataset_id = dataset_name(dataset_id)
        with self.database.read() as conn:
            if not _dataset_exists(conn, dataset_id):
                raise names.not_found(str(dataset_id))

    def get_dataset(self, dataset_id: DatasetName | str) -> dataset_pb2.Dataset:
        dataset_id = dataset_name(dataset_id)
        with self.database.read() as conn:
            row = conn.execute(sa.select(DATASETS.c.record).where(DATASETS.c.name == str(dataset_id))).first()
            if row is None:
                raise names.not_found(str(dataset_id))
            latest = conn.execute(
                sa.select(sa.func.max(VERSIONS.c.number)).where(
                    VERSIONS.c.dataset == str(dataset_id), VERSIONS.c.state == PUBLISHED
                )
            ).scalar_one()
        return _dataset_record(row.record, f"{dataset_id}/versions/v{latest}" if latest else "")

    def list_datasets(
        self, page_size: int, page_token: str, app: str = names.DEFAULT_APP
    ) -> tuple[list[dataset_pb2.Dataset], str]:
        with self.database.read() as conn:
            ids = list(
                conn.execute(
                    sa.select(DATASETS.c.dataset_id).where(DATASETS.c.app == app).order_by(DATASETS.c.dataset_id)
                ).scalars()
            )
            page, token = paginate(ids, page_size, page_token)
            wanted = [str(DatasetName(dataset_id, app)) for dataset_id in page]
            newest = sa.select(VERSIONS.c.dataset, sa.func.max(VERSIONS.c.number).label("number")).where(
                VERSIONS.c.dataset.in_(wanted), VERSIONS.c.state == PUBLISHED
            )
            latest = dict(conn.execute(newest.group_by(VERSIONS.c.dataset)).tuples().all())
            records = dict(
                conn.execute(sa.select(DATASETS.c.name, DATASETS.c.record).where(DATASETS.c.name.in_(wanted)))
                .tuples()
                .all()
            )
        return [
            _dataset_record(records[name], f"{name}/versions/v{latest[name]}" if name in latest else "")
            for name in wanted
            if name in records
        ], token

    def delete_dataset(self, dataset_id: DatasetName | str, force: bool = False) -> None:
        """Removes the dataset's rows, then every object under its prefix.
        Unless force, refuses while unfinished model versions use it (as the
        trainer reports them). A dataset whose rows are gone but whose objects
        are left (an interrupted delete) can be deleted again."""
        dataset_id = dataset_name(dataset_id)
        with self.database.read() as conn:
            exists = _dataset_exists(conn, dataset_id)
        if not exists and next(iter(self.store.list(dataset_prefix(dataset_id))), None) is None:
            raise names.not_found(str(dataset_id))
        users = None if force or self.usage is None else self.usage.in_use(dataset_id)
        if users:
            shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
            raise FailedPrecondition(
                f"{dataset_id} is used by model versions that have not finished: {shown}; "
                "wait for them or cancel them, or delete with force=true (they then fail if they have not "
                "read their rows yet)",
                reason="DATASET_IN_USE",
                metadata={"model_versions": ",".join(users[:50])},
            )
        # The rows first, in one transaction: the dataset and its versions vanish at once, and an
        # upload still writing (its row deleted with them) fails at publish and removes its objects.
        with self.database.write() as conn:
            conn.execute(sa.delete(VERSIONS).where(VERSIONS.c.dataset == str(dataset_id)))
            conn.execute(sa.delete(DATASETS).where(DATASETS.c.name == str(dataset_id)))
        self.store.delete_prefix(dataset_prefix(dataset_id))
        self.stored.forget(dataset_id.app, str(dataset_id))

    # ------------------------------------------------------------ versions
    def get_version(self, dataset_id: DatasetName | str, version_id: str) -> dataset_pb2.DatasetVersion:
        dataset_id = dataset_name(dataset_id)
        name = version_prefix(dataset_id, version_id)[:-1]
        with self.database.read() as conn:
            record = conn.execute(
                sa.select(VERSIONS.c.record).where(VERSIONS.c.name == name, VERSIONS.c.state == PUBLISHED)
            ).scalar_one_or_none()
            if record is None:
                raise names.not_found(name if _dataset_exists(conn, dataset_id) else str(dataset_id))
        return _version_record(record)

    def list_versions(
        self, dataset_id: DatasetName | str, page_size: int, page_token: str
    ) -> tuple[list[dataset_pb2.DatasetVersion], str]:
        """Published versions, newest first."""
        dataset_id = dataset_name(dataset_id)
        with self.database.read() as conn:
            if not _dataset_exists(conn, dataset_id):
                raise names.not_found(str(dataset_id))
            published = (VERSIONS.c.dataset == str(dataset_id)) & (VERSIONS.c.state == PUBLISHED)
            count = conn.execute(sa.select(sa.func.count()).where(published)).scalar_one()
            window, token = paginate(range(count), page_size, page_token)
            records = conn.execute(
                sa.select(VERSIONS.c.record)
                .where(published)
                .order_by(VERSIONS.c.number.desc())
                .offset(window.start)
                .limit(len(window))
            ).scalars()
            return [_version_record(record) for record in records], token

    def read_rows(
        self, dataset_id: DatasetName | str, version_id: str, page_size: int, page_token: str
    ) -> tuple[list[dataset_pb2.Row], str]:
        dataset_id = dataset_name(dataset_id)
        version = self.get_version(dataset_id, version_id)
        manifest = stored_rows.load_manifest(
            self.store, stored_rows.require_rows(version.rows_manifest_object, version.name)
        )
        # A page reads the row groups that hold it, found by the manifest's offsets.
        window, token = paginate(range(manifest.row_count), page_size, page_token)
        page = stored_rows.read_page(self.store, manifest, window.start, window.stop)
        return [row_to_proto(row) for row in page], token

    def validation_report(
        self, dataset_id: DatasetName | str, version_id: str, page_size: int, page_token: str
    ) -> tuple[dataset_pb2.DatasetStats, list[common_pb2.RowIssue], str]:
        dataset_id = dataset_name(dataset_id)
        self.get_version(dataset_id, version_id)
        issues = []
        with self.store.open(version_prefix(dataset_id, version_id) + "report.json") as f:
            lines = iter(f)
            head = _read_report_head(lines)
            window, token = paginate(range(int(head["issue_count"])), page_size, page_token)
            for index, line in enumerate(lines):
                if index >= window.stop or line.startswith(b"]}"):
                    break
                if index >= window.start:
                    issues.append(issue_to_proto(json.loads(line.rstrip().rstrip(b","))))
        return stats_to_proto(head["stats"]), issues, token

    # ------------------------------------------------------------ uploads
    def upload(self, spec: UploadSpec, chunks: Iterable[bytes]) -> dataset_pb2.DatasetVersion:
        """Creates a version from streamed bytes. Header problems are reported
        before a single chunk is read."""
        return self._ingest(spec, self._options(spec), chunks)

    def import_object(self, spec: UploadSpec, source_object: str) -> dataset_pb2.DatasetVersion:
        """Creates a version from an object already in the store, under IMPORTS_PREFIX."""
        if not source_object:
            raise InvalidArgument.for_field("source_object", "required: the key of an object in the store")
        try:
            check_key(source_object)
        except InvalidArgument:
            raise InvalidArgument.for_field(
                "source_object", f"{source_object[:200]!r} is not a valid object key", reason="INVALID_OBJECT_KEY"
            ) from None
        imports = app_prefix(spec.dataset.app) + IMPORTS_PREFIX  # an app imports from its own prefix only
        if not source_object.startswith(imports):
            # Imports read what was put there to be imported, never another
            # dataset's source, a model's files or a base model's weights.
            raise InvalidArgument.for_field(
                "source_object",
                f"imports read only objects under {imports} (put the file at {imports}<name> first), "
                f"got {source_object[:200]!r}",
                reason="IMPORT_OUTSIDE_PREFIX",
            )
        options = self._options(spec)
        try:
            src = self.store.open(source_object)
        except NotFound:
            raise NotFound(f"object {source_object} not found in the store", reason="OBJECT_NOT_FOUND") from None
        with src:
            return self._ingest(spec, options, iter(lambda: src.read(COPY_BUFFER), b""))

    def _ingest(
        self, spec: UploadSpec, options: parsing.ParseOptions, chunks: Iterable[bytes]
    ) -> dataset_pb2.DatasetVersion:
        """Receives the chunks into a spool in this thread while another one
        validates and stores them as they arrive (see _create_version)."""
        app = spec.dataset.app
        with self._upload_slot(app) as receive, self._workdir() as work:
            spool = _Spool(work / "source", self.settings.max_upload_bytes)
            build = _Background(lambda: self._create_version(spec, options, spool), "dataset-validate")
            try:
                for chunk in chunks:
                    if build.finished():  # it failed early (a header problem): stop receiving
                        break
                    receive(len(chunk))
                    spool.write(chunk)
            except BaseException:
                spool.fail()
                build.wait()
                raise
            spool.finish()
            if spool.size == 0:
                build.wait()
                raise InvalidArgument(
                    "the file is empty (0 bytes): send its bytes as chunk messages after the header",
                    reason="EMPTY_FILE",
                )
            version = build.result()
        self.stored.measure_quietly(self.store, app, version.name)
        return version  # type: ignore[no-any-return]

    def _options(self, spec: UploadSpec) -> parsing.ParseOptions:
        self.require_dataset(spec.dataset)
        fmt = parsing.infer_format(spec.format, spec.filename)
        mapping = parsing.check_column_mapping(spec.column_mapping)
        if spec.task not in (common_pb2.TASK_UNSPECIFIED, parsing.CLASSIFICATION, parsing.GENERATION):
            raise InvalidArgument.for_field("header.task", f"unknown task value {spec.task}")
        return parsing.ParseOptions(fmt, spec.task, mapping, self.settings.max_text_chars)

    @contextmanager
    def _upload_slot(self, app: str) -> Iterator[Callable[[int], None]]:
        """The app's quota of uploads in progress (TEXTFT_QUOTA_UPLOADS), counted
        on this replica, and of stored bytes (TEXTFT_QUOTA_STORED_BYTES): the
        function it gives counts the bytes received and stops the upload once
        they would take the app past its quota (concurrent uploads of one app
        are each counted against what was stored when they began)."""
        stored_quota = self.settings.quota_stored_bytes
        stored = self.stored.used(app) if stored_quota > 0 else 0
        if stored_quota > 0 and stored >= stored_quota:
            raise exceeded(app, stored_quota, stored)
        received = 0

        def receive(n: int) -> None:
            nonlocal received
            received += n
            if stored_quota > 0 and stored + received > stored_quota:
                raise exceeded(app, stored_quota, stored + received)

        quota = self.settings.quota_uploads
        with self._uploads_lock:
            if quota > 0 and self._uploads.get(app, 0) >= quota:
                raise ResourceExhausted(
                    f"app {app} has {self._uploads[app]} uploads in progress; its quota (TEXTFT_QUOTA_UPLOADS) is "
                    f"{quota}: retry when one ends",
                    reason="QUOTA_UPLOADS",
                )
            self._uploads[app] = self._uploads.get(app, 0) + 1
        try:
            yield receive
        finally:
            with self._uploads_lock:
                self._uploads[app] -= 1

    def _workdir(self) -> _TempDir:
        self._tmp_root.mkdir(parents=True, exist_ok=True)
        return _TempDir(self._tmp_root)

    def _create_version(
        self, spec: UploadSpec, options: parsing.ParseOptions, spool: _Spool
    ) -> dataset_pb2.DatasetVersion:
        """Validates the spool as it fills and publishes the version. The header
        is checked first; then the version id is reserved, the source is copied
        to the store in the background while the rows are validated and the
        valid ones stored as Parquet parts; the rows manifest and the report
        follow, the version's manifest last. Any failure removes everything
        under the version's prefix."""
        dataset = spec.dataset
        work = spool.path.parent
        issues_path, report_path = work / "issues.jsonl", work / "report.json"
        started = time.monotonic()
        with spool.reader() as source:
            validation = parsing.prepare(source, options)  # header problems: nothing written yet
            version_id = self._reserve(dataset)
            prefix = version_prefix(dataset, version_id)
            source_key = prefix + f"source.{parsing.SOURCE_SUFFIX[options.format]}"
            copy = _Background(lambda: self._copy_source(source_key, spool), "dataset-store-source")
            (work / "rows").mkdir()
            rows = stored_rows.RowsWriter(self.store, prefix, work / "rows", prefix[:-1])
            try:
                try:
                    with open(issues_path, "w", encoding="utf-8") as issues_out:
                        result = validation.run(
                            rows.write_rows, lambda issue: issues_out.write(_encode(issue.to_dict()) + "\n")
                        )
                    rows_key = rows.finish(result.task, result.label_names)
                finally:
                    rows.close()  # no write may land after a clean-up
                    validated = time.monotonic()
                    copy.wait()
                stored = time.monotonic()
                copy.result()
                spool.wait_done()  # validation read to the end: sha256 and size are final
                sha256, size = spool.sha256.hexdigest(), spool.size
                stats = result.stats.to_dict()
                with open(report_path, "w", encoding="utf-8") as out, open(issues_path, encoding="utf-8") as issues:
                    write_report(out, stats, result.issue_count, issues)
                self.store.put_file(prefix + "report.json", report_path)
                version = dataset_pb2.DatasetVersion(
                    name=prefix[:-1],
                    task=result.task,
                    format=options.format,
                    stats=stats_to_proto(stats),
                    label_names=result.label_names,
                    source_sha256=sha256,
                    source_size_bytes=size,
                    source_object=source_key,
                    description=spec.description,
                    create_time=now(),
                    column_mapping=result.column_mapping,
                    split_source=(
                        dataset_pb2.SPLIT_SOURCE_COLUMN
                        if result.stats.split_eval_row_count
                        else dataset_pb2.SPLIT_SOURCE_SEEDED
                    ),
                    rows_manifest_object=rows_key,
                )
                self._publish(dataset, version)
            except BaseException:
                self._discard(prefix)  # only this upload's objects and row: no other upload has its id
                raise
        earlier = version.duplicate_of
        log.info(
            "created %s: %d rows, %d valid, %d invalid%s; %d bytes in %.1fs (validated after %.1fs, source stored "
            "%.1fs later)",
            version.name,
            result.stats.row_count,
            result.stats.valid_row_count,
            result.stats.invalid_row_count,
            f" (same bytes as {earlier})" if earlier else "",
            size,
            time.monotonic() - started,
            validated - started,
            stored - validated,
        )
        return version

    def _copy_source(self, key: str, spool: _Spool) -> None:
        with spool.reader() as source:
            self.store.put_stream(key, source, -1)

    def _reserve(self, dataset: DatasetName) -> str:
        """The next version id and its UPLOADING row, in one transaction: unique
        across every replica on the database, and never handed out again, even
        after the version fails or the dataset is deleted and created anew
        (caches and lineage keyed by a version name never see two versions
        under one name)."""
        try:
            with self.database.write() as conn:
                if not _dataset_exists(conn, dataset):
                    raise names.not_found(str(dataset))
                number = self.database.allocate(conn, "dataset_version", dataset.dataset, app=dataset.app)
                conn.execute(
                    sa.insert(VERSIONS).values(
                        name=str(DatasetVersionName(dataset.dataset, f"v{number}", dataset.app)),
                        app=dataset.app,
                        dataset=str(dataset),
                        number=number,
                        state=UPLOADING,
                        created_at=time.time(),
                    )
                )
        except sa.exc.IntegrityError:  # PostgreSQL: the dataset was deleted since the check
            raise names.not_found(str(dataset)) from None
        return f"v{number}"

    def _publish(self, dataset: DatasetName, version: dataset_pb2.DatasetVersion) -> None:
        """Makes the version visible, its objects being in the store. Sets
        duplicate_of to the first published version with the same source bytes."""
        with self.database.write() as conn:
            version.duplicate_of = (
                conn.execute(
                    sa.select(VERSIONS.c.name)
                    .where(
                        VERSIONS.c.dataset == str(dataset),
                        VERSIONS.c.sha256 == version.source_sha256,
                        VERSIONS.c.state == PUBLISHED,
                    )
                    .order_by(VERSIONS.c.number)
                    .limit(1)
                ).scalar_one_or_none()
                or ""
            )
            published = conn.execute(
                sa.update(VERSIONS)
                .where(VERSIONS.c.name == version.name, VERSIONS.c.state == UPLOADING)
                .values(state=PUBLISHED, sha256=version.source_sha256, record=_encode(to_dict(version)))
            )
            if published.rowcount != 1:  # the dataset was deleted while we parsed (its rows with it)
                raise names.not_found(str(dataset))

    def _discard(self, prefix: str) -> None:
        """Best effort: a failed upload must not leave a half version behind.
        An UPLOADING row left (the database was unreachable) stays invisible."""
        try:
            self.store.delete_prefix(prefix)
        except Exception:
            log.exception("could not clean up %s; it is not published, so it stays invisible", prefix)
        try:
            with self.database.write() as conn:
                conn.execute(sa.delete(VERSIONS).where(VERSIONS.c.name == prefix[:-1], VERSIONS.c.state == UPLOADING))
        except Exception:
            log.exception("could not remove the row of %s; it is not published, so it stays invisible", prefix[:-1])

    # ------------------------------------------------------------ earlier releases
    def import_store_records(self) -> int:
        """Copies the records earlier releases kept in the store (dataset.json,
        versions/*/manifest.json) into the database, once per database: the
        first service to start does it, holding the write lock (PostgreSQL: an
        advisory lock) so replicas starting together take turns, and marks it
        done; rows already there are kept. Raises each dataset's version counter
        past every version id the store holds, finished or not, so no new
        upload writes under an old version's prefix. Returns the rows added."""
        added = 0
        with self.database.write() as conn:
            if self.database.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": IMPORT_LOCK})
            done = sa.select(COUNTERS.c.last).where(
                COUNTERS.c.app == names.DEFAULT_APP, COUNTERS.c.kind == IMPORT_KIND, COUNTERS.c.parent == IMPORT_KIND
            )
            if conn.execute(done).first() is not None:
                return 0
            apps = [names.DEFAULT_APP, *conn.execute(sa.select(schema.apps.c.app_id)).scalars()]
            for app in dict.fromkeys(apps):
                added += self._import_app(conn, app)
            conn.execute(
                sa.insert(COUNTERS).values(app=names.DEFAULT_APP, kind=IMPORT_KIND, parent=IMPORT_KIND, last=1)
            )
        if added:
            log.info("imported %d dataset records from the store into the database", added)
        return added

    def _import_app(self, conn: sa.Connection, app: str) -> int:
        root = app_prefix(app) + "datasets/"
        datasets: set[str] = set()
        versions: dict[str, set[str]] = {}  # every version id with objects, per dataset
        manifests: list[tuple[str, str]] = []
        for key in self.store.list(root):
            parts = key[len(root) :].split("/")
            if len(parts) == 2 and parts[1] == "dataset.json":
                datasets.add(parts[0])
            elif len(parts) >= 4 and parts[1] == "versions":
                versions.setdefault(parts[0], set()).add(parts[2])
                if len(parts) == 4 and parts[3] == "manifest.json":
                    manifests.append((parts[0], parts[2]))
        added = 0
        for dataset_id in sorted(datasets):
            name = DatasetName(dataset_id, app)
            if _dataset_exists(conn, name):
                continue
            record = self.store.get_json(dataset_key(name))
            dataset = json_format.ParseDict(record, dataset_pb2.Dataset(), ignore_unknown_fields=True)
            conn.execute(
                sa.insert(DATASETS).values(
                    name=str(name),
                    app=app,
                    dataset_id=dataset_id,
                    record=_encode(to_dict(dataset)),
                    created_at=time.time(),
                )
            )
            added += 1
            numbers = [version_sort_key(v)[0] for v in versions.get(dataset_id, ()) if version_sort_key(v)[1] == ""]
            if numbers:
                self._raise_counter(conn, name, max(numbers))
        for dataset_id, version_id in sorted(manifests, key=lambda m: (m[0], version_sort_key(m[1]))):
            number, rest = version_sort_key(version_id)
            name = DatasetName(dataset_id, app)
            if dataset_id not in datasets or rest or not _dataset_exists(conn, name):
                continue  # a half-deleted dataset's version, or an id this release never writes
            version_name = str(DatasetVersionName(dataset_id, version_id, app))
            if conn.execute(sa.select(VERSIONS.c.name).where(VERSIONS.c.name == version_name)).first() is not None:
                continue
            record = self.store.get_json(manifest_key(name, version_id))
            version = json_format.ParseDict(record, dataset_pb2.DatasetVersion(), ignore_unknown_fields=True)
            conn.execute(
                sa.insert(VERSIONS).values(
                    name=version_name,
                    app=app,
                    dataset=str(name),
                    number=number,
                    state=PUBLISHED,
                    sha256=version.source_sha256 or None,
                    record=_encode(to_dict(version)),
                    created_at=time.time(),
                )
            )
            added += 1
        return added

    def _raise_counter(self, conn: sa.Connection, dataset: DatasetName, last: int) -> None:
        """The dataset's version counter to at least `last` (without taking a number)."""
        if self.database.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        key = {"app": dataset.app, "kind": "dataset_version", "parent": dataset.dataset}
        conn.execute(
            insert(COUNTERS)
            .values(**key, last=last)
            .on_conflict_do_update(
                index_elements=[COUNTERS.c.app, COUNTERS.c.kind, COUNTERS.c.parent],
                set_={"last": sa.case((COUNTERS.c.last < last, last), else_=COUNTERS.c.last)},
            )
        )


def _dataset_exists(conn: sa.Connection, dataset: DatasetName) -> bool:
    return conn.execute(sa.select(DATASETS.c.name).where(DATASETS.c.name == str(dataset))).first() is not None


def _dataset_record(record: str, latest: str) -> dataset_pb2.Dataset:
    dataset = json_format.Parse(record, dataset_pb2.Dataset(), ignore_unknown_fields=True)
    dataset.latest_version = latest
    return dataset


def _version_record(record: str) -> dataset_pb2.DatasetVersion:
    return json_format.Parse(record, dataset_pb2.DatasetVersion(), ignore_unknown_fields=True)


class _Background:
    """Runs fn in a thread; result() returns its value or re-raises its exception."""

    def __init__(self, fn: Callable[[], Any], name: str) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._value = fn()
        except BaseException as e:  # handed to the caller by result()
            self._error = e

    def finished(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> None:
        self._thread.join()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


class _TempDir(tempfile.TemporaryDirectory):  # type: ignore[type-arg]
    """A TemporaryDirectory whose context value is a Path."""

    def __init__(self, root: Path) -> None:
        super().__init__(prefix="upload-", dir=root)

    def __enter__(self) -> Path:  # type: ignore[override]
        return Path(self.name)
