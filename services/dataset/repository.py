"""Datasets and their versions in the object store.

Layout (under the app's prefix: `apps/{app}/`, nothing for the default app; a
dataset's prefix is its name, see names.py):
    datasets/{dataset}/dataset.json                     the Dataset
    datasets/{dataset}/versions/{version}/source.{ext}  the uploaded bytes as they came
    datasets/{dataset}/versions/{version}/rows/         the valid rows, normalised: Parquet parts and
                                                        their manifest.json (services/common/rows.py)
    datasets/{dataset}/versions/{version}/report.json   stats and every issue (see write_report)
    datasets/{dataset}/versions/{version}/manifest.json the DatasetVersion, written LAST
    datasets/{dataset}/by-sha256/{sha256}.json          first finished version with those source bytes

A version without manifest.json is unfinished and invisible; versions are never
changed once published. Version ids are v1, v2, ...; an id is reserved (in this
process) once the file's header has been checked and is reused if the upload
fails. One lock per dataset in this process serialises the id reservation and
the manifest write. Several dataset service replicas writing versions of the
same dataset at once are not coordinated: run one writer per dataset, or one
replica.

An upload is received, validated and stored at the same time: the receiving
thread appends the chunks to a local spool file (sha256 computed and size cap
applied on the way in), while a second thread reads the spool as it grows,
checks the header, reserves the version id, copies the source to the store
(multipart, from a third reader of the spool) and validates the rows, whose
valid ones (in batches) a RowsWriter stores as Parquet parts as they come; the rows
manifest and the report follow, the version's manifest last. A header problem ends the
upload before the rest is received. Memory stays bounded whatever the file
size (a few store parts in flight), a cut-off stream publishes nothing, and
any failure removes everything under the version's prefix.

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

from google.protobuf import json_format, struct_pb2

from textft.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from textft.v1 import common_pb2, dataset_pb2

from ..common import names
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
    return f"{dataset_name(dataset)}/dataset.json"


def version_prefix(dataset: DatasetName | str, version: str) -> str:
    name = dataset_name(dataset)
    return f"{DatasetVersionName(name.dataset, version, name.app)}/"


def manifest_key(dataset: DatasetName | str, version: str) -> str:
    return version_prefix(dataset, version) + "manifest.json"


def sha256_key(dataset: DatasetName | str, sha256: str) -> str:
    """Index: the first finished version of a dataset with these source bytes."""
    return f"{dataset_name(dataset)}/by-sha256/{sha256}.json"


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
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._tmp_root = Path(settings.home) / "tmp" / "dataset"
        self._uploads: dict[str, int] = {}  # uploads in progress per app (TEXTFT_QUOTA_UPLOADS)
        self._uploads_lock = threading.Lock()
        self.stored = StoredBytes(self.database)

    def _lock(self, dataset: DatasetName) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(str(dataset), threading.Lock())

    # ------------------------------------------------------------ datasets
    def create_dataset(
        self, dataset_id: str, description: str, labels: dict[str, str], app: str = names.DEFAULT_APP
    ) -> dataset_pb2.Dataset:
        name = DatasetName(check_id(dataset_id, "dataset_id"), app)
        with self._lock(name):
            if self.store.exists(dataset_key(name)):
                raise AlreadyExists(f"dataset {name} already exists", reason="DATASET_EXISTS")
            # Leftovers of an interrupted delete must not resurface as versions of the new dataset.
            self.store.delete_prefix(dataset_prefix(name))
            dataset = dataset_pb2.Dataset(name=str(name), description=description, labels=labels, create_time=now())
            self.store.put_json(dataset_key(name), to_dict(dataset))
        return dataset

    def _load_dataset(self, dataset_id: DatasetName, latest: str = "") -> dataset_pb2.Dataset:
        try:
            data = self.store.get_json(dataset_key(dataset_id))
        except NotFound:
            raise names.not_found(str(dataset_id)) from None
        dataset = json_format.ParseDict(data, dataset_pb2.Dataset(), ignore_unknown_fields=True)
        dataset.latest_version = latest
        return dataset

    def require_any(self, dataset_id: DatasetName | str) -> None:
        """NotFound unless some object of the dataset is left (even a half-deleted one)."""
        dataset_id = dataset_name(dataset_id)
        if next(iter(self.store.list(dataset_prefix(dataset_id))), None) is None:
            raise names.not_found(str(dataset_id))

    def require_dataset(self, dataset_id: DatasetName | str) -> None:
        dataset_id = dataset_name(dataset_id)
        if not self.store.exists(dataset_key(dataset_id)):
            raise names.not_found(str(dataset_id))

    def _version_ids(self, dataset_id: DatasetName) -> list[str]:
        """Finished versions (with a manifest), newest first."""
        prefix = f"{dataset_id}/versions/"
        ids = [
            key[len(prefix) : -len("/manifest.json")]
            for key in self.store.list(prefix)
            if key.endswith("/manifest.json") and key.count("/", len(prefix)) == 1
        ]
        return sorted(ids, key=version_sort_key, reverse=True)

    def _latest(self, dataset_id: DatasetName) -> str:
        ids = self._version_ids(dataset_id)
        return f"{dataset_id}/versions/{ids[0]}" if ids else ""

    def get_dataset(self, dataset_id: DatasetName | str) -> dataset_pb2.Dataset:
        dataset_id = dataset_name(dataset_id)
        self.require_dataset(dataset_id)
        return self._load_dataset(dataset_id, self._latest(dataset_id))

    def list_datasets(
        self, page_size: int, page_token: str, app: str = names.DEFAULT_APP
    ) -> tuple[list[dataset_pb2.Dataset], str]:
        ids: list[str] = []
        newest: dict[str, str] = {}
        root = app_prefix(app) + "datasets/"
        for key in self.store.list(root):  # one listing gives datasets and their finished versions
            parts = ["datasets", *key[len(root) :].split("/")]
            if len(parts) == 3 and parts[2] == "dataset.json":
                ids.append(parts[1])
            elif len(parts) == 5 and parts[2] == "versions" and parts[4] == "manifest.json":
                current = newest.get(parts[1])
                if current is None or version_sort_key(parts[3]) > version_sort_key(current):
                    newest[parts[1]] = parts[3]
        page, token = paginate(sorted(ids), page_size, page_token)
        datasets = []
        for dataset_id in page:
            name = DatasetName(dataset_id, app)
            try:
                latest = f"{name}/versions/{newest[dataset_id]}" if dataset_id in newest else ""
                datasets.append(self._load_dataset(name, latest))
            except NotFound:  # deleted since the listing
                continue
        return datasets, token

    def delete_dataset(self, dataset_id: DatasetName | str, force: bool = False) -> None:
        """Removes every object of the dataset. Unless force, refuses while
        unfinished model versions use it (as the trainer reports them)."""
        dataset_id = dataset_name(dataset_id)
        self.require_any(dataset_id)
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
        with self._lock(dataset_id):
            keys = list(self.store.list(dataset_prefix(dataset_id)))
            if not keys:
                raise names.not_found(str(dataset_id))
            # Manifests first (versions vanish at once), dataset.json last (an
            # interrupted delete stays visible and can be retried).
            ordered = sorted(keys, key=lambda k: (not k.endswith("/manifest.json"), k.endswith("/dataset.json"), k))
            for key in ordered:
                self.store.delete(key)
        self.stored.forget(dataset_id.app, str(dataset_id))

    # ------------------------------------------------------------ versions
    def get_version(self, dataset_id: DatasetName | str, version_id: str) -> dataset_pb2.DatasetVersion:
        dataset_id = dataset_name(dataset_id)
        try:
            data = self.store.get_json(manifest_key(dataset_id, version_id))
        except NotFound:
            if not self.store.exists(dataset_key(dataset_id)):
                raise names.not_found(str(dataset_id)) from None
            raise names.not_found(version_prefix(dataset_id, version_id)[:-1]) from None
        return json_format.ParseDict(data, dataset_pb2.DatasetVersion(), ignore_unknown_fields=True)

    def list_versions(
        self, dataset_id: DatasetName | str, page_size: int, page_token: str
    ) -> tuple[list[dataset_pb2.DatasetVersion], str]:
        dataset_id = dataset_name(dataset_id)
        self.require_dataset(dataset_id)
        page, token = paginate(self._version_ids(dataset_id), page_size, page_token)
        versions = []
        for version_id in page:
            try:
                versions.append(self.get_version(dataset_id, version_id))
            except NotFound:  # deleted since the listing
                continue
        return versions, token

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
                with self._lock(dataset):
                    self.require_dataset(dataset)  # deleted while we parsed?
                    earlier = self._same_source(dataset, sha256)
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
                        duplicate_of=earlier,
                        split_source=(
                            dataset_pb2.SPLIT_SOURCE_COLUMN
                            if result.stats.split_eval_row_count
                            else dataset_pb2.SPLIT_SOURCE_SEEDED
                        ),
                        rows_manifest_object=rows_key,
                    )
                    self.store.put_json(prefix + "manifest.json", to_dict(version))
            except BaseException:
                self._discard(prefix)  # only this upload's objects: no other upload has its id
                raise
        if not earlier:
            try:  # after the manifest: an index entry always names a finished version
                self.store.put_json(sha256_key(dataset, sha256), {"version": version_id})
            except Exception:
                log.exception("could not record the sha256 of %s; re-uploads of it will not be flagged", version.name)
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
        """The next version id, allocated in the metadata database: unique across
        every replica on that database, and never handed out again, even after
        the version fails or the dataset is deleted and created anew (caches and
        lineage keyed by a version name never see two versions under one name).
        The store's ids are the floor, for versions written before the database
        kept count."""
        with self._lock(dataset):
            self.require_dataset(dataset)
            versions = f"{dataset}/versions/"
            existing = {key[len(versions) :].split("/")[0] for key in self.store.list(versions)}
            numbers = [version_sort_key(v)[0] for v in existing if version_sort_key(v)[1] == ""]
            with self.database.write() as conn:
                number = self.database.allocate(
                    conn, "dataset_version", dataset.dataset, app=dataset.app, floor=max(numbers, default=0)
                )
            return f"v{number}"

    def _same_source(self, dataset: DatasetName, sha256: str) -> str:
        """The finished version of this dataset with these source bytes, or ""."""
        try:
            earlier = self.store.get_json(sha256_key(dataset, sha256))["version"]
        except (NotFound, KeyError, TypeError, ValueError):
            return ""
        if not self.store.exists(manifest_key(dataset, earlier)):
            return ""
        return version_prefix(dataset, earlier)[:-1]

    def _discard(self, prefix: str) -> None:
        """Best effort: a failed write must not leave a half version behind."""
        try:
            self.store.delete(prefix + "manifest.json")
            self.store.delete_prefix(prefix)
        except Exception:
            log.exception("could not clean up %s; it has no manifest, so it stays invisible", prefix)


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
