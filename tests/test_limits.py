"""Limits and quotas on real services: the training queue's bound
(TRAINER_QUEUE_FULL), an app's quota of queued + running jobs (QUOTA_JOBS), a
job's wall-clock limit (FAILED MODEL_TRAINING_TIME_LIMIT), evaluations at once
(EVALUATIONS_BUSY) and uploads in progress per app (QUOTA_UPLOADS). Each is
RESOURCE_EXHAUSTED (or FAILED, for the time limit) with a message that names
the setting. One dataset service; a trainer per test, with its own limits."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from conftest import API_KEY, S3Endpoint, unique_bucket
from support import BASE, CLS_TEMPLATE, MV, TINY_BASE_KEY, error_of, progressed, until, upload_sentiment, wait_for

from textft import Client
from textft.errors import ResourceExhausted
from textft_services.common.config import Settings
from textft_services.common.store import S3Store
from textft_services.stack import ServiceProcess, start_service

pytestmark = pytest.mark.integration
LONG = {"max_steps": 100_000, "per_device_train_batch_size": 4, "logging_steps": 1}


@pytest.fixture(scope="module")
def env(s3_endpoint: S3Endpoint, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, str]:
    env = s3_endpoint.service_env(tmp_path_factory.mktemp("limits-home"), unique_bucket(), TEXTFT_QUOTA_UPLOADS="1")
    S3Store(Settings.from_env(env).store).upload_dir(tiny_model_dir, TINY_BASE_KEY)
    return env


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IO[str]]:
    with open(tmp_path_factory.mktemp("limits-logs") / "services.log", "w") as out:
        yield out


@pytest.fixture(scope="module")
def dataset(env: dict[str, str], log: IO[str]) -> Iterator[ServiceProcess]:
    service = start_service("dataset", env, log=log)
    env["TEXTFT_DATASET_ADDR"] = service.address
    yield service
    service.stop()


@pytest.fixture(scope="module")
def dataset_version(dataset: ServiceProcess) -> str:
    with Client(dataset.address, api_key=API_KEY, retries=0) as client:
        return upload_sentiment(client, "limited", 40, seed=5)


@pytest.fixture()
def trainer(env: dict[str, str], log: IO[str], dataset: ServiceProcess) -> Iterator[Callable[..., Client]]:
    """Starts the test's trainer with the limits it passes (one at a time: one store)."""
    started: list[tuple[ServiceProcess, Client]] = []

    def start(**limits: str) -> Client:
        process = start_service("trainer", {**env, **limits}, log=log)
        client = Client(dataset.address, process.address, api_key=API_KEY, retries=0)
        started.append((process, client))
        return client

    yield start
    for process, client in started:
        client.close()
        process.stop()


def _model(client: Client) -> str:
    model = f"m{random.getrandbits(32):08x}"
    client.create_model(model, task="classification")
    return model


def test_the_queue_bound_and_the_jobs_quota(trainer: Callable[..., Client], dataset_version: str) -> None:
    client = trainer(TEXTFT_TRAINER_MAX_QUEUED="1", TEXTFT_QUOTA_JOBS="3")
    model = _model(client)
    running = client.train(model, dataset_version, CLS_TEMPLATE, model_config=BASE, trainer_config=LONG)
    until(client.watch(running.name, timeout=300), progressed())
    queued = client.train(model, dataset_version, CLS_TEMPLATE, model_config=BASE, trainer_config=LONG)
    assert client.get_model_version(queued.name).state == MV.STATE_QUEUED
    full = error_of(lambda: client.train(model, dataset_version, CLS_TEMPLATE, model_config=BASE, trainer_config=LONG))
    assert isinstance(full, ResourceExhausted) and full.reason == "TRAINER_QUEUE_FULL"
    assert "TEXTFT_TRAINER_MAX_QUEUED=1" in full.message
    for name in (queued.name, running.name):
        client.cancel(name)


