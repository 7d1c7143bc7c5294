"""Trainer lifecycle through the real RPCs of the shared stack (one trainer,
concurrency 1): jobs run in order, a queued job is cancelled before it starts,
a running job is cancelled within seconds, and a job whose process is killed
fails with a reason while the service keeps serving."""

from __future__ import annotations

import os
import random
import re
import signal
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from conftest import TINY_BASE_URI

from textft import Client
from textft.errors import TextftError
from textft.v1 import trainer_pb2

MV = trainer_pb2.ModelVersion
EV = trainer_pb2.ModelVersionEvent
CLS_TEMPLATE = "templates/gpt-neo-125m-lora-text-classification"
BASE = {"pretrained_model_name_or_path": TINY_BASE_URI}
# Runs until stopped: a job that is cancelled or killed mid-training.
ENDLESS = {"max_steps": 100_000, "logging_steps": 1, "per_device_train_batch_size": 4}
SHORT = {"max_steps": 4, "logging_steps": 2, "per_device_train_batch_size": 8}


def sentiment_csv(n: int = 60, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    lines = ["text,label"]
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        word = rng.choice(["great", "superb", "loved"] if label == "pos" else ["awful", "dull", "hated"])
        lines.append(f"the show was {word},{label}")
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def dataset_version(stack) -> str:
    with stack.client() as client:
        client.create_dataset("lifecycle")
        return client.upload_dataset("lifecycle", sentiment_csv(), task="classification", format="csv").name


def _train(client: Client, model: str, dataset_version: str, trainer_config: dict) -> MV:
    return client.train(
        model, dataset_version, CLS_TEMPLATE, model_config=BASE, trainer_config=trainer_config, description=model
    )


def _until(events: Iterator[EV], predicate: Callable[[EV], bool]) -> list[EV]:
    """Consumes a watch stream up to and including the first event matching predicate."""
    seen = []
    for event in events:
        seen.append(event)
        if predicate(event):
            return seen
    raise AssertionError(f"stream ended first; last events: {seen[-3:]}")


def _states(events: list[EV]) -> list[str]:
    return [MV.State.Name(e.state) for e in events if e.kind == EV.KIND_STATE]


def _job_pid(events: list[EV]) -> int:
    for e in events:
        match = re.search(r"job started: .*pid (\d+)", e.message)
        if e.kind == EV.KIND_LOG and match:
            return int(match.group(1))
    raise AssertionError("no 'job started' log event")


def test_queue_order_cancel_and_killed_job(client: Client, dataset_version: str) -> None:
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
    seen_a = _until(watch_a, lambda e: e.kind == EV.KIND_PROGRESS and e.progress.step >= 1)
    assert client.get_model_version(b.name).state == MV.STATE_QUEUED
    assert client.get_model_version(c.name).state == MV.STATE_QUEUED

    # C, still queued, is cancelled at once and never starts.
    cancelled = client.cancel(c.name)
    assert cancelled.state == MV.STATE_CANCELLED and cancelled.failure.reason == "CANCELLED"
    assert _states(list(client.watch(c.name, timeout=30))) == ["STATE_QUEUED", "STATE_CANCELLED"]

    # A's process is killed (as the kernel's OOM killer would): A fails with a reason.
    os.killpg(_job_pid(seen_a), signal.SIGKILL)
    rest_a = list(watch_a)
    assert _states(rest_a)[-1] == "STATE_FAILED"
    failed = client.get_model_version(a.name)
    assert failed.failure.reason == "MODEL_TRAINING_CRASHED"
    assert "killed by signal 9" in failed.failure.message

    # B starts only after A ended; cancelled mid-training, it stops within seconds.
    watch_b = client.watch(b.name, timeout=300)
    seen_b = _until(watch_b, lambda e: e.kind == EV.KIND_PROGRESS and e.progress.step >= 1)
    b_started = next(e for e in seen_b if e.kind == EV.KIND_STATE and e.state == MV.STATE_PREPARING_DATA)
    assert b_started.time.ToNanoseconds() >= rest_a[-1].time.ToNanoseconds()
    asked = time.monotonic()
    client.cancel(b.name)
    rest_b = list(watch_b)
    took = time.monotonic() - asked
    assert _states(rest_b)[-1] == "STATE_CANCELLED"
    assert took < 15, f"cancel took {took:.1f}s"
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
