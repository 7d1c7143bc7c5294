"""Training jobs on Ray (TEXTFT_LAUNCHER=ray): a real Ray head on loopback
(`ray start --head`, 2 CPUs), a real trainer service process connected to it
as a driver on the head's address (TEXTFT_RAY_ADDRESS=host:port), and the
tiny GPT-Neo: a job trains to READY through a Ray task, a
cancel stops the task and its job process, and a Ray worker killed mid-job is
retried by Ray and resumes from its last checkpoint in the store. A job of 2
workers (TEXTFT_TRAINER_NPROC=2) runs through Ray Train's TorchTrainer (gloo
on CPU) to READY with world_size 2 and an adapter plain PEFT loads, and its
cancel stops both workers.

Skipped where Ray is not installed (pip install 'textft-services[ray]')."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

pytest.importorskip("ray", reason="Ray is not installed: pip install 'textft-services[ray]'")

import support
from conftest import API_KEY, S3Endpoint, unique_bucket
from reliability import record
from support import BASE, CLS_TEMPLATE, EV, MV, TINY_BASE_KEY, progressed, states, until, wait_exit, wait_for
from support.rayhead import RAY_LOOPBACK, RayHead
from support.rayhead import ray_head as start_ray_head

from textft import Client
from textft_services.common.config import Settings
from textft_services.common.store import S3Store
from textft_services.stack import ServiceProcess, start_service
from textft_services.trainer.checkpoints import CHECKPOINT_MARKER

pytestmark = pytest.mark.integration

ATTEMPT = re.compile(r"attempt (\d+) on node (\S+) \(job pid (\d+), ray worker pid (\d+), workdir (\S+)\)")


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    """A Ray head of its own (2 CPUs), ended at teardown."""
    with start_ray_head() as head:
        record("ray launcher", "Ray head start (ray start --head, 2 CPUs), s", f"{head.started_in:.1f}")
        yield head


@dataclass
class RayStack:
    env: dict[str, str]
    store: S3Store
    dataset: ServiceProcess
    trainer: ServiceProcess
    client: Client
    log: IO[str]


@pytest.fixture(scope="module")
def ray_stack(
    ray_head: RayHead, s3_endpoint: S3Endpoint, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[RayStack]:
    home = tmp_path_factory.mktemp("ray-home")
    env = s3_endpoint.service_env(home, unique_bucket(), **RAY_LOOPBACK)
    store = S3Store(Settings.from_env(env).store)
    store.upload_dir(tiny_model_dir, TINY_BASE_KEY)
    log = open(home / "services.log", "w")  # noqa: SIM115 - closed at teardown
    dataset = start_service("dataset", env, log=log)
    env["TEXTFT_DATASET_ADDR"] = dataset.address
    trainer_env = {
        **env,
        "TEXTFT_LAUNCHER": "ray",
        # The head's address: the trainer joins as a driver. Through Ray Client
        # (ray://) the head's proxy starts a server process per client and, in
        # CI's full runs, that start timed out twice (not in isolation).
        "TEXTFT_RAY_ADDRESS": ray_head.address,
        "TEXTFT_RAY_NUM_CPUS": "1",
        "TEXTFT_RAY_MAX_RETRIES": "2",
        "TEXTFT_TRAINER_CONCURRENCY": "2",
    }
    trainer = start_service("trainer", trainer_env, log=log)
    client = Client(dataset.address, trainer.address, api_key=API_KEY)
    try:
        yield RayStack(env, store, dataset, trainer, client, log)
    finally:
        client.close()
        trainer.stop()
        dataset.stop()
        log.close()


@pytest.fixture(scope="module")
def dataset_version(ray_stack: RayStack) -> str:
    return support.upload_sentiment(ray_stack.client, "on-ray", seed=7)


def _attempts(events: list[EV]) -> list[tuple[int, str, int, int, str]]:
    """(attempt, node, job pid, ray worker pid, workdir) of each start of the run's Ray task."""
    found = []
    for event in events:
        match = ATTEMPT.search(event.message) if event.kind == EV.KIND_LOG else None
        if match:
            found.append((int(match[1]), match[2], int(match[3]), int(match[4]), match[5]))
    return found


