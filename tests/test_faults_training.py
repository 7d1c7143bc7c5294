"""Faults: the S3 endpoint goes away during training (a cut TCP link between
the services and the store; the store keeps its data).

- Cut mid-training and restored: the job retries its store writes (checkpoint
  uploads) and reports each retry as a log event, the service keeps serving
  the run (GetModelVersion, WatchModelVersion), a new version is refused with
  UNAVAILABLE, and once the store is back the run ends READY with its adapter
  in the store and its record and whole event history in the database.
- Cut for longer than TEXTFT_STORE_RETRY_SECONDS: the job FAILS with
  MODEL_TRAINING_STORE_UNAVAILABLE; the service never fails a run by itself.
  The records live in the metadata database, which the outage does not touch:
  they are complete while the store is still away.

Everything waits on events (watch streams), never on sleeps."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
from conftest import API_KEY, S3Endpoint, unique_bucket
from netutil import TcpProxy
from reliability import record
from support import BASE, CLS_TEMPLATE, EV, MV, TINY_BASE_KEY, until, upload_sentiment

from textft import Client
from textft.errors import Unavailable
from textft_services.common.db import Database, default_url
from textft_services.common.store import S3Store
from textft_services.stack import ServiceProcess, start_service
from textft_services.trainer.records import Records

pytestmark = pytest.mark.reliability
RETRY_MARK = "object store unavailable"


@dataclass
class Outage:
    """Dataset and trainer services whose store is reached through a cuttable proxy."""

    proxy: TcpProxy
    direct: S3Store  # the test's own view of the store, not through the proxy
    env: dict[str, str]
    home: Path
    dataset: ServiceProcess
    log: IO[str]
    dataset_version: str = ""
    clients: list[Client] = field(default_factory=list)

    def start_trainer(self, **extra_env: str) -> tuple[ServiceProcess, Client]:
        trainer = start_service("trainer", {**self.env, **extra_env}, log=self.log)
        # retries=1: an UNAVAILABLE answer while the store is down is the thing under test.
        client = Client(self.dataset.address, trainer.address, api_key=API_KEY, retries=1, timeout=60)
        self.clients.append(client)
        return trainer, client


@pytest.fixture(scope="module")
def outage(s3_endpoint: S3Endpoint, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Outage]:
    host, port = s3_endpoint.endpoint.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    bucket = unique_bucket()
    direct = S3Store(s3_endpoint.settings(bucket))
    direct.upload_dir(tiny_model_dir, TINY_BASE_KEY)
    home = tmp_path_factory.mktemp("training-outage")
    env = s3_endpoint.service_env(home, bucket, MINIO_ENDPOINT=proxy.address)
    log = open(home / "services.log", "w")  # noqa: SIM115 - closed at teardown
    dataset = start_service("dataset", env, log=log)
    env["TEXTFT_DATASET_ADDR"] = dataset.address
    running = Outage(proxy, direct, env, home, dataset, log)
    try:
        with Client(dataset.address, api_key=API_KEY) as client:
            running.dataset_version = upload_sentiment(client, "outage", seed=7)
        yield running
    finally:
        proxy.restore()
        for client in running.clients:
            client.close()
        dataset.stop()
        proxy.close()
        log.close()
        if os.environ.get("TEXTFT_TEST_SHOW_LOGS"):
            print((home / "services.log").read_text())


def _is_state(state: int) -> Callable[[EV], bool]:
    return lambda e: e.kind == EV.KIND_STATE and e.state == state


def _is_retry(e: EV) -> bool:
    return e.kind == EV.KIND_LOG and RETRY_MARK in e.message and "retrying" in e.message


def _records(outage: Outage) -> Iterator[Records]:
    """The trainer's records as its database holds them (read directly, not through the service)."""
    database = Database(default_url(outage.home))
    try:
        yield Records(outage.direct, database)
    finally:
        database.close()


