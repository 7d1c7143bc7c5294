"""The trainer as a process among processes: a trainer killed mid-job and
restarted takes its runs up again from the store (resume from the last
checkpoint, re-queue, or fail with a reason), its orphaned jobs exit on their
own, and with TEXTFT_TRAINER_NPROC=2 a job trains with DDP (gloo, 2 CPU
processes under torchrun).

These tests start their own dataset service on a private bucket and their own
trainer processes (one at a time: one trainer per store), since they kill and
reconfigure the trainer."""

from __future__ import annotations

import json
import os
import random
import re
import select
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
from conftest import API_KEY, TINY_BASE_KEY, TINY_BASE_URI, S3Endpoint, unique_bucket

from textft import Client
from textft.v1 import trainer_pb2
from textft_services.common.config import Settings
from textft_services.common.store import S3Store
from textft_services.stack import ServiceProcess, start_service
from textft_services.trainer.checkpoints import CHECKPOINT_MARKER, complete_steps

MV = trainer_pb2.ModelVersion
EV = trainer_pb2.ModelVersionEvent
CLS_TEMPLATE = "templates/gpt-neo-125m-lora-text-classification"
BASE = {"pretrained_model_name_or_path": TINY_BASE_URI}


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
    rng = random.Random(5)
    lines = ["text,label"]
    for _ in range(60):
        label = rng.choice(["pos", "neg"])
        lines.append(f"the meal was {rng.choice(['tasty', 'fresh'] if label == 'pos' else ['bland', 'cold'])},{label}")
    with Client(private.dataset.address, api_key=API_KEY) as client:
        client.create_dataset("resumable")
        return client.upload_dataset(
            "resumable", ("\n".join(lines) + "\n").encode(), task="classification", format="csv"
        ).name


def _until(events: Iterator[EV], predicate: Callable[[EV], bool]) -> list[EV]:
    seen = []
    for event in events:
        seen.append(event)
        if predicate(event):
            return seen
    raise AssertionError(f"stream ended first; last events: {seen[-3:]}")


def _job_pid(events: list[EV]) -> int:
    for e in events:
        match = re.search(r"job started: .*pid (\d+)", e.message)
        if e.kind == EV.KIND_LOG and match:
            return int(match.group(1))
    raise AssertionError("no 'job started' log event")


def _wait_exit(pid: int, timeout: float) -> bool:
    """Event-driven wait for a process that is not our child (a pidfd)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


def _states(events: list[EV]) -> list[str]:
    return [MV.State.Name(e.state).removeprefix("STATE_") for e in events if e.kind == EV.KIND_STATE]


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
    y_pid = _job_pid(_until(watch_y, lambda e: e.kind == EV.KIND_PROGRESS and e.progress.step >= 1))
    watch_x = client.watch(x.name, timeout=300)
    seen_x = _until(watch_x, lambda e: e.kind == EV.KIND_LOG and e.message.startswith("checkpoint step 10 saved"))
    x_pid = _job_pid(seen_x)
    os.killpg(x_pid, signal.SIGSTOP)  # X is frozen mid-job, so the crash below surely finds it unfinished
    assert client.get_model_version(z.name).state == MV.STATE_QUEUED
    watch_x.close()
    watch_y.close()

    private.trainer.proc.kill()  # the trainer crashes
    private.trainer.proc.wait()
    os.killpg(x_pid, signal.SIGCONT)
    # Orphaned jobs exit on their own (their lifeline pipe closed): no stray
    # process keeps training and uploading beside the resumed run.
    assert _wait_exit(x_pid, 60) and _wait_exit(y_pid, 60)
    x_prefix = x.name
    assert json.loads(private.store.get_bytes(f"{x_prefix}/version.json"))["state"] == "STATE_TRAINING"
    assert private.store.exists(f"{x_prefix}/checkpoints/step-10/{CHECKPOINT_MARKER}")
    assert private.store.exists(f"{x_prefix}/checkpoints/step-10/adapter_model.safetensors")

    client = private.start_trainer(TEXTFT_TRAINER_CONCURRENCY="2")
    # X resumes from its checkpoint and completes.
    x_events = list(client.watch(x.name, timeout=300))
    done = client.get_model_version(x.name)
    assert done.state == MV.STATE_READY, done.failure.message
    assert done.resumed_from_step == 10 and done.progress.step == 40
    states = _states(x_events)
    assert states[:3] == ["QUEUED", "PREPARING_DATA", "TRAINING"]  # the history from before the crash
    assert states[-6:] == ["QUEUED", "PREPARING_DATA", "TRAINING", "EVALUATING", "UPLOADING", "READY"]
    assert any("resume from checkpoint step 10" in e.message for e in x_events if e.kind == EV.KIND_STATE)
    resumed = [
        i
        for i, e in enumerate(x_events)
        if e.message == f"resumed from step 10 (checkpoint {x.name}/checkpoints/step-10)"
    ]
    assert len(resumed) == 1
    after = [e.progress.step for e in x_events[resumed[0] :] if e.kind == EV.KIND_PROGRESS]
    assert after and min(after) > 10  # it did not start over
    assert [e.sequence for e in x_events] == list(range(len(x_events)))
    assert complete_steps(private.store, f"{x_prefix}/checkpoints") == [30, 40]  # save_total_limit=2

    # Y had no checkpoint: it fails, saying why and what to do.
    failed = client.wait(y.name, timeout=60)
    assert failed.state == MV.STATE_FAILED
    assert failed.failure.reason == "MODEL_TRAINING_INTERRUPTED"
    assert "no checkpoint" in failed.failure.message and "save_steps" in failed.failure.message

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
    logs = [e.message for e in events if e.kind == EV.KIND_LOG]
    assert any(m.startswith("job started: torchrun pid") for m in logs)
    assert "distributed: 2 processes, backend gloo" in logs
    assert len([m for m in logs if m.startswith("training done: 5 steps")]) == 1  # only rank 0 reports
    assert _states(events)[-1] == "READY"
    progress = [e for e in events if e.kind == EV.KIND_PROGRESS and e.loss > 0]
    assert progress and progress[-1].progress.step == 5
    assert private.store.exists(f"{run.name}/adapter/adapter_model.safetensors")
    private.stop_trainer()