def test_an_apps_quota_of_jobs(trainer: Callable[..., Client], dataset_version: str) -> None:
    client = trainer(TEXTFT_QUOTA_JOBS="2")
    model = _model(client)
    first = client.train(model, dataset_version, CLS_TEMPLATE, model_config=BASE, trainer_config=LONG)
    second = client.train(model, dataset_version, CLS_TEMPLATE, model_config=BASE, trainer_config=LONG)
    over = error_of(lambda: client.train(model, dataset_version, CLS_TEMPLATE, model_config=BASE, trainer_config=LONG))
    assert isinstance(over, ResourceExhausted) and over.reason == "QUOTA_JOBS"
    assert "app default has 2 queued or running training jobs" in over.message and "TEXTFT_QUOTA_JOBS" in over.message
    client.cancel(second.name)  # a place frees up
    third = client.train(model, dataset_version, CLS_TEMPLATE, model_config=BASE, trainer_config=LONG)
    for name in (third.name, first.name):
        client.cancel(name)


def test_a_job_past_its_wall_clock_limit_fails_with_its_own_reason(
    trainer: Callable[..., Client], dataset_version: str
) -> None:
    client = trainer(TEXTFT_TRAINER_JOB_MAX_SECONDS="2")
    model = _model(client)
    run = client.train(model, dataset_version, CLS_TEMPLATE, model_config=BASE, trainer_config=LONG)
    list(client.watch(run.name, timeout=300))
    done = client.get_model_version(run.name)
    assert done.state == MV.STATE_FAILED and done.failure.reason == "MODEL_TRAINING_TIME_LIMIT"
    assert "TEXTFT_TRAINER_JOB_MAX_SECONDS" in done.failure.message


def test_evaluations_at_once_are_capped(trainer: Callable[..., Client], dataset_version: str) -> None:
    client = trainer(TEXTFT_TRAINER_MAX_EVALUATIONS="1")
    model = _model(client)
    trainer_config = {"max_steps": 2, "per_device_train_batch_size": 4}
    run = client.train(model, dataset_version, CLS_TEMPLATE, model_config=BASE, trainer_config=trainer_config)
    list(client.watch(run.name, timeout=300))
    assert client.get_model_version(run.name).state == MV.STATE_READY
    first = client.start_evaluation(run.name, dataset_version)
    busy = error_of(lambda: client.start_evaluation(run.name, dataset_version))
    assert isinstance(busy, ResourceExhausted) and busy.reason == "EVALUATIONS_BUSY"
    assert "TEXTFT_TRAINER_MAX_EVALUATIONS=1" in busy.message
    assert first.name  # the first one runs on; the trainer stops it at teardown


class _Held:
    """A file whose read blocks after its header until released: an upload in progress."""

    def __init__(self, data: bytes) -> None:
        self.data, self.sent = data, False
        self.release = threading.Event()
        self.reading = threading.Event()

    def read(self, size: int = -1) -> bytes:
        if not self.sent:
            self.sent = True
            return self.data[:20]
        self.reading.set()
        self.release.wait(120)
        data, self.data = self.data[20:], b""
        return data


def test_an_apps_uploads_in_progress_are_capped(dataset: ServiceProcess, env: dict[str, str]) -> None:
    csv = b"text,label\n" + b"".join(b"held row %d,a\n" % i for i in range(20))
    with Client(dataset.address, api_key=API_KEY, retries=0) as client:
        client.create_dataset("held")
        held = _Held(csv)
        result: list[object] = []
        thread = threading.Thread(
            target=lambda: result.append(client.upload_dataset("held", held, format="csv")), daemon=True
        )
        thread.start()
        assert held.reading.wait(60)
        # The service holds the first upload's slot once its spool directory exists.
        spools = Settings.from_env(env).home / "tmp" / "dataset"
        wait_for(lambda: spools.exists() and any(spools.iterdir()), 60, "the first upload's spool")
        second = error_of(lambda: client.upload_dataset("held", csv, format="csv"))
        held.release.set()
        thread.join(120)
    assert isinstance(second, ResourceExhausted) and second.reason == "QUOTA_UPLOADS"
    assert "TEXTFT_QUOTA_UPLOADS" in second.message
    assert result and result[0].name.startswith("datasets/held/versions/")
