"""Replicas on one metadata database: two dataset-service processes on one
PostgreSQL (started by the fixtures, pgserver) and one store take 200
concurrent uploads to one dataset. Before, version ids were "list the store,
take the highest, add one" under a lock inside each process, so replicas
handed out the same id and overwrote each other's versions (40 uploads, 28
versions). Now ids come from the database: every upload gets its own and every
version is listed afterwards. A dataset deleted and created again never gets
an earlier number back."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import API_KEY, S3Endpoint, unique_bucket
from reliability import HEAVY, record
from support.databases import fresh_postgres_database

from textft import Client
from textft.cli.output import all_pages
from textft.v1 import dataset_pb2
from textft_services.stack import ServiceProcess, start_service

pytestmark = pytest.mark.reliability
UPLOADS = 400 if HEAVY else 200


@pytest.fixture(scope="module")
def replicas(
    s3_endpoint: S3Endpoint, postgres_admin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Client]]:
    database = fresh_postgres_database(postgres_admin_url)
    bucket = unique_bucket()
    processes: list[ServiceProcess] = []
    clients: list[Client] = []
    log_dir = tmp_path_factory.mktemp("replica-logs")
    with open(log_dir / "services.log", "w") as log:
        try:
            for i in range(2):
                home = tmp_path_factory.mktemp(f"replica-{i}")
                env = s3_endpoint.service_env(home, bucket, TEXTFT_DATABASE_URL=database)
                processes.append(start_service("dataset", env, log=log))
                clients.append(Client(processes[-1].address, api_key=API_KEY, timeout=120))
            yield clients
        finally:
            for client in clients:
                client.close()
            for process in processes:
                process.stop()


def _csv(i: int) -> bytes:
    return f"text,label\nupload {i} says good,pos\nupload {i} says bad,neg\n".encode()


def test_concurrent_uploads_on_two_replicas_never_collide(replicas: list[Client]) -> None:
    replicas[0].create_dataset("shared")
    clients = itertools.cycle(replicas)
    jobs = [(next(clients), i) for i in range(UPLOADS)]

    def upload(job: tuple[Client, int]) -> str:
        client, i = job
        return client.upload_dataset("shared", _csv(i), task="classification", format="csv").name

    with ThreadPoolExecutor(16) as pool:
        names = list(pool.map(upload, jobs))
    listed = {v.name for v in _all_versions(replicas[1], "datasets/shared")}
    collisions = len(names) - len(set(names))
    lost = len(set(names) - listed)
    record(
        "replicas",
        f"2 dataset replicas, 1 PostgreSQL, {UPLOADS} concurrent uploads: collisions / lost",
        f"{collisions} / {lost}",
    )
    assert collisions == 0 and lost == 0
    assert len(listed) == UPLOADS
    # Each version holds the rows its own upload sent (no replica wrote over another's).
    for name in names[:: max(1, UPLOADS // 20)]:
        rows = replicas[0].read_rows(name).rows
        i = names.index(name)
        assert {r.text for r in rows} == {f"upload {i} says good", f"upload {i} says bad"}


def test_a_dataset_created_again_never_reuses_a_version_number(replicas: list[Client]) -> None:
    replicas[0].create_dataset("again")
    first = [replicas[i % 2].upload_dataset("again", _csv(i), format="csv").name for i in range(3)]
    replicas[1].call(
        replicas[1].datasets.DeleteDataset, dataset_pb2.DeleteDatasetRequest(name="datasets/again", force=True)
    )
    replicas[1].create_dataset("again")
    after = replicas[0].upload_dataset("again", _csv(99), format="csv").name
    assert first == [f"datasets/again/versions/v{n}" for n in (1, 2, 3)]
    assert after == "datasets/again/versions/v4"


def _all_versions(client: Client, parent: str) -> list[dataset_pb2.DatasetVersion]:
    return all_pages(
        lambda token: client.list_dataset_versions(parent, page_size=100, page_token=token), "dataset_versions"
    )[0]
