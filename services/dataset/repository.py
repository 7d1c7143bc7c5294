"""Datasets and their versions in the object store.

Layout (bucket root):
    datasets/{dataset}/dataset.json                     the Dataset
    datasets/{dataset}/versions/{version}/source.{ext}  the uploaded bytes as they came
    datasets/{dataset}/versions/{version}/rows.jsonl    valid rows, normalised (read by the trainer)
    datasets/{dataset}/versions/{version}/report.json   stats and every issue (see write_report)
    datasets/{dataset}/versions/{version}/manifest.json the DatasetVersion, written LAST

A version without manifest.json is unfinished and invisible. Version ids are
v1, v2, ...; one lock per dataset in this process serialises the store writes
of a version (parsing, the slow part, runs outside it). Several dataset
service replicas writing versions of the same dataset at once are not
coordinated: run one writer per dataset, or one replica.

An upload is spooled to a temporary file (sha256 computed on the way, size
capped early), validated line by line into two more temporary files, and only
then copied to the store, so memory stays bounded whatever the file size and a
cut-off stream writes nothing at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from textft.errors import AlreadyExists, InvalidArgument, NotFound
from textft.v1 import common_pb2, dataset_pb2

from ..common.config import Settings
from ..common.names import check_id, paginate, version_sort_key
from ..common.store import ObjectStore, check_key
from . import parsing

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


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def _to_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


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

    def __init__(self, store: ObjectStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._tmp_root = Path(settings.home) / "tmp" / "dataset"

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
                name=f"datasets/{dataset_id}", description=description, labels=labels, create_time=_now()
            )
            self.store.put_json(dataset_key(dataset_id), _to_dict(dataset))
        return dataset

    def _load_dataset(self, dataset_id: str, latest: str = "") -> dataset_pb2.Dataset:
        try:
            data = self.store.get_json(dataset_key(dataset_id))
        except NotFound:
            raise NotFound(f"dataset datasets/{dataset_id} not found", reason="DATASET_NOT_FOUND") from None
        dataset = json_format.ParseDict(data, dataset_pb2.Dataset(), ignore_unknown_fields=True)
        dataset.latest_version = latest
        return dataset

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

    def delete_dataset(self, dataset_id: str) -> None:
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
        if size == 0:
            raise InvalidArgument(
                "the file is empty (0 bytes): send its bytes as chunk messages after the header", reason="EMPTY_FILE"
            )
        rows_path, issues_path, report_path = work / "rows.jsonl", work / "issues.jsonl", work / "report.json"
        with (
            open(work / "source", "rb") as source,
            open(rows_path, "w", encoding="utf-8") as rows_out,
            open(issues_path, "w", encoding="utf-8") as issues_out,
        ):
            result = parsing.validate(
                source,
                options,
                lambda row: rows_out.write(json.dumps(row, ensure_ascii=False) + "\n"),
                lambda issue: issues_out.write(json.dumps(issue.to_dict(), ensure_ascii=False) + "\n"),
            )
        stats = result.stats.to_dict()
        with open(report_path, "w", encoding="utf-8") as out, open(issues_path, encoding="utf-8") as issues:
            write_report(out, stats, result.issue_count, issues)

        dataset = spec.dataset
        with self._lock(dataset):
            self.require_dataset(dataset)  # deleted while we parsed?
            existing = {key.split("/")[3] for key in self.store.list(f"datasets/{dataset}/versions/")}
            numbers = [version_sort_key(v)[0] for v in existing if version_sort_key(v)[1] == ""]
            version_id = f"v{max(numbers, default=0) + 1}"
            prefix = version_prefix(dataset, version_id)
            source_key = prefix + f"source.{parsing.SOURCE_SUFFIX[options.format]}"
            version = dataset_pb2.DatasetVersion(
                name=f"datasets/{dataset}/versions/{version_id}",
                task=result.task,
                format=options.format,
                stats=stats_to_proto(stats),
                label_names=result.label_names,
                source_sha256=sha256,
                source_size_bytes=size,
                source_object=source_key,
                rows_object=prefix + "rows.jsonl",
                description=spec.description,
                create_time=_now(),
                column_mapping=result.column_mapping,
            )
            try:
                self.store.put_file(source_key, work / "source")
                self.store.put_file(prefix + "rows.jsonl", rows_path)
                self.store.put_file(prefix + "report.json", report_path)
                self.store.put_json(prefix + "manifest.json", _to_dict(version))
            except BaseException:
                self._discard(prefix)
                raise
        log.info(
            "created %s: %d rows, %d valid, %d invalid",
            version.name,
            result.stats.row_count,
            result.stats.valid_row_count,
            result.stats.invalid_row_count,
        )
        return version

    def _discard(self, prefix: str) -> None:
        """Best effort: a failed write must not leave a half version behind."""
        try:
            self.store.delete(prefix + "manifest.json")
            self.store.delete_prefix(prefix)
        except Exception:
            log.exception("could not clean up %s; it has no manifest, so it stays invisible", prefix)


class _TempDir(tempfile.TemporaryDirectory):  # type: ignore[type-arg]
    """A TemporaryDirectory whose context value is a Path."""

    def __init__(self, root: Path) -> None:
        super().__init__(prefix="upload-", dir=root)

    def __enter__(self) -> Path:  # type: ignore[override]
        return Path(self.name)
