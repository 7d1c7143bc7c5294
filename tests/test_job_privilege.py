"""Least privilege inside: a training job starts from an allow-list of the
trainer's environment. Decoy secrets set in the trainer (MinIO's root user, a
cloud key) and the keys it holds (the API keys, the services' own key) are not
in the job's /proc/<pid>/environ; the job holds the store credentials meant
for jobs (TEXTFT_JOB_STORE_*), not the trainer's."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import API_KEY, S3Endpoint, unique_bucket
from reliability import record
from support import BASE, CLS_TEMPLATE, TINY_BASE_KEY, job_pid, progressed, states, until, upload_sentiment

from textft import Client
from textft_services.common.config import Settings
from textft_services.common.store import S3Store
from textft_services.stack import start_service

pytestmark = pytest.mark.reliability
DECOYS = {
    "MINIO_ROOT_USER": "root-" + secrets.token_hex(8),
    "MINIO_ROOT_PASSWORD": "rootpw-" + secrets.token_hex(16),
    "AWS_SECRET_ACCESS_KEY": "aws-" + secrets.token_hex(16),
}


@pytest.fixture(scope="module")
def trainer_env(
    s3_endpoint: S3Endpoint, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> dict[str, str]:
    env = s3_endpoint.service_env(tmp_path_factory.mktemp("privilege-home"), unique_bucket(), **DECOYS)
    if s3_endpoint.kind == "moto":  # moto takes any credentials: the job's can differ from the trainer's
        env["TEXTFT_JOB_STORE_ACCESS_KEY"] = "job-" + secrets.token_hex(8)
        env["TEXTFT_JOB_STORE_SECRET_KEY"] = "jobsecret-" + secrets.token_hex(16)
    S3Store(Settings.from_env(env).store).upload_dir(tiny_model_dir, TINY_BASE_KEY)
    return env


@pytest.fixture(scope="module")
def client(trainer_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    log_path = tmp_path_factory.mktemp("privilege-logs") / "services.log"
    with open(log_path, "w") as log:
        dataset = start_service("dataset", trainer_env, log=log)
        trainer_env["TEXTFT_DATASET_ADDR"] = dataset.address
        trainer = start_service("trainer", trainer_env, log=log)
        try:
            with Client(dataset.address, trainer.address, api_key=API_KEY) as running:
                yield running
        finally:
            trainer.stop()
            dataset.stop()


def test_a_job_environment_holds_no_service_secret(
    client: Client, trainer_env: dict[str, str], s3_endpoint: S3Endpoint
) -> None:
    version = upload_sentiment(client, "contained", 40, seed=3)
    client.create_model("contained", task="classification")
    run = client.train(
        "contained",
        version,
        CLS_TEMPLATE,
        model_config=BASE,
        trainer_config={"max_steps": 100_000, "per_device_train_batch_size": 4, "logging_steps": 1},
    )
    until(client.watch(run.name, timeout=300), progressed())
    pid = job_pid(trainer_env, run.name)
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    environ = dict(item.decode().partition("=")[::2] for item in raw if item)

    job_key = trainer_env.get("TEXTFT_JOB_STORE_ACCESS_KEY")
    forbidden = [API_KEY, Settings.from_env(trainer_env).service_key, *DECOYS.values()]
    if job_key:
        forbidden.append(s3_endpoint.secret_key)  # the trainer's own store secret
    leaked = [s for s in forbidden if any(s in value for value in environ.values())]
    record("security", "secrets reachable from a training job's environment", f"{len(leaked)} / {len(forbidden)}")
    assert leaked == []
    assert not {"TEXTFT_API_KEYS", "TEXTFT_API_KEY", *DECOYS} & set(environ)
    if job_key:
        assert environ["MINIO_ACCESS_KEY"] == job_key
        assert environ["MINIO_SECRET_KEY"] == trainer_env["TEXTFT_JOB_STORE_SECRET_KEY"]
    client.cancel(run.name)
    assert states(client.watch(run.name, timeout=120))[-1] == "CANCELLED"
