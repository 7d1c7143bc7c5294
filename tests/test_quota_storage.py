"""The stored-bytes quota per app (TEXTFT_QUOTA_STORED_BYTES) on a real
dataset service: usage is measured once per published version and kept in
the database; an upload that would pass the quota is stopped while it
streams, with RESOURCE_EXHAUSTED naming the quota and its limit, and leaves
nothing of its own behind; another app's quota is its own; deleting frees."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import API_KEY, S3Endpoint, unique_bucket
from support import BASE, CLS_TEMPLATE, error_of

from textft import Client
from textft.errors import ResourceExhausted
from textft.v1 import dataset_pb2
from textft_services.common.config import Settings
from textft_services.common.db import open_database
from textft_services.common.store import S3Store
from textft_services.common.usage import StoredBytes
from textft_services.stack import ServiceProcess, start_service

pytestmark = pytest.mark.integration
QUOTA = 3_000_000
RUN = uuid.uuid4().hex[:6]


def csv(rows: int, tag: str) -> bytes:
    return b"text,label\n" + b"".join(
        b"%s row %d of a review text,%s\n" % (tag.encode(), i, b"pn"[i % 2 : i % 2 + 1]) for i in range(rows)
    )


@pytest.fixture(scope="module")
def env(s3_endpoint: S3Endpoint, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("quota-home")
    return s3_endpoint.service_env(home, unique_bucket(), TEXTFT_QUOTA_STORED_BYTES=str(QUOTA))


@pytest.fixture(scope="module")
def dataset(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with open(Path(tmp_path_factory.mktemp("quota-logs")) / "services.log", "w") as log:
        service = start_service("dataset", env, log=log)
        yield service
        service.stop()


def test_an_apps_stored_bytes_are_capped_per_app(dataset: ServiceProcess, env: dict[str, str]) -> None:
    settings = Settings.from_env(env)
    store = S3Store(settings.store)
    stored = StoredBytes(open_database(settings))
    apps = {}
    with Client(dataset.address, api_key=API_KEY, retries=0) as platform:
        for app in (f"q1-{RUN}", f"q2-{RUN}"):
            apps[app] = platform.create_app(app, admin_principal="owner").admin_secret
    q1, q2 = apps
    with (
        Client(dataset.address, api_key=apps[q1], app=q1) as one,
        Client(dataset.address, api_key=apps[q2], app=q2) as two,
    ):
        one.create_dataset("small")
        first = one.upload_dataset("small", csv(40_000, "a"), format="csv")
        under = f"{first.name}/"
        measured = sum(store.size(k) for k in store.list(under))
        assert stored.used(q1) == measured > first.source_size_bytes  # source, rows and report

        one.create_dataset("big")
        big = csv(56_000, "b")  # ~1.7 MB, two chunks: the quota is passed on the way
        assert len(big) + measured > QUOTA > len(big) * 1.3
        over = error_of(lambda: one.upload_dataset("big", big, format="csv"))
        assert isinstance(over, ResourceExhausted) and over.reason == "QUOTA_STORED_BYTES"
        assert "TEXTFT_QUOTA_STORED_BYTES" in over.message and str(QUOTA) in over.message
        assert over.metadata["limit"] == str(QUOTA) and over.metadata["app"] == q1
        # Only the failed upload's objects are gone: the dataset and the earlier version stay.
        assert [k for k in store.list(f"apps/{q1}/datasets/big/") if "/versions/" in k] == []
        assert one.get_dataset_version(first.name) == first
        assert stored.used(q1) == measured

        # Another app's quota is its own.
        two.create_dataset("big")
        theirs = two.upload_dataset("big", big, format="csv")
        assert theirs.name == f"apps/{q2}/datasets/big/versions/v1"
        assert stored.used(q2) > len(big) and stored.used(q1) == measured

        # Deleting frees the app's bytes; then the upload fits.
        one.call(one.datasets.DeleteDataset, dataset_pb2.DeleteDatasetRequest(name=f"apps/{q1}/datasets/small"))
        assert stored.used(q1) == 0
        # (v2: the refused upload had taken v1, and version ids are never handed out twice)
        assert one.upload_dataset("big", big, format="csv").name == f"apps/{q1}/datasets/big/versions/v2"
        # Now q1 is near its quota: the next upload is refused at once.
        more = csv(40_000, "c")
        assert stored.used(q1) + len(more) > QUOTA
        full = error_of(lambda: one.upload_dataset("big", more, format="csv"))
        assert isinstance(full, ResourceExhausted) and full.reason == "QUOTA_STORED_BYTES"


def test_no_training_starts_in_a_full_app(
    dataset: ServiceProcess, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A run adds an adapter and checkpoints: the trainer refuses new ones once
    the app's stored bytes reach the quota (here set below what one dataset holds)."""
    app = f"q3-{RUN}"
    with Client(dataset.address, api_key=API_KEY, retries=0) as platform:
        key = platform.create_app(app, admin_principal="owner").admin_secret
    with open(Path(tmp_path_factory.mktemp("quota-trainer")) / "trainer.log", "w") as log:
        limits = {"TEXTFT_DATASET_ADDR": dataset.address, "TEXTFT_QUOTA_STORED_BYTES": "10000"}
        trainer = start_service("trainer", {**env, **limits}, log=log)
        try:
            with Client(dataset.address, trainer.address, api_key=key, app=app, retries=0) as client:
                client.create_dataset("d")
                version = client.upload_dataset("d", csv(2_000, "t"), format="csv")
                client.create_model("m", task="classification")
                refused = error_of(lambda: client.train("m", version.name, CLS_TEMPLATE, model_config=BASE))
                assert isinstance(refused, ResourceExhausted) and refused.reason == "QUOTA_STORED_BYTES"
                assert "10000 bytes" in refused.message and f"app {app}" in refused.message
                assert client.list_model_versions("m").model_versions == []
        finally:
            trainer.stop()