def _job_processes(version: str) -> list[int]:
    """Pids of worker processes of this version's job still on this machine."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--job" in argv and f"{version}/job.json".encode() in argv:
            pids.append(int(entry.name))
    return pids


def _started(watch: Iterator[EV]) -> tuple[list[EV], tuple[int, str, int, int, str]]:
    seen = until(watch, lambda e: bool(_attempts([e])))
    return seen, _attempts(seen)[-1]


def test_job_trains_to_ready_on_ray(ray_stack: RayStack, dataset_version: str) -> None:
    client = ray_stack.client
    client.create_model("ray-ready", task="classification")
    began = time.monotonic()
    run = client.train(
        "ray-ready",
        dataset_version,
        CLS_TEMPLATE,
        model_config=BASE,
        trainer_config={"max_steps": 10, "per_device_train_batch_size": 4, "logging_steps": 2},
    )
    events = list(client.watch(run.name, timeout=300))
    done = client.get_model_version(run.name)
    record("ray launcher", "tiny job (10 steps) on Ray, create to READY, s", f"{time.monotonic() - began:.1f}")
    assert done.state == MV.STATE_READY, done.failure.message
    assert states(events)[-1] == "READY"
    assert [e.progress.step for e in events if e.kind == EV.KIND_PROGRESS and e.loss > 0][-1] == 10
    started = [e.message for e in events if e.kind == EV.KIND_LOG and e.message.startswith("job started: ray task ")]
    assert started, "the run's log says where the job runs"
    attempts = _attempts(events)
    assert [(a[0], a[1]) for a in attempts] == [(1, "127.0.0.1")]
    assert ray_stack.store.exists(f"{run.name}/adapter/adapter_model.safetensors")
    assert _job_processes(run.name) == []  # the job process exited with its task


def test_cancel_stops_the_ray_task_and_its_job(ray_stack: RayStack, dataset_version: str) -> None:
    client = ray_stack.client
    client.create_model("ray-cancel", task="classification")
    run = client.train(
        "ray-cancel",
        dataset_version,
        CLS_TEMPLATE,
        model_config=BASE,
        trainer_config={"max_steps": 100_000, "per_device_train_batch_size": 4, "logging_steps": 2},
    )
    watch = client.watch(run.name, timeout=300)
    _, (_, _, job_pid, _, workdir) = _started(watch)
    until(watch, progressed())
    assert _job_processes(run.name) == [job_pid]  # the worker entry point, running for this version
    client.cancel(run.name)
    rest = list(watch)
    assert states(rest)[-1] == "CANCELLED"
    assert client.get_model_version(run.name).state == MV.STATE_CANCELLED
    assert wait_exit(job_pid, 60), "the job process outlived its cancelled task"
    assert _job_processes(run.name) == []
    assert not Path(workdir).exists()  # the task removed its scratch directory on the node


def test_killed_ray_worker_reruns_and_resumes_from_checkpoint(ray_stack: RayStack, dataset_version: str) -> None:
    client = ray_stack.client
    client.create_model("ray-resume", task="classification")
    run = client.train(
        "ray-resume",
        dataset_version,
        CLS_TEMPLATE,
        model_config=BASE,
        trainer_config={
            "max_steps": 40,
            "per_device_train_batch_size": 4,
            "logging_steps": 5,
            "save_strategy": "steps",
            "save_steps": 10,
            "save_total_limit": 2,
        },
    )
    watch = client.watch(run.name, timeout=300)
    seen, (attempt, _, job_pid, worker_pid, workdir) = _started(watch)
    assert attempt == 1
    wait_for(lambda: ray_stack.store.exists(f"{run.name}/checkpoints/step-10/{CHECKPOINT_MARKER}"), 300, "step-10")
    os.killpg(job_pid, signal.SIGSTOP)  # frozen mid-job, so the kill below surely finds it unfinished
    os.kill(worker_pid, signal.SIGKILL)  # the Ray worker running the task is lost
    os.killpg(job_pid, signal.SIGCONT)
    assert wait_exit(job_pid, 60), "the job outlived its Ray worker (its lifeline)"
    events = seen + list(watch)
    done = client.get_model_version(run.name)
    resumed = done.state == MV.STATE_READY and done.progress.step == 40
    record("ray launcher", "Ray worker killed mid-job: run resumes and ends READY", "yes" if resumed else "no")
    assert done.state == MV.STATE_READY, done.failure.message
    attempts = _attempts(events)
    assert [a[0] for a in attempts] == [1, 2]
    assert attempts[1][2] != job_pid  # a new job process, on a new Ray worker
    # The killed worker could not clean up; the rerun swept its scratch directory.
    assert not Path(workdir).exists()
    rerun = next(i for i, e in enumerate(events) if e.kind == EV.KIND_LOG and "attempt 2" in e.message)
    after = events[rerun:]
    assert any(e.kind == EV.KIND_LOG and e.message.startswith("resumed from step ") for e in after)
    steps = [e.progress.step for e in after if e.kind == EV.KIND_PROGRESS]
    assert steps and min(steps) > 10 and steps[-1] == 40  # it went on from a checkpoint, it did not start over
    assert states(events)[-1] == "READY"
    assert [e.sequence for e in events] == list(range(len(events)))
    assert ray_stack.store.exists(f"{run.name}/adapter/adapter_model.safetensors")


@pytest.fixture(scope="module")
def ray_train_trainer(ray_stack: RayStack, ray_head: RayHead) -> Iterator[Client]:
    """A second trainer on the same head, database and store whose jobs have
    2 workers each: Ray Train, one CPU per worker."""
    env = {
        **ray_stack.env,
        "TEXTFT_LAUNCHER": "ray",
        "TEXTFT_RAY_ADDRESS": ray_head.address,
        "TEXTFT_RAY_NUM_CPUS": "1",
        "TEXTFT_RAY_MAX_RETRIES": "0",
        "TEXTFT_TRAINER_NPROC": "2",
    }
    trainer = start_service("trainer", env, log=ray_stack.log)
    client = Client(ray_stack.dataset.address, trainer.address, api_key=API_KEY)
    try:
        yield client
    finally:
        client.close()
        trainer.stop()


def test_cancel_stops_a_ray_train_job(ray_train_trainer: Client, dataset_version: str) -> None:
    """Runs before the READY test below, which needs both of the head's CPUs:
    workers a cancel left behind would hold them."""
    client = ray_train_trainer
    client.create_model("ray-train-cancel", task="classification")
    run = client.train(
        "ray-train-cancel",
        dataset_version,
        CLS_TEMPLATE,
        model_config=BASE,
        trainer_config={"max_steps": 100_000, "per_device_train_batch_size": 4, "logging_steps": 2},
    )
    watch = client.watch(run.name, timeout=600)
    seen = until(watch, progressed())
    assert any("Ray Train: 2 workers" in e.message for e in seen if e.kind == EV.KIND_LOG)
    client.cancel(run.name)
    rest = list(watch)
    assert states(rest)[-1] == "CANCELLED"
    assert client.get_model_version(run.name).state == MV.STATE_CANCELLED


def test_two_workers_train_through_ray_train(
    ray_stack: RayStack, ray_train_trainer: Client, dataset_version: str, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    client = ray_train_trainer
    client.create_model("ray-train", task="classification")
    run = client.train(
        "ray-train",
        dataset_version,
        CLS_TEMPLATE,
        model_config=BASE,
        trainer_config={"max_steps": 6, "per_device_train_batch_size": 4, "logging_steps": 2},
    )
    events = list(client.watch(run.name, timeout=600))
    done = client.get_model_version(run.name)
    assert done.state == MV.STATE_READY, done.failure.message
    assert done.world_size == 2
    logs = [e.message for e in events if e.kind == EV.KIND_LOG]
    assert any("Ray Train: 2 workers" in m for m in logs), logs
    assert any(m.startswith("distributed: 2 processes, backend gloo") for m in logs), logs
    assert [e.progress.step for e in events if e.kind == EV.KIND_PROGRESS and e.loss > 0][-1] == 6
    adapter, base = tmp_path / "adapter", tmp_path / "base"
    ray_stack.store.download_dir(done.adapter_uri, adapter)
    ray_stack.store.download_dir(TINY_BASE_KEY, base)
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=len(done.label_names))
    model = PeftModel.from_pretrained(model, str(adapter))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0
