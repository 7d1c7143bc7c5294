"""Trainer lifecycle through the real RPCs of the shared stack (one trainer,
concurrency 1): jobs run in order, a queued job is cancelled before it starts,
a running job is cancelled within seconds, and a job whose process is killed
fails with a reason while the service keeps serving."""

from __future__ import annotations

import os
import signal

import grpc
import pytest
from support import BASE, CLS_TEMPLATE, EV, MV, job_pid, progressed, sentiment_csv, states, until, wait_exit

from textft import Client
from textft.errors import TextftError

pytestmark = pytest.mark.integration

# Runs until stopped: a job that is cancelled or killed mid-training.
ENDLESS = {"max_steps": 100_000, "logging_steps": 1, "per_device_train_batch_size": 4}
SHORT = {"max_steps": 4, "logging_steps": 2, "per_device_train_batch_size": 8}
LIFECYCLE_CSV = sentiment_csv(60, seed=1, template="the show was {word}")


@pytest.fixture(scope="module")
def dataset_version(stack) -> str:
    with stack.client() as client:
        client.create_dataset("lifecycle")
        return client.upload_dataset("lifecycle", LIFECYCLE_CSV, task="classification", format="csv").name


def _train(client: Client, model: str, dataset_version: str, trainer_config: dict) -> MV:
    return client.train(
        model, dataset_version, CLS_TEMPLATE, model_config=BASE, trainer_config=trainer_config, description=model
    )


def test_queue_order_cancel_and_killed_job(stack, client: Client, dataset_version: str) -> None:
    """One queue, four jobs (each job is a child process: launches are what
    costs time here, so one flow covers the lifecycle):
    A is killed mid-training, B is cancelled mid-training, C is cancelled while
    queued, D trains after all that. Concurrency 1 runs them strictly in order."""
    client.create_model("lifecycle", task="classification")
    a = _train(client, "lifecycle", dataset_version, ENDLESS)
    b = _train(client, "lifecycle", dataset_version, ENDLESS)
    c = _train(client, "lifecycle", dataset_version, SHORT)
    assert [a.state, b.state, c.state] == [MV.STATE_QUEUED] * 3

    # A trains; the others wait their turn.
    watch_a = client.watch(a.name, timeout=300)
    until(watch_a, progressed())
    assert client.get_model_version(b.name).state == MV.STATE_QUEUED
    assert client.get_model_version(c.name).state == MV.STATE_QUEUED

    # C, still queued, is cancelled at once and never starts.
    cancelled = client.cancel(c.name)
    assert cancelled.state == MV.STATE_CANCELLED and cancelled.failure.reason == "CANCELLED"
    assert states(list(client.watch(c.name, timeout=30))) == ["QUEUED", "CANCELLED"]

    # A's process is killed (as the kernel's OOM killer would): A fails with a reason.
    os.killpg(job_pid(stack.env, a.name), signal.SIGKILL)
    rest_a = list(watch_a)
    assert states(rest_a)[-1] == "FAILED"
    failed = client.get_model_version(a.name)
    assert failed.failure.reason == "MODEL_TRAINING_CRASHED"

    # B starts only after A ended; cancelled mid-training, its job stops (SIGTERM,
    # SIGKILL after 10 s) and the run ends CANCELLED mid-way.
    watch_b = client.watch(b.name, timeout=300)
    seen_b = until(watch_b, progressed())
    b_started = next(e for e in seen_b if e.kind == EV.KIND_STATE and e.state == MV.STATE_PREPARING_DATA)
    assert b_started.time.ToNanoseconds() >= rest_a[-1].time.ToNanoseconds()
    b_pid = job_pid(stack.env, b.name)
    client.cancel(b.name)
    rest_b = list(watch_b)
    assert states(rest_b)[-1] == "CANCELLED"
    assert wait_exit(b_pid, 60)  # the job's process is gone, not left training
    stopped = client.get_model_version(b.name)
    assert stopped.state == MV.STATE_CANCELLED and stopped.failure.reason == "CANCELLED"
    assert 0 < stopped.progress.step < 100_000
    with pytest.raises(TextftError) as info:  # a finished version cannot be cancelled
        client.cancel(b.name)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION and info.value.reason == "NOT_CANCELLABLE"

    # The service kept serving: its queue still trains, after the crash and the cancels.
    assert client.list_templates()
    d = _train(client, "lifecycle", dataset_version, SHORT)
    done = client.wait(d.name, timeout=300)
    assert done.state == MV.STATE_READY, done.failure.message
    assert done.progress.step == 4
    assert client.get_model("lifecycle").latest_ready_version == d.name
