"""A version refused where its job is enqueued leaves nothing behind.

CreateModelVersion checks the queue's bound early, before it writes anything,
and again where the job is enqueued, in the enqueue's own serialised
transaction (JobQueue.enqueue). Between the two, another replica may take the
queue's last place. The version refused there must vanish: no record, no
objects under its prefix, no live run; and its number is not handed out again.

The trainer's core runs in this process, on its own metadata database, the
stack's S3 store and its dataset service (through the RPCs, as a replica
does); "another replica" is a second JobQueue on the same database, which
takes the last place at the moment the race allows it."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningStack
from support import BASE, CLS_TEMPLATE, upload_sentiment

from textft import Client
from textft.errors import NotFound, ResourceExhausted
from textft.v1 import common_pb2, trainer_pb2
from textft_services.common.config import Settings
from textft_services.trainer.jobqueue import JobQueue
from textft_services.trainer.launcher import LocalProcessLauncher
from textft_services.trainer.service import TrainerCore

pytestmark = pytest.mark.integration


def test_a_version_refused_at_enqueue_leaves_nothing_behind(
    stack: RunningStack, client: Client, tmp_path: Path
) -> None:
    suffix = f"{random.getrandbits(32):08x}"
    dataset_version = upload_sentiment(client, f"admission-{suffix}", 40, seed=3)
    env = {k: v for k, v in stack.env.items() if k != "TEXTFT_DATABASE_URL"}
    env.update(TEXTFT_HOME=str(tmp_path / "home"), TEXTFT_TRAINER_MAX_QUEUED="1")
    settings = Settings.from_env(env)
    datasets = Client(dataset_target=stack.stack.addresses["dataset"], api_key=stack.api_key)
    core = TrainerCore(settings, stack.store, LocalProcessLauncher(), datasets=datasets)  # not started: no claims
    try:
        model = f"admission-{suffix}"
        core.catalog.create_model(
            trainer_pb2.CreateModelRequest(model_id=model, task=common_pb2.TASK_TEXT_CLASSIFICATION)
        )
        request = trainer_pb2.CreateModelVersionRequest(
            parent=f"models/{model}", dataset_version=dataset_version, template=CLS_TEMPLATE
        )
        request.model_config.update(BASE)

        other = JobQueue(core.catalog.database, "another-replica", settings.trainer_lease_seconds)
        enqueue = core.scheduler.enqueue
        created: list[str] = []

        def racing(run: Any, job_key: str, max_queued: int = 0, app_quota: int = 0) -> None:
            # This replica's early check has passed (the queue was empty); the other one takes the last place now.
            created.append(run.version.name)
            other.enqueue(f"models/elsewhere-{suffix}/versions/v1", "elsewhere/job.json", run.app, 0, 0)
            enqueue(run, job_key, max_queued, app_quota)

        core.scheduler.enqueue = racing  # type: ignore[method-assign]
        with pytest.raises(ResourceExhausted) as refused:
            core.catalog.create_version(request)
        assert refused.value.reason == "TRAINER_QUEUE_FULL"
        assert "TEXTFT_TRAINER_MAX_QUEUED=1" in refused.value.message
        (name,) = created
        assert name == f"models/{model}/versions/v1"
        assert core.records.list_versions(f"models/{model}") == []
        with pytest.raises(NotFound):
            core.records.get_version(name)
        assert name not in core.records.runs
        assert list(stack.store.list(f"{name}/")) == []  # its job.json went with it
        assert core.catalog.jobs.counts("default") == (1, 1)  # only the other replica's job

        # A place again (no bound): the next version gets a new number, never the refused one's.
        core.scheduler.enqueue = enqueue  # type: ignore[method-assign]
        core.catalog.settings = dataclasses.replace(settings, trainer_max_queued=0)
        again = core.catalog.create_version(request)
        assert again.name == f"models/{model}/versions/v2"
        assert again.state == trainer_pb2.ModelVersion.STATE_QUEUED
        assert stack.store.exists(f"{again.name}/job.json")
    finally:
        datasets.close()
