"""Shared fixtures: a real S3 endpoint over HTTP (real MinIO when MINIO_ENDPOINT
is set or a `minio` binary is on PATH, else moto's server), both store
backends, a tiny offline GPT-Neo, and the three services as real processes on
free loopback ports."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import TINY_BASE_KEY
from support.databases import fresh_postgres_database, sqlite_url, start_postgres

from textft import Client
from textft_services.common.config import Settings, StoreSettings
from textft_services.common.db import Database
from textft_services.common.store import LocalStore, ObjectStore, S3Store
from textft_services.common.tinymodels import build_tiny_gpt_neo
from textft_services.stack import Stack, _free_port, start_stack

API_KEY = "tft_test_" + secrets.token_hex(16)

# No hub in tests: anything that would download fails fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class S3Endpoint:
    endpoint: str
    access_key: str
    secret_key: str
    region: str
    kind: str  # "minio-env", "minio", "moto"

    def settings(self, bucket: str) -> StoreSettings:
        return StoreSettings(
            kind="s3",
            endpoint=self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            bucket=bucket,
        )

    def service_env(self, home: Path, bucket: str, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
        """Environment of service processes on this endpoint: own home and bucket, auth on with API_KEY."""
        return {
            **(dict(os.environ) if base is None else base),
            **self.env(bucket),
            "TEXTFT_HOME": str(home),
            "TEXTFT_API_KEYS": API_KEY,
            "TEXTFT_API_KEY": API_KEY,
            "TEXTFT_AUTH": "on",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }

    def env(self, bucket: str) -> dict[str, str]:
        return {
            "TEXTFT_STORE": "s3",
            "MINIO_ENDPOINT": self.endpoint,
            "MINIO_ACCESS_KEY": self.access_key,
            "MINIO_SECRET_KEY": self.secret_key,
            "MINIO_REGION": self.region,
            "TEXTFT_BUCKET": bucket,
        }


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    if os.environ.get("MINIO_ENDPOINT"):
        yield S3Endpoint(
            os.environ["MINIO_ENDPOINT"],
            os.environ.get("MINIO_ACCESS_KEY", "minioadmin"),
            os.environ.get("MINIO_SECRET_KEY", "minioadmin"),
            os.environ.get("MINIO_REGION", "us-east-1"),
            "minio-env",
        )
        return
    binary = shutil.which("minio")
    if binary:
        port = _free_port()
        user, password = "textft", secrets.token_hex(12)
        env = {**os.environ, "MINIO_ROOT_USER": user, "MINIO_ROOT_PASSWORD": password}
        data = tmp_path_factory.mktemp("minio")
        proc = subprocess.Popen(
            [binary, "server", str(data), "--address", f"127.0.0.1:{port}", "--quiet"],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        endpoint = S3Endpoint(f"127.0.0.1:{port}", user, password, "us-east-1", "minio")
        S3Store(endpoint.settings("textft-probe"))  # the client's retries wait for start-up
        yield endpoint
        proc.terminate()
        proc.wait(30)
        return
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield S3Endpoint(f"{host}:{port}", "testing", "testing-secret", "us-east-1", "moto")
    server.stop()


def unique_bucket() -> str:
    return "t-" + uuid.uuid4().hex[:16]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """Each backend in turn: the same contract holds for both."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
    return S3Store(endpoint.settings(unique_bucket()))


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL 16 server for the session (pgserver), stopped at the end."""
    server, url = start_postgres(tmp_path_factory.mktemp("pg"))
    try:
        yield url
    finally:
        server.cleanup()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The metadata database, once per backend: a SQLite file, and a fresh
    database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    return fresh_postgres_database(request.getfixturevalue("postgres_admin_url"))


@pytest.fixture()
def db(database_url: str) -> Iterator[Database]:
    """That database, migrated to the current schema."""
    database = Database(database_url)
    database.migrate()
    yield database
    database.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt_neo(tmp_path_factory.mktemp("tiny-gpt-neo"))


@dataclass
class RunningStack:
    stack: Stack
    env: dict[str, str]
    store: ObjectStore
    api_key: str

    def client(self, api_key: str | None = None) -> Client:
        a = self.stack.addresses
        return Client(a["dataset"], a["trainer"], a["inference"], api_key=self.api_key if api_key is None else api_key)


@pytest.fixture(scope="session")
def stack(
    s3_endpoint: S3Endpoint, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[RunningStack]:
    """The three services as real processes against the real S3 endpoint, with
    the tiny GPT-Neo uploaded as a base model (store://base-models/tiny-gpt-neo)."""
    home = tmp_path_factory.mktemp("textft-home")
    bucket = unique_bucket()
    env = s3_endpoint.service_env(home, bucket)
    settings = Settings.from_env(env)
    store = S3Store(settings.store)
    store.upload_dir(tiny_model_dir, TINY_BASE_KEY)
    log = open(home / "services.log", "w")  # noqa: SIM115 - kept open for the session
    running = start_stack(env, log=log)
    try:
        yield RunningStack(running, running.env, store, API_KEY)
    finally:
        running.stop()
        log.close()
        if os.environ.get("TEXTFT_TEST_SHOW_LOGS"):
            sys.stderr.write((home / "services.log").read_text())


@pytest.fixture()
def client(stack: RunningStack) -> Iterator[Client]:
    with stack.client() as c:
        yield c


TIERS = {
    "unit": "no subprocess and no server: the fast tier (make test-fast)",
    "integration": "real servers on loopback, S3 over HTTP, child processes, training",
    "reliability": "faults, fuzzing, load and security, with figures (make check-reliability)",
}
# Fixtures that start a server or a process: a unit test never uses them.
SERVER_FIXTURES = {"s3_endpoint", "stack", "client", "store", "postgres_admin_url", "database_url"}


def pytest_configure(config: pytest.Config) -> None:
    for name, what in TIERS.items():
        config.addinivalue_line("markers", f"{name}: {what}")
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped where torch sees no GPU")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test is in exactly one tier (a module-level pytestmark), and the unit
    tier really is server-free; gpu tests skip cleanly without CUDA."""
    problems = []
    gpu_skip = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False here")
    has_cuda: bool | None = None  # asked once, and only when a gpu test is collected
    for item in items:
        tiers = {m.name for m in item.iter_markers() if m.name in TIERS}
        if len(tiers) != 1:
            problems.append(
                f"{item.nodeid}: tiers {sorted(tiers) or 'none'}; mark the module with exactly one of {sorted(TIERS)}"
            )
        elif "unit" in tiers and SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            problems.append(f"{item.nodeid}: a unit test uses {sorted(SERVER_FIXTURES & set(item.fixturenames))}")
        if item.get_closest_marker("gpu"):
            if has_cuda is None:
                import torch

                has_cuda = torch.cuda.is_available()
            if not has_cuda:
                item.add_marker(gpu_skip)
    if problems:
        raise pytest.UsageError("test tiers:\n  " + "\n  ".join(problems))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    seed = getattr(terminalreporter.config.option, "randomly_seed", None)
    if terminalreporter.config.pluginmanager.has_plugin("randomly") and seed is not None:
        terminalreporter.write_line(
            f"test order shuffled with seed {seed}: PYTEST_ARGS=--randomly-seed={seed} repeats it"
        )
    from reliability import table

    text = table()
    if text:
        terminalreporter.write_sep("=", "reliability figures")
        terminalreporter.write_line(text)
