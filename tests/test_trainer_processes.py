"""The trainer as a process among processes: a trainer killed mid-job and
restarted takes its runs up again from the store (resume from the last
checkpoint, re-queue, or fail with a reason), its orphaned jobs exit on their
own, and with TEXTFT_TRAINER_NPROC=2 a job trains with DDP (gloo, 2 CPU
processes under torchrun).

These tests start their own dataset service on a private bucket and their own
trainer processes (one at a time: one trainer per store), since they kill and
reconfigure the trainer."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
import support
from conftest import API_KEY, S3Endpoint, unique_bucket
from support import BASE, CLS_TEMPLATE, EV, MV, TINY_BASE_KEY, job_pid, progressed, states, until, wait_exit, wait_for

from textft import Client
from textft_services.common.config import Settings
from textft_services.common.db import Database
from textft_services.common.store import S3Store
from textft_services.stack import ServiceProcess, start_service
from textft_services.trainer.checkpoints import CHECKPOINT_MARKER, complete_steps
from textft_services.trainer.records import Records

pytestmark = pytest.mark.integration


@dataclass
class Private:
    """A dataset service on a private bucket, and at most one trainer."""

    env: dict[str, str]
    store: S3Store
    dataset: ServiceProcess
    log: IO[str]
    trainer: ServiceProcess | None = None
    clients: list[Client] = field(default_factory=list)

    def start_trainer(self, **extra_env: str) -> Client:
        assert self.trainer is None or self.trainer.proc.poll() is not None, "one trainer per store"
        self.trainer = start_service("trainer", {**self.env, **extra_env}, log=self.log)
        client = Client(self.dataset.address, self.trainer.address, api_key=API_KEY)
        self.clients.append(client)
        return client

    def stop_trainer(self) -> None:
        if self.trainer is not None:
            self.trainer.stop()


@pytest.fixture(scope="module")
def private(
    s3_endpoint: S3Endpoint, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[Private]:
    home = tmp_path_factory.mktemp("private-home")
    env = s3_endpoint.service_env(home, unique_bucket())
    store = S3Store(Settings.from_env(env).store)
    store.upload_dir(tiny_model_dir, TINY_BASE_KEY)
    log = open(home / "services.log", "w")  # noqa: SIM115 - closed at teardown
    dataset = start_service("dataset", env, log=log)
    env["TEXTFT_DATASET_ADDR"] = dataset.address
    running = Private(env, store, dataset, log)
    try:
        yield running
    finally:
        for client in running.clients:
            client.close()
        running.stop_trainer()
        dataset.stop()
        log.close()


@pytest.fixture(scope="module")
def dataset_version(private: Private) -> str:
    with Client(private.dataset.address, api_key=API_KEY) as client:
        return support.upload_sentiment(client, "resumable", seed=5)


def test_killed_trainer_restarts_and_takes_runs_up_again(private: Private, dataset_version: str) -> None:
    client = private.start_trainer(TEXTFT_TRAINER_CONCURRENCY="2")
    client.create_model("resumable", task="classification")
    common = {"per_device_train_batch_size": 4, "logging_steps": 5}
    # X checkpoints every 10 steps (keeping the last 2 in the store); Y never
    # checkpoints; Z waits in the queue (both slots taken).
    x = client.train(
        "resumable",
        dataset_version,
        CLS_TEMPLATE,
        model_config=BASE,
        trainer_config={**common, "max_steps": 40, "save_strategy": "steps", "save_steps": 10, "save_total_limit": 2},
    )
    y = client.train(
        "resumable", dataset_version, CLS_TEMPLATE, model_config=BASE, trainer_config={**common, "max_steps": 100_000}
    )
    z = client.train(
        "resumable", dataset_version, CLS_TEMPLATE, model_config=BASE, trainer_config={**common, "max_steps": 4}
    )
    watch_y = client.watch(y.name, timeout=300)
    until(watch_y, progressed())
    y_pid = job_pid(private.env, y.name)
    # X's first checkpoint is in the store (its marker is written last).
    wait_for(lambda: private.store.exists(f"{x.name}/checkpoints/step-10/{CHECKPOINT_MARKER}"), 300, "step-10")
    x_pid = job_pid(private.env, x.name)
    os.killpg(x_pid, signal.SIGSTOP)  # X is frozen mid-job, so the crash below surely finds it unfinished
    assert client.get_model_version(z.name).state == MV.STATE_QUEUED
    watch_y.close()

    private.trainer.proc.kill()  # the trainer crashes
    private.trainer.proc.wait()
    os.killpg(x_pid, signal.SIGCONT)
    # Orphaned jobs exit on their own (their lifeline pipe closed): no stray
    # process keeps training and uploading beside the resumed run.
    assert wait_exit(x_pid, 60) and wait_exit(y_pid, 60)
    x_prefix = x.name
    database = Database(Settings.from_env(private.env).database)  # the crashed trainer's record of X
    try:
        assert Records(private.store, database).load_version(x_prefix).state == MV.STATE_TRAINING
    finally:
        database.close()
    assert private.store.exists(f"{x_prefix}/checkpoints/step-10/{CHECKPOINT_MARKER}")
    assert private.store.exists(f"{x_prefix}/checkpoints/step-10/adapter_model.safetensors")

    client = private.start_trainer(TEXTFT_TRAINER_CONCURRENCY="2")
    # X resumes from its checkpoint and completes.
    x_events = list(client.watch(x.name, timeout=300))
    done = client.get_model_version(x.name)
    assert done.state == MV.STATE_READY, done.failure.message
    assert done.resumed_from_step == 10 and done.progress.step == 40
    went = states(x_events)
    assert went[:3] == ["QUEUED", "PREPARING_DATA", "TRAINING"]  # the history from before the crash
    assert went[-6:] == ["QUEUED", "PREPARING_DATA", "TRAINING", "EVALUATING", "UPLOADING", "READY"]
    requeued = max(i for i, e in enumerate(x_events) if e.kind == EV.KIND_STATE and e.state == MV.STATE_QUEUED)
    after = [e.progress.step for e in x_events[requeued:] if e.kind == EV.KIND_PROGRESS]
    assert after and min(after) > 10  # it went on from the checkpoint, it did not start over
    assert [e.sequence for e in x_events] == list(range(len(x_events)))
    assert complete_steps(private.store, f"{x_prefix}/checkpoints") == [30, 40]  # save_total_limit=2

    # Y had no checkpoint: it fails, saying why and what to do.
    failed = client.wait(y.name, timeout=60)
    assert failed.state == MV.STATE_FAILED
    assert failed.failure.reason == "MODEL_TRAINING_INTERRUPTED"
    assert failed.failure.field == "trainer_config.save_strategy"  # what to change to make it resumable

    # Z never started: it is simply queued again, and trains.
    z_done = client.wait(z.name, timeout=300)
    assert z_done.state == MV.STATE_READY, z_done.failure.message
    private.stop_trainer()


def test_ddp_two_cpu_processes(private: Private, dataset_version: str) -> None:
    client = private.start_trainer(TEXTFT_TRAINER_NPROC="2")
    client.create_model("ddp", task="classification")
    run = client.train(
        "ddp",
        dataset_version,
        CLS_TEMPLATE,
        model_config=BASE,
        trainer_config={"max_steps": 5, "per_device_train_batch_size": 4, "logging_steps": 1},
    )
    events = list(client.watch(run.name, timeout=300))
    done = client.get_model_version(run.name)
    assert done.state == MV.STATE_READY, done.failure.message
    assert done.world_size == 2
    assert states(events)[-1] == "READY"
    progress = [e for e in events if e.kind == EV.KIND_PROGRESS and e.loss > 0]
    assert progress and progress[-1].progress.step == 5
    logged = [e.progress.step for e in progress]  # the logging_steps=1 reports
    assert logged == [1, 2, 3, 4, 5]  # one reporter (rank 0): each logged step once
    assert private.store.exists(f"{run.name}/adapter/adapter_model.safetensors")
    private.stop_trainer()