def test_training_survives_store_outage(outage: Outage) -> None:
    trainer, client = outage.start_trainer()
    try:
        client.create_model("survivor", task="classification")
        run = client.train(
            "survivor",
            outage.dataset_version,
            CLS_TEMPLATE,
            model_config=BASE,
            trainer_config={
                "max_steps": 40,
                "per_device_train_batch_size": 4,
                "logging_steps": 5,
                "save_strategy": "steps",
                "save_steps": 5,
                "save_total_limit": 2,
            },
        )
        seen: list[EV] = []
        events = client.watch(run.name, timeout=120)
        seen += until(events, _is_state(MV.STATE_TRAINING))
        outage.proxy.cut()  # the store goes away mid-training
        try:
            seen += until(events, _is_retry)
            retry = seen[-1]  # the job's next store write (a checkpoint) retries
            assert "retrying (attempt 1)" in retry.message, retry.message

            # The service keeps serving the live run from memory.
            live = client.get_model_version(run.name)
            assert live.state not in (MV.STATE_READY, MV.STATE_FAILED, MV.STATE_CANCELLED)
            assert live.state >= MV.STATE_TRAINING
            late: list[EV] = []
            late_watch = client.watch(run.name, timeout=60)
            late += until(late_watch, _is_state(MV.STATE_TRAINING))  # a late watcher gets the history
            late_watch.close()
            assert [e.sequence for e in late] == list(range(len(late)))
            # What needs the store answers UNAVAILABLE, retryable, cleanly.
            with pytest.raises(Unavailable) as info:
                client.train("survivor", outage.dataset_version, CLS_TEMPLATE, model_config=BASE)
            assert info.value.retryable and API_KEY not in info.value.message
        finally:
            outage.proxy.restore()

        for event in events:
            seen.append(event)
        done = client.get_model_version(run.name)
        assert done.state == MV.STATE_READY, done.failure.message
        assert done.progress.step == 40
        assert [e.sequence for e in seen] == list(range(len(seen)))
        retries = sum(1 for e in seen if _is_retry(e))
        assert any("object store available again" in e.message for e in seen if e.kind == EV.KIND_LOG)

        # The store holds the artifacts (read directly, not through the proxy), the database the records.
        store = outage.direct
        assert store.exists(f"{run.name}/adapter/adapter_model.safetensors")
        assert store.exists(f"{run.name}/adapter/adapter_config.json")
        assert store.exists(f"{run.name}/metrics.json")
        for records in _records(outage):
            version = records.load_version(run.name)
            assert version.state == MV.STATE_READY and version.adapter_uri == f"{run.name}/adapter"
            stored = records.stored_events(run.name)
            assert [e.sequence for e in stored] == [e.sequence for e in seen]
            assert [e.message for e in stored] == [e.message for e in seen]
            assert stored[-1].state == MV.STATE_READY
            assert records.get_model("models/survivor").latest_ready_version == run.name
        record("store outage", "training run cut mid-training", f"READY after restore, {retries} retries")
    finally:
        trainer.stop()


