"""The dataset service through its real RPCs: services as processes on loopback,
the store a real S3 endpoint over HTTP (see conftest.py)."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Iterator

import grpc
import pytest
import sqlalchemy as sa
from support import error_of

from textft import Client
from textft.errors import FailedPrecondition, InvalidArgument, NotFound
from textft.v1 import common_pb2, dataset_pb2
from textft_services.common import rows as stored_rows
from textft_services.common import schema
from textft_services.common.config import Settings
from textft_services.common.db import Database
from textft_services.stack import start_service

pytestmark = pytest.mark.integration

CSV = (
    b"text,label,id\n"
    b"great film,pos,r1\n"
    b",pos,r2\n"  # row 2: EMPTY_TEXT
    b'"two\nlines",neg,r3\n'
    b"no label,,r4\n"  # row 4: MISSING_LABEL
    b"great film,pos,r5\n"  # row 5: DUPLICATE (kept)
    b"caf\xe9,neg,r6\n"  # row 6: BAD_UTF8
    b"fine,neg|pos,r7\n"
)
JSONL = b"\n".join(
    json.dumps(o).encode()
    for o in [
        {"text": "hello", "labels": ["greet"]},
        {"text": "bye", "label": "farewell", "metadata": {"lang": "en"}},
        {"text": "", "labels": ["greet"]},
    ]
)


def new_id() -> str:
    return "ds-" + uuid.uuid4().hex[:10]


def upload_requests(
    parent: str, chunks: list[bytes], fmt: int = dataset_pb2.DATASET_FORMAT_CSV
) -> Iterator[dataset_pb2.UploadDatasetVersionRequest]:
    header = dataset_pb2.UploadHeader(parent=parent, format=fmt, task=common_pb2.TASK_TEXT_CLASSIFICATION)
    yield dataset_pb2.UploadDatasetVersionRequest(header=header)
    for chunk in chunks:
        yield dataset_pb2.UploadDatasetVersionRequest(chunk=chunk)


def version_keys(stack, dataset: str) -> list[str]:  # type: ignore[no-untyped-def]
    return list(stack.store.list(f"datasets/{dataset}/versions/"))


def test_upload_csv_then_jsonl(client: Client, stack) -> None:  # type: ignore[no-untyped-def]
    ds = new_id()
    created = client.create_dataset(ds, description="reviews", labels={"team": "nlp"})
    assert created.name == f"datasets/{ds}" and created.labels["team"] == "nlp"

    v1 = client.upload_dataset(ds, CSV, format="csv", description="first")
    assert v1.name == f"datasets/{ds}/versions/v1"
    assert v1.task == common_pb2.TASK_TEXT_CLASSIFICATION
    assert v1.format == dataset_pb2.DATASET_FORMAT_CSV
    s = v1.stats
    assert (s.row_count, s.valid_row_count, s.invalid_row_count, s.warning_count) == (7, 4, 3, 1)
    assert dict(s.label_counts) == {"pos": 3, "neg": 2}
    assert list(v1.label_names) == ["neg", "pos"]
    assert v1.source_sha256 == hashlib.sha256(CSV).hexdigest()
    assert v1.source_size_bytes == len(CSV)
    assert v1.source_object == f"datasets/{ds}/versions/v1/source.csv"
    assert dict(v1.column_mapping) == {"text": "text", "labels": "label", "id": "id"}
    # The trainer reads the rows through the rows manifest (Parquet parts written at upload): exactly these keys.
    assert v1.rows_manifest_object == f"datasets/{ds}/versions/v1/rows/manifest.json"
    manifest = stored_rows.load_manifest(stack.store, v1.rows_manifest_object)
    assert (manifest.row_count, list(manifest.label_names)) == (4, ["neg", "pos"])
    assert manifest.dataset_version == v1.name and manifest.task == common_pb2.TASK_TEXT_CLASSIFICATION
    [part] = manifest.parts
    assert part.sha256 == hashlib.sha256(stack.store.get_bytes(part.object)).hexdigest()
    rows = stored_rows.read_page(stack.store, manifest, 0, 100)
    assert [r["row"] for r in rows] == [1, 3, 5, 7]
    assert set(rows[0]) == {"row", "text", "labels", "target", "id", "metadata", "split"}
    assert rows[1]["text"] == "two\nlines" and rows[3]["labels"] == ["neg", "pos"]
    assert stack.store.get_bytes(v1.source_object) == CSV

    v2 = client.upload_dataset(ds, JSONL, format="jsonl")
    assert v2.name == f"datasets/{ds}/versions/v2"
    assert (v2.stats.row_count, v2.stats.valid_row_count) == (3, 2)
    assert list(v2.label_names) == ["farewell", "greet"]

    assert client.get_dataset_version(v1.name) == v1
    assert client.get_dataset(ds).latest_version == v2.name

    first = client.call(
        client.datasets.ListDatasetVersions,
        dataset_pb2.ListDatasetVersionsRequest(parent=f"datasets/{ds}", page_size=1),
    )
    assert [v.name for v in first.dataset_versions] == [v2.name]  # newest first
    second = client.call(
        client.datasets.ListDatasetVersions,
        dataset_pb2.ListDatasetVersionsRequest(parent=f"datasets/{ds}", page_size=1, page_token=first.next_page_token),
    )
    assert [v.name for v in second.dataset_versions] == [v1.name]
    assert second.next_page_token == ""


def test_validation_report_pages_with_row_numbers(client: Client) -> None:
    ds = new_id()
    client.create_dataset(ds)
    version = client.upload_dataset(ds, CSV, format="csv")
    issues: list[common_pb2.RowIssue] = []
    token = ""
    pages = 0
    while True:
        page = client.call(
            client.datasets.GetValidationReport,
            dataset_pb2.GetValidationReportRequest(name=version.name, page_size=2, page_token=token),
        )
        assert len(page.issues) <= 2
        assert page.stats == version.stats
        issues += page.issues
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 2
    assert [(i.row, i.code) for i in issues] == [
        (2, "EMPTY_TEXT"),
        (4, "MISSING_LABEL"),
        (5, "DUPLICATE"),
        (6, "BAD_UTF8"),
    ]
    assert issues[2].severity == common_pb2.RowIssue.SEVERITY_WARNING
    assert issues[3].severity == common_pb2.RowIssue.SEVERITY_ERROR and issues[3].field == "text"


def test_read_rows_pages(client: Client) -> None:
    ds = new_id()
    client.create_dataset(ds)
    version = client.upload_dataset(ds, JSONL + b"\n" + b'{"text": "more", "labels": "x|y"}\n', format="jsonl")
    seen = []
    token = ""
    while True:
        page = client.call(
            client.datasets.ReadRows, dataset_pb2.ReadRowsRequest(name=version.name, page_size=2, page_token=token)
        )
        assert len(page.rows) <= 2
        seen += page.rows
        token = page.next_page_token
        if not token:
            break
    assert [(r.row, r.text, list(r.labels)) for r in seen] == [
        (1, "hello", ["greet"]),
        (2, "bye", ["farewell"]),
        (4, "more", ["x", "y"]),
    ]
    assert seen[1].metadata["lang"] == "en"
    bad = error_of(
        lambda: client.call(client.datasets.ReadRows, dataset_pb2.ReadRowsRequest(name=version.name, page_token="zz"))
    )
    assert isinstance(bad, InvalidArgument) and bad.violations[0].field == "page_token"


def test_a_version_without_a_rows_manifest_asks_for_a_re_upload(client: Client, stack) -> None:  # type: ignore[no-untyped-def]
    """Versions stored by releases before rows were materialised (no
    rows_manifest_object) are not parsed again: ReadRows says to upload again."""
    ds = new_id()
    client.create_dataset(ds)
    version = client.upload_dataset(ds, CSV, format="csv")
    rows = [(r.row, r.text, list(r.labels)) for r in client.read_rows(version.name).rows]
    assert rows == [
        (1, "great film", ["pos"]),
        (3, "two\nlines", ["neg"]),
        (5, "great film", ["pos"]),
        (7, "fine", ["neg", "pos"]),
    ]
    # The record as such a release wrote it (imported from its manifest.json): no rows manifest.
    database = Database(Settings.from_env(stack.env).database)
    with database.write() as conn:
        versions = schema.dataset_versions
        stored = json.loads(
            conn.execute(sa.select(versions.c.record).where(versions.c.name == version.name)).scalar_one()
        )
        del stored["rows_manifest_object"]
        conn.execute(sa.update(versions).where(versions.c.name == version.name).values(record=json.dumps(stored)))
    database.close()
    err = error_of(lambda: client.read_rows(version.name, page_size=10))
    assert isinstance(err, FailedPrecondition) and err.reason == "DATASET_VERSION_NOT_MATERIALIZED"


def test_list_datasets_pages(client: Client) -> None:
    ours = sorted(new_id() for _ in range(3))
    for ds in ours:
        client.create_dataset(ds)
    names: list[str] = []
    token = ""
    while True:
        page = client.list_datasets(page_size=2, page_token=token)
        assert len(page.datasets) <= 2
        names += [d.name for d in page.datasets]
        token = page.next_page_token
        if not token:
            break
    assert names == sorted(names) and len(names) == len(set(names))
    assert [n for n in names if n.split("/")[1] in ours] == [f"datasets/{ds}" for ds in ours]


def test_not_found(client: Client) -> None:
    ds = new_id()
    assert isinstance(error_of(lambda: client.get_dataset(ds)), NotFound)
    assert isinstance(error_of(lambda: client.get_dataset_version(f"datasets/{ds}/versions/v1")), NotFound)
    assert isinstance(error_of(lambda: client.upload_dataset(ds, CSV, format="csv")), NotFound)
    client.create_dataset(ds)
    missing = error_of(lambda: client.get_dataset_version(f"datasets/{ds}/versions/v9"))
    assert isinstance(missing, NotFound)
    read = dataset_pb2.ReadRowsRequest(name=f"datasets/{ds}/versions/v9")
    assert isinstance(error_of(lambda: client.call(client.datasets.ReadRows, read)), NotFound)


def test_invalid_arguments_name_the_field(client: Client, stack) -> None:  # type: ignore[no-untyped-def]
    bad_id = error_of(lambda: client.create_dataset("Bad_ID"))
    assert isinstance(bad_id, InvalidArgument) and bad_id.violations[0].field == "dataset_id"
    bad_name = error_of(lambda: client.get_dataset_version("datasets/x/vers/v1"))
    assert isinstance(bad_name, InvalidArgument) and bad_name.violations[0].field == "name"

    ds = new_id()
    client.create_dataset(ds)
    no_text = error_of(lambda: client.upload_dataset(ds, b"sentence,label\nhi,a\n", format="csv"))
    assert isinstance(no_text, InvalidArgument)
    assert no_text.violations[0].field == "header.column_mapping[text]"
    assert no_text.reason == "NO_TEXT_COLUMN"
    empty = error_of(lambda: client.upload_dataset(ds, b"", format="csv"))
    assert isinstance(empty, InvalidArgument) and empty.reason == "EMPTY_FILE"
    no_format = error_of(lambda: client.upload_dataset(ds, b"text,label\na,b\n"))
    assert isinstance(no_format, InvalidArgument) and no_format.violations[0].field == "header.format"
    # First message not a header.
    chunk_first = iter([dataset_pb2.UploadDatasetVersionRequest(chunk=b"text\n")])
    not_header = error_of(lambda: client.datasets.UploadDatasetVersion(chunk_first, metadata=client.metadata))
    assert isinstance(not_header, InvalidArgument) and not_header.violations[0].field == "header"
    # None of the failed uploads left a version or any object behind.
    assert version_keys(stack, ds) == []
    assert (
        client.call(
            client.datasets.ListDatasetVersions, dataset_pb2.ListDatasetVersionsRequest(parent=f"datasets/{ds}")
        ).dataset_versions
        == []
    )


def test_cut_off_stream_leaves_no_version(client: Client, stack) -> None:  # type: ignore[no-untyped-def]
    ds = new_id()
    client.create_dataset(ds)

    def breaking() -> Iterator[dataset_pb2.UploadDatasetVersionRequest]:
        yield from upload_requests(f"datasets/{ds}", [CSV[:40]])
        raise ConnectionError("the network went away")

    err = error_of(lambda: client.datasets.UploadDatasetVersion(breaking(), metadata=client.metadata, timeout=30))
    assert err.grpc_code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)  # type: ignore[attr-defined]

    # A client that cancels mid-stream.
    sent_some = threading.Event()
    release = threading.Event()

    def stalling() -> Iterator[dataset_pb2.UploadDatasetVersionRequest]:
        yield from upload_requests(f"datasets/{ds}", [CSV[:40]])
        sent_some.set()
        release.wait(30)
        yield dataset_pb2.UploadDatasetVersionRequest(chunk=CSV[40:])

    future = client.datasets.UploadDatasetVersion.future(stalling(), metadata=client.metadata, timeout=30)
    assert sent_some.wait(30)
    future.cancel()
    release.set()
    with pytest.raises(grpc.FutureCancelledError):
        future.result()

    assert version_keys(stack, ds) == []
    assert client.get_dataset(ds).latest_version == ""
    # The next complete upload is the dataset's only version: nothing was half written. Its number is
    # v1, or later where a broken upload's header had reached the validator before the stream broke: a
    # reserved number is never handed out again (DatasetCore._reserve), even for a version never shown.
    done = client.upload_dataset(ds, CSV, format="csv")
    assert done.name in {f"datasets/{ds}/versions/v{n}" for n in (1, 2, 3)}
    assert [v.name for v in client.list_dataset_versions(ds).dataset_versions] == [done.name]
    assert client.get_dataset(ds).latest_version == done.name


def test_a_header_problem_ends_the_upload_before_the_rest_arrives(client: Client, stack) -> None:  # type: ignore[no-untyped-def]
    """The header is checked as soon as its bytes arrive, while the client is
    still sending: an endless stream after a header without a text column gets
    its INVALID_ARGUMENT, and nothing is left in the store."""
    ds = new_id()
    client.create_dataset(ds)

    def endless() -> Iterator[dataset_pb2.UploadDatasetVersionRequest]:
        yield from upload_requests(f"datasets/{ds}", [b"sentence,label\n"])
        while True:  # only an early answer ends this call
            yield dataset_pb2.UploadDatasetVersionRequest(chunk=b"some text,a\n" * 1000)

    err = error_of(lambda: client.datasets.UploadDatasetVersion(endless(), metadata=client.metadata, timeout=60))
    assert isinstance(err, InvalidArgument) and err.reason == "NO_TEXT_COLUMN"
    assert version_keys(stack, ds) == []


def test_upload_over_the_size_limit_is_refused_early(stack) -> None:  # type: ignore[no-untyped-def]
    env = {**stack.env, "TEXTFT_MAX_UPLOAD_BYTES": "4096"}
    service = start_service("dataset", env)
    try:
        with Client(service.address, "127.0.0.1:1", "127.0.0.1:1", api_key=stack.api_key) as small:
            ds = new_id()
            small.create_dataset(ds)
            sent = 0

            def endless() -> Iterator[dataset_pb2.UploadDatasetVersionRequest]:
                nonlocal sent
                yield from upload_requests(f"datasets/{ds}", [b"text,label\n"])
                while True:  # only an early refusal ends this call
                    sent += 1
                    yield dataset_pb2.UploadDatasetVersionRequest(chunk=b"some text,a\n" * 100)

            err = error_of(lambda: small.datasets.UploadDatasetVersion(endless(), metadata=small.metadata, timeout=60))
            assert isinstance(err, InvalidArgument) and err.reason == "UPLOAD_TOO_LARGE"
            assert err.violations[0].field == "chunk"
            assert version_keys(stack, ds) == []
    finally:
        service.stop()


def test_import_from_store_object(client: Client, stack) -> None:  # type: ignore[no-untyped-def]
    ds = new_id()
    client.create_dataset(ds)
    key = f"imports/{ds}/data.tsv"
    data = b"text\ttarget\nhello\tbonjour\nthanks\tmerci\n"
    stack.store.put_bytes(key, data)
    header = dataset_pb2.UploadHeader(parent=f"datasets/{ds}", filename="data.tsv")
    response = client.call(
        client.datasets.ImportDatasetVersion, dataset_pb2.ImportDatasetVersionRequest(header=header, source_object=key)
    )
    version = response.dataset_version
    assert version.task == common_pb2.TASK_TEXT_GENERATION and version.format == dataset_pb2.DATASET_FORMAT_TSV
    assert (version.stats.valid_row_count, version.stats.target_count) == (2, 2)
    assert version.source_sha256 == hashlib.sha256(data).hexdigest()
    assert stack.store.get_bytes(version.source_object) == data
    request = dataset_pb2.ImportDatasetVersionRequest(header=header, source_object=f"imports/{ds}/absent.tsv")
    assert isinstance(error_of(lambda: client.call(client.datasets.ImportDatasetVersion, request)), NotFound)


def test_delete_dataset_removes_everything(client: Client, stack) -> None:  # type: ignore[no-untyped-def]
    ds = new_id()
    client.create_dataset(ds)
    client.upload_dataset(ds, CSV, format="csv")
    client.call(client.datasets.DeleteDataset, dataset_pb2.DeleteDatasetRequest(name=f"datasets/{ds}"))
    assert list(stack.store.list(f"datasets/{ds}/")) == []
    assert isinstance(error_of(lambda: client.get_dataset(ds)), NotFound)
    again = dataset_pb2.DeleteDatasetRequest(name=f"datasets/{ds}")
    assert isinstance(error_of(lambda: client.call(client.datasets.DeleteDataset, again)), NotFound)
    # The id can be reused; its versions go on from the old numbers, so nothing
    # keyed by a version name (caches, lineage) mistakes a new v1 for the old one.
    client.create_dataset(ds)
    assert client.upload_dataset(ds, CSV, format="csv").name == f"datasets/{ds}/versions/v2"


def test_repository_on_both_backends_cleans_up_a_failed_write(store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The same domain code on the local directory and on S3; a store failure
    half-way through a version's writes leaves nothing behind."""
    from textft_services.common.config import Settings
    from textft_services.dataset.repository import DatasetCore, UploadSpec

    repo = DatasetCore(store, Settings(home=tmp_path / "home"))
    repo.create_dataset("reviews", "", {})
    spec = UploadSpec("reviews", dataset_pb2.DATASET_FORMAT_CSV)
    version = repo.upload(spec, iter([CSV[:10], CSV[10:]]))
    rows, token = repo.read_rows("reviews", "v1", 3, "")
    assert [r.row for r in rows] == [1, 3, 5] and token
    assert version.stats.valid_row_count == 4

    real_put = store.put_stream

    def failing_put(key, stream, length=-1, content_type="application/octet-stream"):  # type: ignore[no-untyped-def]
        if key.endswith("report.json"):
            raise ConnectionError("store went away")
        return real_put(key, stream, length, content_type)

    store.put_stream = failing_put  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        repo.upload(spec, iter([CSV]))
    store.put_stream = real_put  # type: ignore[method-assign]
    assert list(store.list("datasets/reviews/versions/v2/")) == []
    assert [v.name for v in repo.list_versions("reviews", 0, "")[0]] == ["datasets/reviews/versions/v1"]
    assert list((tmp_path / "home" / "tmp" / "dataset").iterdir()) == []  # temp files gone too
