"""Datasets and their versions in the object store.

Layout (bucket root):
    datasets/{dataset}/dataset.json                     the Dataset
    datasets/{dataset}/versions/{version}/source.{ext}  the uploaded bytes as they came
    datasets/{dataset}/versions/{version}/rows.jsonl    valid rows, normalised (read by the trainer)
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

An upload is spooled to a temporary file (sha256 computed on the way, size
capped early), so a cut-off stream writes nothing to the store. Then the header
is checked, the source is copied to the store in a background thread, and the
rows are validated one at a time, the normalised ones streamed to the store
through a pipe (multipart, unknown length); the report follows, the manifest
last. Memory stays bounded whatever the file size (a few store parts in
flight), and any failure removes everything under the version's prefix.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from google.protobuf import json_format, struct_pb2

from textft.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from textft.v1 import common_pb2, dataset_pb2

from ..common.config import Settings
from ..common.names import check_id, paginate, version_sort_key
from ..common.protojson import now, to_dict
from ..common.store import ObjectStore, check_key
from . import parsing
from .inuse import UsageCheck

log = logging.getLogger("textft.dataset")
COPY_BUFFER = 1024 * 1024
_SEVERITY = {parsing.ERROR: common_pb2.RowIssue.SEVERITY_ERROR, parsing.WARNING: common_pb2.RowIssue.SEVERITY_WARNING}


@dataclass
class UploadSpec:
    """What an upload header asks for, in domain terms."""

    dataset: str
    format: int = dataset_pb2.DATASET_FORMAT_UNSPECIFIED
    task: int = common_pb2.TASK_UNSPECIFIED
    column_mapping: dict[str, str] = field(default_factory=dict)
    description: str = ""
    filename: str = ""


def dataset_prefix(dataset: str) -> str:
    return f"datasets/{dataset}/"


def dataset_key(dataset: str) -> str:
    return f"datasets/{dataset}/dataset.json"


def version_prefix(dataset: str, version: str) -> str:
    return f"datasets/{dataset}/versions/{version}/"


def manifest_key(dataset: str, version: str) -> str:
    return version_prefix(dataset, version) + "manifest.json"


def sha256_key(dataset: str, sha256: str) -> str:
    """Index: the first finished version of a dataset with these source bytes."""
    return f"datasets/{dataset}/by-sha256/{sha256}.json"


_ENCODER = json.JSONEncoder(ensure_ascii=False)  # one encoder: json.dumps(..., ensure_ascii=False) builds one per call


def _encode(value: Any) -> str:
    return _ENCODER.encode(value)


_ROW_KEYS = ("row", "text", "labels", "target", "id", "metadata", "split")
_string = json.encoder.encode_basestring  # what _ENCODER uses for strings (ensure_ascii=False)


def _encode_row(row: dict[str, Any]) -> str:
    """_encode(row) for a normalised row (parsing's keys, in its order), without
    the encoder's generic walk: about twice as fast, the same text."""
    number, labels, metadata = row["row"], row["labels"], row["metadata"]
    if type(number) is int and type(labels) is list and type(metadata) is dict and tuple(row) == _ROW_KEYS:
        try:  # _string raises TypeError for anything but a string
            return (
                f'{{"row": {number}, "text": {_string(row["text"])}, '
                f'"labels": [{", ".join(map(_string, labels))}], "target": {_string(row["target"])}, '
                f'"id": {_string(row["id"])}, "metadata": {_ENCODER.encode(metadata) if metadata else "{}"}, '
                f'"split": {_string(row["split"])}}}'
            )
        except TypeError:
            pass
    return _ENCODER.encode(row)


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


class _CappedSpool:
    """Writes chunks to a temp file, hashing them, refusing past the cap early."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.size = 0
        self.sha256 = hashlib.sha256()
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise InvalidArgument.for_field(
                "chunk",
                f"the upload exceeds the limit of {self.limit} bytes (max_upload_bytes); "
                "split the file into several datasets or ask the operator to raise TEXTFT_MAX_UPLOAD_BYTES",
                reason="UPLOAD_TOO_LARGE",
            )
        self.sha256.update(chunk)
        self._file.write(chunk)

    def close(self) -> None:
        self._file.close()


class DatasetRepository:
    """The dataset service's domain: datasets, versions, rows and reports."""

    def __init__(self, store: ObjectStore, settings: Settings, usage: UsageCheck | None = None) -> None:
        self.store = store
        self.settings = settings
        self.usage = usage  # who uses a dataset (the trainer); None: nobody is asked
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._tmp_root = Path(settings.home) / "tmp" / "dataset"
        self._reserved: dict[str, set[str]] = {}  # version ids being written, per dataset

    def _lock(self, dataset: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(dataset, threading.Lock())

    # ------------------------------------------------------------ datasets
    def create_dataset(self, dataset_id: str, description: str, labels: dict[str, str]) -> dataset_pb2.Dataset:
        check_id(dataset_id, "dataset_id")
        with self._lock(dataset_id):
            if self.store.exists(dataset_key(dataset_id)):
                raise AlreadyExists(f"dataset datasets/{dataset_id} already exists", reason="DATASET_EXISTS")
            # Leftovers of an interrupted delete must not resurface as versions of the new dataset.
            self.store.delete_prefix(dataset_prefix(dataset_id))
            dataset = dataset_pb2.Dataset(
                name=f"datasets/{dataset_id}", description=description, labels=labels, create_time=now()
            )
            self.store.put_json(dataset_key(dataset_id), to_dict(dataset))
        return dataset

    def _load_dataset(self, dataset_id: str, latest: str = "") -> dataset_pb2.Dataset:
        try:
            data = self.store.get_json(dataset_key(dataset_id))
        except NotFound:
            raise NotFound(f"dataset datasets/{dataset_id} not found", reason="DATASET_NOT_FOUND") from None
        dataset = json_format.ParseDict(data, dataset_pb2.Dataset(), ignore_unknown_fields=True)
        dataset.latest_version = latest
        return dataset

    def require_any(self, dataset_id: str) -> None:
        """NotFound unless some object of the dataset is left (even a half-deleted one)."""
        if next(iter(self.store.list(dataset_prefix(dataset_id))), None) is None:
            raise NotFound(f"dataset datasets/{dataset_id} not found", reason="DATASET_NOT_FOUND")

    def require_dataset(self, dataset_id: str) -> None:
        if not self.store.exists(dataset_key(dataset_id)):
            raise NotFound(f"dataset datasets/{dataset_id} not found", reason="DATASET_NOT_FOUND")

    def _version_ids(self, dataset_id: str) -> list[str]:
        """Finished versions (with a manifest), newest first."""
        prefix = f"datasets/{dataset_id}/versions/"
        ids = [
            key[len(prefix) : -len("/manifest.json")]
            for key in self.store.list(prefix)
            if key.endswith("/manifest.json") and key.count("/") == 4
        ]
        return sorted(ids, key=version_sort_key, reverse=True)

    def _latest(self, dataset_id: str) -> str:
        ids = self._version_ids(dataset_id)
        return f"datasets/{dataset_id}/versions/{ids[0]}" if ids else ""

    def get_dataset(self, dataset_id: str) -> dataset_pb2.Dataset:
        self.require_dataset(dataset_id)
        return self._load_dataset(dataset_id, self._latest(dataset_id))

    def list_datasets(self, page_size: int, page_token: str) -> tuple[list[dataset_pb2.Dataset], str]:
        ids: list[str] = []
        newest: dict[str, str] = {}
        for key in self.store.list("datasets/"):  # one listing gives datasets and their finished versions
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == "dataset.json":
                ids.append(parts[1])
            elif len(parts) == 5 and parts[2] == "versions" and parts[4] == "manifest.json":
                current = newest.get(parts[1])
                if current is None or version_sort_key(parts[3]) > version_sort_key(current):
                    newest[parts[1]] = parts[3]
        page, token = paginate(sorted(ids), page_size, page_token)
        datasets = []
        for dataset_id in page:
            try:
                latest = f"datasets/{dataset_id}/versions/{newest[dataset_id]}" if dataset_id in newest else ""
                datasets.append(self._load_dataset(dataset_id, latest))
            except NotFound:  # deleted since the listing
                continue
        return datasets, token

    def delete_dataset(self, dataset_id: str, force: bool = False) -> None:
        """Removes every object of the dataset. Unless force, refuses while
        unfinished model versions use it (as the trainer reports them)."""
        self.require_any(dataset_id)
        users = None if force or self.usage is None else self.usage.in_use(dataset_id)
        if users:
            shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
            raise FailedPrecondition(
                f"datasets/{dataset_id} is used by model versions that have not finished: {shown}; "
                "wait for them or cancel them, or delete with force=true (they then fail if they have not "
                "read their rows yet)",
                reason="DATASET_IN_USE",
                metadata={"model_versions": ",".join(users[:50])},
            )
        with self._lock(dataset_id):
            keys = list(self.store.list(dataset_prefix(dataset_id)))
            if not keys:
                raise NotFound(f"dataset datasets/{dataset_id} not found", reason="DATASET_NOT_FOUND")
            # Manifests first (versions vanish at once), dataset.json last (an
            # interrupted delete stays visible and can be retried).
            ordered = sorted(keys, key=lambda k: (not k.endswith("/manifest.json"), k.endswith("/dataset.json"), k))
            for key in ordered:
                self.store.delete(key)

    # ------------------------------------------------------------ versions
    def get_version(self, dataset_id: str, version_id: str) -> dataset_pb2.DatasetVersion:
        try:
            data = self.store.get_json(manifest_key(dataset_id, version_id))
        except NotFound:
            if not self.store.exists(dataset_key(dataset_id)):
                raise NotFound(f"dataset datasets/{dataset_id} not found", reason="DATASET_NOT_FOUND") from None
            raise NotFound(
                f"dataset version datasets/{dataset_id}/versions/{version_id} not found",
                reason="DATASET_VERSION_NOT_FOUND",
            ) from None
        return json_format.ParseDict(data, dataset_pb2.DatasetVersion(), ignore_unknown_fields=True)

    def list_versions(
        self, dataset_id: str, page_size: int, page_token: str
    ) -> tuple[list[dataset_pb2.DatasetVersion], str]:
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
        self, dataset_id: str, version_id: str, page_size: int, page_token: str
    ) -> tuple[list[dataset_pb2.Row], str]:
        version = self.get_version(dataset_id, version_id)
        # Offset paging over a stream: a page costs O(offset) reading, never O(file) memory.
        window, token = paginate(range(version.stats.valid_row_count), page_size, page_token)
        rows = []
        with self.store.open(version.rows_object) as f:
            for index, line in enumerate(f):
                if index >= window.stop:
                    break
                if index >= window.start:
                    rows.append(row_to_proto(json.loads(line)))
        return rows, token

    def validation_report(
        self, dataset_id: str, version_id: str, page_size: int, page_token: str
    ) -> tuple[dataset_pb2.DatasetStats, list[common_pb2.RowIssue], str]:
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
        options = self._options(spec)
        with self._workdir() as work:
            spool = _CappedSpool(work / "source", self.settings.max_upload_bytes)
            try:
                for chunk in chunks:
                    spool.write(chunk)
            finally:
                spool.close()
            return self._create_version(spec, options, work, spool.sha256.hexdigest(), spool.size)

    def import_object(self, spec: UploadSpec, source_object: str) -> dataset_pb2.DatasetVersion:
        """Creates a version from an object already in the store."""
        if not source_object:
            raise InvalidArgument.for_field("source_object", "required: the key of an object in the store")
        try:
            check_key(source_object)
        except InvalidArgument:
            raise InvalidArgument.for_field(
                "source_object", f"{source_object[:200]!r} is not a valid object key", reason="INVALID_OBJECT_KEY"
            ) from None
        options = self._options(spec)
        with self._workdir() as work:
            spool = _CappedSpool(work / "source", self.settings.max_upload_bytes)
            try:
                with self.store.open(source_object) as src:
                    while chunk := src.read(COPY_BUFFER):
                        spool.write(chunk)
            except NotFound:
                raise NotFound(f"object {source_object} not found in the store", reason="OBJECT_NOT_FOUND") from None
            finally:
                spool.close()
            return self._create_version(spec, options, work, spool.sha256.hexdigest(), spool.size)

    def _options(self, spec: UploadSpec) -> parsing.ParseOptions:
        self.require_dataset(spec.dataset)
        fmt = parsing.infer_format(spec.format, spec.filename)
        mapping = parsing.check_column_mapping(spec.column_mapping)
        if spec.task not in (common_pb2.TASK_UNSPECIFIED, parsing.CLASSIFICATION, parsing.GENERATION):
            raise InvalidArgument.for_field("header.task", f"unknown task value {spec.task}")
        return parsing.ParseOptions(fmt, spec.task, mapping, self.settings.max_text_chars)

    def _workdir(self) -> _TempDir:
        self._tmp_root.mkdir(parents=True, exist_ok=True)
        return _TempDir(self._tmp_root)

    def _create_version(
        self, spec: UploadSpec, options: parsing.ParseOptions, work: Path, sha256: str, size: int
    ) -> dataset_pb2.DatasetVersion:
        """Validates the spooled source and publishes the version. The header is
        checked first; then the version id is reserved, the source is copied to
        the store in the background while the rows are validated and streamed
        to the store as they come, and the manifest is written last. Any
        failure removes everything under the version's prefix."""
        if size == 0:
            raise InvalidArgument(
                "the file is empty (0 bytes): send its bytes as chunk messages after the header", reason="EMPTY_FILE"
            )
        dataset = spec.dataset
        issues_path, report_path = work / "issues.jsonl", work / "report.json"
        with open(work / "source", "rb", buffering=COPY_BUFFER) as source:
            validation = parsing.prepare(source, options)  # header problems: nothing written yet
            version_id = self._reserve(dataset)
            prefix = version_prefix(dataset, version_id)
            source_key = prefix + f"source.{parsing.SOURCE_SUFFIX[options.format]}"
            rows_key = prefix + "rows.jsonl"
            copies: list[_Background] = []
            try:
                copies.append(_Background(lambda: self.store.put_file(source_key, work / "source")))
                rows_out = _RowPipe(lambda stream: self.store.put_stream(rows_key, stream, -1, "application/x-ndjson"))
                copies.append(rows_out.upload)
                try:
                    with open(issues_path, "w", encoding="utf-8") as issues_out:
                        result = validation.run(
                            rows_out.write, lambda issue: issues_out.write(_encode(issue.to_dict()) + "\n")
                        )
                finally:
                    rows_out.close()
                for copy in copies:
                    copy.result()
                stats = result.stats.to_dict()
                with open(report_path, "w", encoding="utf-8") as out, open(issues_path, encoding="utf-8") as issues:
                    write_report(out, stats, result.issue_count, issues)
                self.store.put_file(prefix + "report.json", report_path)
                with self._lock(dataset):
                    self.require_dataset(dataset)  # deleted while we parsed?
                    earlier = self._same_source(dataset, sha256)
                    version = dataset_pb2.DatasetVersion(
                        name=f"datasets/{dataset}/versions/{version_id}",
                        task=result.task,
                        format=options.format,
                        stats=stats_to_proto(stats),
                        label_names=result.label_names,
                        source_sha256=sha256,
                        source_size_bytes=size,
                        source_object=source_key,
                        rows_object=rows_key,
                        description=spec.description,
                        create_time=now(),
                        column_mapping=result.column_mapping,
                        duplicate_of=earlier,
                        split_source=(
                            dataset_pb2.SPLIT_SOURCE_COLUMN
                            if result.stats.split_eval_row_count
                            else dataset_pb2.SPLIT_SOURCE_SEEDED
                        ),
                    )
                    self.store.put_json(prefix + "manifest.json", to_dict(version))
            except BaseException:
                for copy in copies:  # no write may land after the clean-up
                    copy.wait()
                self._discard(prefix)
                raise
            finally:
                self._release(dataset, version_id)
        if not earlier:
            try:  # after the manifest: an index entry always names a finished version
                self.store.put_json(sha256_key(dataset, sha256), {"version": version_id})
            except Exception:
                log.exception("could not record the sha256 of %s; re-uploads of it will not be flagged", version.name)
        log.info(
            "created %s: %d rows, %d valid, %d invalid%s",
            version.name,
            result.stats.row_count,
            result.stats.valid_row_count,
            result.stats.invalid_row_count,
            f" (same bytes as {earlier})" if earlier else "",
        )
        return version

    def _reserve(self, dataset: str) -> str:
        """The next version id: past every id in the store or being written by
        this process. Released (and reusable) if the version is never published."""
        with self._lock(dataset):
            self.require_dataset(dataset)
            existing = {key.split("/")[3] for key in self.store.list(f"datasets/{dataset}/versions/")}
            existing |= self._reserved.get(dataset, set())
            numbers = [version_sort_key(v)[0] for v in existing if version_sort_key(v)[1] == ""]
            version_id = f"v{max(numbers, default=0) + 1}"
            self._reserved.setdefault(dataset, set()).add(version_id)
            return version_id

    def _release(self, dataset: str, version_id: str) -> None:
        with self._lock(dataset):
            self._reserved.get(dataset, set()).discard(version_id)

    def _same_source(self, dataset: str, sha256: str) -> str:
        """The finished version of this dataset with these source bytes, or ""."""
        try:
            earlier = self.store.get_json(sha256_key(dataset, sha256))["version"]
        except (NotFound, KeyError, TypeError, ValueError):
            return ""
        if not self.store.exists(manifest_key(dataset, earlier)):
            return ""
        return f"datasets/{dataset}/versions/{earlier}"

    def _discard(self, prefix: str) -> None:
        """Best effort: a failed write must not leave a half version behind."""
        try:
            self.store.delete(prefix + "manifest.json")
            self.store.delete_prefix(prefix)
        except Exception:
            log.exception("could not clean up %s; it has no manifest, so it stays invisible", prefix)


class _Background:
    """Runs fn in a thread; result() re-raises its exception."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name="dataset-store-write", daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as e:  # handed to the caller by result()
            self._error = e

    def wait(self) -> None:
        self._thread.join()

    def result(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


class _RowPipe:
    """Normalised rows as JSON lines, streamed to the store while they are
    produced: an OS pipe between the validating thread and a background
    put_stream (multipart, unknown length), so memory holds one part at most."""

    BATCH = 1024 * 1024

    def __init__(self, put: Callable[[BinaryIO], None]) -> None:
        read_fd, write_fd = os.pipe()
        try:  # a bigger pipe: fewer hand-overs between the threads (Linux; else the default)
            fcntl.fcntl(write_fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), self.BATCH)
        except OSError:
            pass
        self._reader = open(read_fd, "rb", buffering=self.BATCH)  # noqa: SIM115 - closed by the upload thread
        self._writer = open(write_fd, "wb", buffering=0)  # noqa: SIM115 - closed in close()
        self._pending: list[str] = []
        self._size = 0

        def upload() -> None:
            with self._reader:
                put(self._reader)  # type: ignore[arg-type]

        self.upload = _Background(upload)

    def write(self, row: dict[str, Any]) -> None:
        line = _encode_row(row)
        self._pending.append(line)
        self._size += len(line)
        if self._size >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._pending.append("")
            try:
                self._writer.write("\n".join(self._pending).encode("utf-8"))
            except BrokenPipeError:  # the upload failed: result() says why
                self.upload.result()
                raise
            self._pending.clear()
            self._size = 0

    def close(self) -> None:
        """Ends the stream (the upload then completes); safe to call twice."""
        if self._writer.closed:
            return
        try:
            self._flush()
        finally:
            self._pending.clear()
            try:
                self._writer.close()
            except BrokenPipeError:
                pass


class _TempDir(tempfile.TemporaryDirectory):  # type: ignore[type-arg]
    """A TemporaryDirectory whose context value is a Path."""

    def __init__(self, root: Path) -> None:
        super().__init__(prefix="upload-", dir=root)

    def __enter__(self) -> Path:  # type: ignore[override]
        return Path(self.name)
