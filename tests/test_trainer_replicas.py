"""Trainer replicas sharing one queue: two trainer processes on one PostgreSQL
(started by the fixtures) and one store, with a short lease
(TEXTFT_TRAINER_LEASE_SECONDS). A replica killed with SIGKILL mid-job loses
its lease and the other one resumes the job from its last checkpoint, with
one continuous event history; a cancel sent to the replica that does not run
the job stops it; versions created on both at once never collide."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import sqlalchemy as sa
from conftest import API_KEY, S3Endpoint, unique_bucket
from reliability import record
from support import BASE, CLS_TEMPLATE, EV, MV, TINY_BASE_KEY, progressed, states, until, upload_sentiment, wait_for
from support.databases import fresh_postgres_database

from textft import Client
from textft.cli.output import all_pages
from textft.v1 import trainer_pb2
from textft_services.common.config import Settings
from textft_services.common.store import S3Store
from textft_services.stack import ServiceProcess, start_service
from textft_services.trainer.checkpoints import CHECKPOINT_MARKER

pytestmark = pytest.mark.reliability
LEASE_SECONDS = 4.0


@dataclass
class Shared:
    env: dict[str, str]
    database: str
    store: S3Store
    dataset: ServiceProcess
    log: IO[str]
    dataset_version: str


@pytest.fixture(scope="module")
def shared(
    s3_endpoint: S3Endpoint, postgres_admin_url: str, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[Shared]:
    database = fresh_postgres_database(postgres_admin_url)
    env = s3_endpoint.service_env(
        tmp_path_factory.mktemp("replicas-dataset"),
        unique_bucket(),
        TEXTFT_DATABASE_URL=database,
        TEXTFT_TRAINER_LEASE_SECONDS=str(LEASE_SECONDS),
        TEXTFT_TRAINER_MAX_QUEUED="1000",
    )
    store = S3Store(Settings.from_env(env).store)
    store.upload_dir(tiny_model_dir, TINY_BASE_KEY)
    with open(tmp_path_factory.mktemp("replicas-logs") / "services.log", "w") as log:
        dataset = start_service("dataset", env, log=log)
        env["TEXTFT_DATASET_ADDR"] = dataset.address
        with Client(dataset.address, api_key=API_KEY) as client:
            version = upload_sentiment(client, "shared", seed=11)
        try:
            yield Shared(env, database, store, dataset, log, version)
        finally:
            dataset.stop()


@dataclass
class Replica:
    process: ServiceProcess
    client: Client


@pytest.fixture()
def replicas(shared: Shared, tmp_path: Path) -> Iterator[list[Replica]]:
    """Two trainer replicas, each with its own home (as on two machines)."""
    started: list[Replica] = []
    try:
        for i in range(2):
            env = {**shared.env, "TEXTFT_HOME": str(tmp_path / f"trainer-{i}")}
            process = start_service("trainer", env, log=shared.log)
            client = Client(shared.dataset.address, process.address, api_key=API_KEY, retries=0)
            started.append(Replica(process, client))
        yield started
    finally:
        for replica in started:
            replica.client.close()
            replica.process.stop()


def _owner_pid(database: str, target: str) -> int | None:
    engine = sa.create_engine(database, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            owner = conn.execute(
                sa.text("SELECT lease_owner FROM jobs WHERE target = :t AND state = 'RUNNING'"), {"t": target}
            ).scalar()
    finally:
        engine.dispose()
    return int(owner.split(":")[1]) if owner else None


def _versions(client: Client, parent: str) -> list[trainer_pb2.ModelVersion]:
    return all_pages(
        lambda token: client.list_model_versions(parent, page_size=100, page_token=token), "model_versions"
    )[0]


def _model(client: Client) -> str:
    model = f"r{random.getrandbits(32):08x}"
    client.create_model(model, task="classification")
    return model


def test_a_killed_replica_s_job_resumes_on_the_other(shared: Shared, replicas: list[Replica]) -> None:
    a = replicas[0].client
    model = _model(a)
    config = {"max_steps": 30, "per_device_train_batch_size": 4, "logging_steps": 1, "save_strategy": "steps"}
    run = a.train(
        model, shared.dataset_version, CLS_TEMPLATE, model_config=BASE, trainer_config={**config, "save_steps": 5}
    )
    wait_for(lambda: shared.store.exists(f"{run.name}/checkpoints/step-5/{CHECKPOINT_MARKER}"), 300, "step-5")
    pid = _owner_pid(shared.database, run.name)
    owner = next(r for r in replicas if r.process.proc.pid == pid)
    survivor = next(r for r in replicas if r is not owner)
    owner.process.proc.send_signal(signal.SIGKILL)
    owner.process.proc.wait(30)
    killed = time.monotonic()
    watch = survivor.client.watch(run.name, timeout=600)
    seen = until(watch, lambda e: e.kind == EV.KIND_STATE and "taken up after" in e.message)
    taken_up = time.monotonic() - killed
    seen += list(watch)
    done = survivor.client.get_model_version(run.name)
    assert done.state == MV.STATE_READY, done.failure.message
    assert done.resumed_from_step >= 5
    history = list(survivor.client.watch(run.name, timeout=120))
    assert [e.sequence for e in history] == list(range(len(history)))  # one continuous history
    assert states(history)[0] == "QUEUED" and states(history)[-1] == "READY"
    assert any("taken up after the trainer that ran it" in e.message for e in history)
    record(
        "replicas",
        f"trainer replica SIGKILLed mid-job (lease {LEASE_SECONDS:g} s): taken up by the other",
        f"after {taken_up:.1f} s, resumed from step {done.resumed_from_step}, READY, {len(history)} events contiguous",
    )
    assert taken_up < LEASE_SECONDS + 60  # the lease, a poll, and the job's start


def test_a_cancel_sent_to_the_other_replica_stops_the_job(shared: Shared, replicas: list[Replica]) -> None:
    a = replicas[0].client
    model = _model(a)
    config = {"max_steps": 100_000, "per_device_train_batch_size": 4, "logging_steps": 1}
    run = a.train(model, shared.dataset_version, CLS_TEMPLATE, model_config=BASE, trainer_config=config)
    until(a.watch(run.name, timeout=300), progressed())
    pid = _owner_pid(shared.database, run.name)
    other = next(r for r in replicas if r.process.proc.pid != pid)
    other.client.cancel(run.name)
    events = list(other.client.watch(run.name, timeout=120))
    assert states(events)[-1] == "CANCELLED"
    assert a.get_model_version(run.name).state == MV.STATE_CANCELLED


def test_versions_created_on_both_replicas_at_once_never_collide(shared: Shared, replicas: list[Replica]) -> None:
    model = _model(replicas[0].client)
    creations = 200

    def create(i: int) -> str:
        client = replicas[i % 2].client
        config = {"max_steps": 100_000, "per_device_train_batch_size": 4}
        return client.train(model, shared.dataset_version, CLS_TEMPLATE, model_config=BASE, trainer_config=config).name

    with ThreadPoolExecutor(16) as pool:
        names = list(pool.map(create, range(creations)))
    listed = {v.name for v in _versions(replicas[1].client, model)}
    collisions, lost = len(names) - len(set(names)), len(set(names) - listed)
    record(
        "replicas",
        f"2 trainer replicas, {creations} concurrent model-version creations: collisions / lost",
        f"{collisions} / {lost}",
    )
    assert collisions == 0 and lost == 0
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: replicas[0].client.cancel(n), names))
    # The running ones stop when their owner's heartbeat reads the cancel.
    wait_for(lambda: {v.state for v in _versions(replicas[0].client, model)} == {MV.STATE_CANCELLED}, 120, "cancels")