def test_training_fails_when_store_stays_away(outage: Outage) -> None:
    """Deterministic: the run under test waits in the queue behind a blocker
    while the store is cut, so every store access of its job fails."""
    trainer, client = outage.start_trainer(TEXTFT_STORE_RETRY_SECONDS="3", TEXTFT_TRAINER_CONCURRENCY="1")
    try:
        client.create_model("stranded", task="classification")
        blocker = client.train(
            "stranded",
            outage.dataset_version,
            CLS_TEMPLATE,
            model_config=BASE,
            trainer_config={"max_steps": 100_000, "per_device_train_batch_size": 4, "logging_steps": 1},
        )
        seen_blocker: list[EV] = []
        blocker_events = client.watch(blocker.name, timeout=120)
        seen_blocker += until(blocker_events, _is_state(MV.STATE_TRAINING))  # past all its store reads
        run = client.train(
            "stranded",
            outage.dataset_version,
            CLS_TEMPLATE,
            model_config=BASE,
            trainer_config={"max_steps": 4, "per_device_train_batch_size": 4},
        )
        assert client.get_model_version(run.name).state == MV.STATE_QUEUED
        outage.proxy.cut()
        try:
            client.cancel(blocker.name)  # served from memory; frees the slot
            seen_blocker.extend(blocker_events)
            assert client.get_model_version(blocker.name).state == MV.STATE_CANCELLED
            seen = list(client.watch(run.name, timeout=120))
            failed = client.get_model_version(run.name)
            # The records are complete while the store is still away: they live in the database.
            for records in _records(outage):
                stored = records.stored_events(run.name)
                assert [e.sequence for e in stored] == [e.sequence for e in seen]
                assert stored[-1].failure.reason == "MODEL_TRAINING_STORE_UNAVAILABLE"
                assert records.load_version(run.name).state == MV.STATE_FAILED
                assert records.load_version(blocker.name).state == MV.STATE_CANCELLED
                assert [e.sequence for e in records.stored_events(blocker.name)] == [e.sequence for e in seen_blocker]
        finally:
            outage.proxy.restore()
        assert failed.state == MV.STATE_FAILED
        assert failed.failure.reason == "MODEL_TRAINING_STORE_UNAVAILABLE", failed.failure
        assert "TEXTFT_STORE_RETRY_SECONDS" in failed.failure.message
        assert "3s" in failed.failure.message
        retries = sum(1 for e in seen if _is_retry(e))
        assert retries >= 1
    finally:
        trainer.stop()
    record(
        "store outage",
        "training run, store away past TEXTFT_STORE_RETRY_SECONDS=3",
        f"FAILED MODEL_TRAINING_STORE_UNAVAILABLE after {retries} retries; records complete during the outage",
    )


def test_store_retry_backs_off_within_its_budget() -> None:
    """The job's retry policy alone, on a fake clock: capped exponential
    backoff, a log event per retry, FAILED with a reason past the budget."""
    from textft_services.modeling.data import JobFailure
    from textft_services.trainer.job.retry import STORE_UNAVAILABLE, StoreRetry

    class Recorder:
        def __init__(self) -> None:
            self.messages: list[str] = []

        def log(self, message: str) -> None:
            self.messages.append(message)

    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    emitter = Recorder()
    retry = StoreRetry(20.0, emitter, first_delay=0.5, max_delay=4.0, sleep=sleep, clock=lambda: now[0])  # type: ignore[arg-type]
    calls = [0]

    def flaky() -> str:
        calls[0] += 1
        if calls[0] <= 3:
            raise Unavailable("object store is unreachable; retry later")
        return "done"

    assert retry("uploading the adapter", flaky) == "done"
    assert waits == [0.5, 1.0, 2.0]
    assert [m.split(" in ")[0] for m in emitter.messages[:3]] == [
        f"object store unavailable while uploading the adapter, retrying (attempt {n})" for n in (1, 2, 3)
    ]
    assert "available again" in emitter.messages[-1]

    def down() -> None:
        raise Unavailable("object store is unreachable; retry later")

    waits.clear()
    with pytest.raises(JobFailure) as info:
        retry("uploading checkpoint step 5", down)
    assert info.value.reason == STORE_UNAVAILABLE
    assert "TEXTFT_STORE_RETRY_SECONDS" in info.value.message and "20s" in info.value.message
    assert max(waits) == 4.0 and sum(waits) == pytest.approx(20.0)  # capped, and never past the budget


def test_checkpoint_prune_is_idempotent(tmp_path: Path) -> None:
    """A prune cut half way (marker gone, files left) is finished by the next one."""
    from textft_services.common.store import LocalStore
    from textft_services.trainer import checkpoints

    store = LocalStore(tmp_path / "store")
    local = tmp_path / "ckpt"
    local.mkdir()
    (local / "adapter_model.safetensors").write_bytes(b"w")
    for step in (5, 10, 15):
        checkpoints.upload(store, local, "c", step)
    store.delete(f"c/step-5/{checkpoints.CHECKPOINT_MARKER}")  # an interrupted prune of step 5
    checkpoints.prune(store, "c", keep=1)
    checkpoints.prune(store, "c", keep=1)
    assert list(store.list("c/")) == [
        "c/step-15/adapter_model.safetensors",
        f"c/step-15/{checkpoints.CHECKPOINT_MARKER}",
    ]
