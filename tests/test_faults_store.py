"""Faults: the S3 endpoint goes away (a cut TCP link) during an upload and
during reads. Clients get UNAVAILABLE with a retryable message, no half-written
version becomes visible, and work continues once the store returns."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from conftest import API_KEY, S3Endpoint, unique_bucket
from netutil import TcpProxy
from reliability import record

from textft import Client
from textft.errors import Unavailable
from textft.v1 import dataset_pb2
from textft_services.common.store import S3Store
from textft_services.stack import ServiceProcess, start_service

pytestmark = pytest.mark.reliability
CSV = b"text,label\n" + b"".join(b"row number %d is fine,%s\n" % (i, b"pos" if i % 2 else b"neg") for i in range(2000))


@pytest.fixture(scope="module")
def outage(
    s3_endpoint: S3Endpoint, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TcpProxy, ServiceProcess, S3Store, Client]]:
    host, port = s3_endpoint.endpoint.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    bucket = unique_bucket()
    direct = S3Store(s3_endpoint.settings(bucket))  # the test's own view of the store, not through the proxy
    env = s3_endpoint.service_env(tmp_path_factory.mktemp("outage"), bucket, MINIO_ENDPOINT=proxy.address)
    log = open(tmp_path_factory.mktemp("outage-log") / "dataset.log", "w")  # noqa: SIM115
    service = start_service("dataset", env, log=log)
    client = Client(dataset_target=service.address, api_key=API_KEY, retries=1, timeout=60)
    yield proxy, service, direct, client
    client.close()
    service.stop()
    proxy.close()
    log.close()


def test_upload_during_store_outage(outage: tuple[TcpProxy, ServiceProcess, S3Store, Client]) -> None:
    proxy, _service, direct, client = outage
    client.create_dataset("during-outage")

    def chunks() -> Iterator[dataset_pb2.UploadDatasetVersionRequest]:
        header = dataset_pb2.UploadHeader(parent="datasets/during-outage", format=dataset_pb2.DATASET_FORMAT_CSV)
        yield dataset_pb2.UploadDatasetVersionRequest(header=header)
        yield dataset_pb2.UploadDatasetVersionRequest(chunk=CSV[:1000])
        proxy.cut()  # the store goes away mid-upload
        for start in range(1000, len(CSV), 4096):
            yield dataset_pb2.UploadDatasetVersionRequest(chunk=CSV[start : start + 4096])

    with pytest.raises(grpc.RpcError) as info:
        client.datasets.UploadDatasetVersion(chunks(), metadata=client.metadata, timeout=120)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "retry" in info.value.details().lower()
    assert API_KEY not in info.value.details()

    proxy.restore()
    assert client.list_dataset_versions("during-outage").dataset_versions == []
    leftovers = [k for k in direct.list("datasets/during-outage/versions/")]
    assert leftovers == [], leftovers
    record("store outage", "upload cut mid-stream", "UNAVAILABLE, 0 objects left, 0 versions visible")

    # Work continues once the store is back: the same bytes upload fine.
    version = client.upload_dataset("during-outage", CSV, format="csv", task="classification")
    assert version.stats.valid_row_count == 2000


def test_reads_during_store_outage_are_retryable(outage: tuple[TcpProxy, ServiceProcess, S3Store, Client]) -> None:
    """Records come from the database and are served while the store is down;
    reads of a version's artifacts (rows, report) answer UNAVAILABLE."""
    proxy, _service, _direct, client = outage
    client.create_dataset("reads")
    version = client.upload_dataset("reads", CSV[:4000], format="csv", task="classification")
    proxy.cut()
    try:
        assert client.get_dataset("reads").latest_version == version.name
        assert [d.name for d in client.list_datasets().datasets if d.name == "datasets/reads"] == ["datasets/reads"]
        with pytest.raises(Unavailable) as info:
            client.read_rows(version.name)
        assert info.value.retryable
        with pytest.raises(Unavailable):
            client.get_validation_report(version.name)
    finally:
        proxy.restore()
    assert client.read_rows(version.name).rows
    record("store outage", "reads while down", "records served, artifacts UNAVAILABLE (retryable), then served")
