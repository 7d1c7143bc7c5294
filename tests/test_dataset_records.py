"""Dataset records in the metadata database: stores written by earlier releases
(records as dataset.json and manifest.json in the store) are imported once,
by replicas starting together on one database, on both backends."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import S3Endpoint, unique_bucket

from textft.errors import AlreadyExists, InvalidArgument, NotFound
from textft_services.common import schema
from textft_services.common.config import Settings
from textft_services.common.db import Database
from textft_services.common.names import DatasetName
from textft_services.common.protojson import to_dict
from textft_services.common.store import ObjectStore, S3Store
from textft_services.dataset.repository import DatasetCore, UploadSpec, dataset_key, manifest_key

pytestmark = pytest.mark.integration

CSV = b"text,label\n" + b"".join(b"row %d,%s\n" % (i, b"ab"[i % 2 : i % 2 + 1]) for i in range(30))


def _core(store: ObjectStore, tmp_path: Path, url: str) -> DatasetCore:
    database = Database(url)
    database.migrate()
    return DatasetCore(store, Settings(home=tmp_path, database_url=url), database=database)


def _upload(core: DatasetCore, dataset: DatasetName, data: bytes) -> str:
    return core.upload(UploadSpec(dataset, filename="d.csv"), [data]).name


@pytest.fixture()
def s3_store(s3_endpoint: S3Endpoint) -> ObjectStore:
    return S3Store(s3_endpoint.settings(unique_bucket()))


def test_records_of_an_earlier_release_are_imported_once(
    s3_store: ObjectStore, tmp_path: Path, database_url: str
) -> None:
    store = s3_store
    # An earlier release's store: real versions (rows, report), their records as JSON beside them.
    old = _core(store, tmp_path, f"sqlite:///{tmp_path / 'old.db'}")
    default, scoped = DatasetName("legacy"), DatasetName("legacy", "team-a")
    with old.database.write() as conn:
        conn.execute(sa.insert(schema.apps).values(app_id="team-a", uid="u" * 32, created_at=0.0))
    for name in (default, scoped):
        old.create_dataset(name.dataset, "old data", {"k": "v"}, app=name.app)
    first, second = _upload(old, default, CSV), _upload(old, default, CSV + b"more,a\n")
    duplicate = _upload(old, scoped, CSV)
    for name in (default, scoped):
        dataset = old.get_dataset(name)
        dataset.latest_version = ""
        store.put_json(dataset_key(name), to_dict(dataset))
        for version in old.list_versions(name, 0, "")[0]:
            store.put_json(manifest_key(name, version.name.rsplit("/", 1)[1]), to_dict(version))
    store.put_bytes(f"{default}/versions/v7/source.csv", CSV)  # an upload that never finished
    store.put_bytes("datasets/gone/versions/v1/manifest.json", b"{}")  # a half-deleted dataset
    rows = old.read_rows(default, "v2", 0, "")[0]

    # Two replicas start together on a database that knows the app (apps always lived there)
    # but has never seen these records.
    setup = Database(database_url)
    setup.migrate()
    with setup.write() as conn:
        conn.execute(sa.insert(schema.apps).values(app_id="team-a", uid="u" * 32, created_at=0.0))
    setup.close()
    barrier = threading.Barrier(2)

    def start(_: int) -> DatasetCore:
        database = Database(database_url)
        database.migrate()
        barrier.wait()
        return DatasetCore(store, Settings(home=tmp_path, database_url=database_url), database=database)

    with ThreadPoolExecutor(2) as pool:
        replicas = list(pool.map(start, range(2)))
    core = replicas[0]
    with core.database.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.datasets)).scalar_one() == 2
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.dataset_versions)).scalar_one() == 3
    assert replicas[1].import_store_records() == 0  # once per database

    dataset = core.get_dataset(default)
    assert (dataset.description, dict(dataset.labels)) == ("old data", {"k": "v"})
    assert dataset.latest_version == second
    assert [v.name for v in core.list_versions(default, 0, "")[0]] == [second, first]
    assert core.get_version(default, "v1").rows_manifest_object == f"{first}/rows/manifest.json"
    assert core.read_rows(default, "v2", 0, "")[0] == rows
    assert core.validation_report(default, "v1", 0, "")[0].row_count == 30
    assert [d.name for d in core.list_datasets(0, "", app="team-a")[0]] == [str(scoped)]
    assert core.get_dataset(scoped).latest_version == duplicate
    assert [d.name for d in core.list_datasets(0, "")[0]] == [str(default)]  # not the half-deleted one
    # New versions never land under an old version's prefix, finished or not; duplicates are still found.
    again = replicas[1].upload(UploadSpec(default, filename="d.csv"), [CSV])
    assert again.name == f"{default}/versions/v8"
    assert again.duplicate_of == first


def _rows(core: DatasetCore) -> list[tuple[str, str]]:
    versions = schema.dataset_versions
    with core.database.read() as conn:
        return [tuple(r) for r in conn.execute(sa.select(versions.c.name, versions.c.state).order_by(versions.c.name))]


def test_only_published_versions_are_visible(s3_store: ObjectStore, tmp_path: Path, database_url: str) -> None:
    """A reserved version's row (UPLOADING) is invisible; a failed upload removes
    its row and objects, a delete removes every row, published or not."""
    core = _core(s3_store, tmp_path, database_url)
    name = DatasetName("pending")
    core.create_dataset(name.dataset, "", {})
    assert core._reserve(name) == "v1"  # an upload in progress, on this or another replica
    assert _rows(core) == [(f"{name}/versions/v1", "UPLOADING")]
    assert core.get_dataset(name).latest_version == ""
    assert core.list_versions(name, 0, "")[0] == []
    with pytest.raises(NotFound) as info:
        core.get_version(name, "v1")
    assert info.value.reason == "DATASET_VERSION_NOT_FOUND"

    with pytest.raises(InvalidArgument):  # a header, then no row: fails after v2 is reserved
        core.upload(UploadSpec(name, filename="d.csv"), [b"text,label\n\n"])
    assert _rows(core) == [(f"{name}/versions/v1", "UPLOADING")]
    assert list(s3_store.list(f"{name}/versions/v2/")) == []

    published = _upload(core, name, CSV)
    assert published == f"{name}/versions/v3"
    assert core.get_dataset(name).latest_version == published
    assert [v.name for v in core.list_versions(name, 0, "")[0]] == [published]
    with pytest.raises(AlreadyExists):
        core.create_dataset(name.dataset, "", {})

    core.delete_dataset(name)
    assert _rows(core) == []
    assert list(s3_store.list(f"{name}/")) == []
    with pytest.raises(NotFound):
        core.get_dataset(name)
