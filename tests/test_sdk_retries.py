"""The SDK's retry and deadline behaviour against a real gRPC server on
loopback whose handlers answer UNAVAILABLE on purpose: idempotent calls are
retried with backoff and succeed, non-idempotent ones are not retried, retries
end, and every call carries a deadline."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest

from textft import Client
from textft.errors import Cancelled, DeadlineExceeded, Unavailable
from textft.v1 import dataset_pb2, dataset_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from textft_services.common.bootstrap import Running, start_server
from textft_services.common.config import Settings

pytestmark = pytest.mark.integration


class FlakyDatasets(dataset_pb2_grpc.DatasetServiceServicer):
    """GetDataset fails `failures` times, then answers; CreateDataset and
    ListDatasets always fail; GetDatasetVersion never answers (until the
    caller's deadline ends the call)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()

    def _count(self, method: str) -> int:
        with self.lock:
            self.calls[method] += 1
            return self.calls[method]

    def GetDataset(self, request, context):
        if self._count("GetDataset") <= self.failures:
            raise Unavailable("warming up, try again")
        return dataset_pb2.GetDatasetResponse(dataset=dataset_pb2.Dataset(name=request.name))

    def GetValidationReport(self, request, context):
        if self._count("GetValidationReport") <= self.failures:
            raise Cancelled("CANCELLED")  # what a stopping server answers the calls it had queued
        return dataset_pb2.GetValidationReportResponse()

    def CreateDataset(self, request, context):
        self._count("CreateDataset")
        raise Unavailable("warming up, try again")

    def ListDatasets(self, request, context):
        self._count("ListDatasets")
        raise Unavailable("still warming up")

    def GetDatasetVersion(self, request, context):
        self._count("GetDatasetVersion")
        ended = threading.Event()
        context.add_callback(ended.set)  # runs when the call ends: here, at the client's deadline
        ended.wait(30)
        return dataset_pb2.GetDatasetVersionResponse()


@pytest.fixture()
def flaky() -> Iterator[tuple[FlakyDatasets, Running]]:
    servicer = FlakyDatasets(failures=1)

    def register(server: grpc.Server) -> list[str]:
        dataset_pb2_grpc.add_DatasetServiceServicer_to_server(servicer, server)
        return ["textft.v1.DatasetService"]

    running = start_server(Settings(auth_enabled=False), 0, register, host="127.0.0.1")
    yield servicer, running
    running.stop(0)


def _client(running: Running, **kw: object) -> Client:
    return Client(f"127.0.0.1:{running.port}", env={}, api_key="", **kw)  # type: ignore[arg-type]


def test_idempotent_call_is_retried_after_unavailable(flaky) -> None:
    servicer, running = flaky
    with _client(running) as client:
        dataset = client.get_dataset("datasets/reviews")
    assert dataset.name == "datasets/reviews"
    assert servicer.calls["GetDataset"] == 2  # one UNAVAILABLE, then the answer


def test_a_blocking_call_the_server_cancelled_is_retried(flaky) -> None:
    servicer, running = flaky
    with _client(running) as client:
        client.get_validation_report("datasets/reviews/versions/v1")
    assert servicer.calls["GetValidationReport"] == 2  # one CANCELLED, then the answer


def test_non_idempotent_call_is_not_retried(flaky) -> None:
    servicer, running = flaky
    with _client(running) as client, pytest.raises(Unavailable, match="warming up"):
        client.create_dataset("reviews")
    assert servicer.calls["CreateDataset"] == 1


def test_retries_end(flaky) -> None:
    servicer, running = flaky
    with _client(running, retries=2) as client, pytest.raises(Unavailable) as info:
        client.list_datasets()
    assert servicer.calls["ListDatasets"] == 3  # the call and two retries
    assert info.value.retryable and info.value.code == grpc.StatusCode.UNAVAILABLE


def test_calls_have_a_deadline_by_default(flaky) -> None:
    servicer, running = flaky
    with _client(running, timeout=0.5) as client, pytest.raises(DeadlineExceeded):
        client.get_dataset_version("datasets/reviews/versions/v1")
    assert servicer.calls["GetDatasetVersion"] == 1  # DEADLINE_EXCEEDED is not retried


def test_from_env_reads_targets_key_and_tls_switch(flaky) -> None:
    _, running = flaky
    env = {"TEXTFT_DATASET_ADDR": f"127.0.0.1:{running.port}", "TEXTFT_API_KEY": "tft_env_key"}
    with Client.from_env(env, timeout=5) as client:
        assert client.targets["dataset"] == env["TEXTFT_DATASET_ADDR"]
        assert client.api_key == "tft_env_key" and not client.tls and client.timeout == 5
        assert client.get_dataset("x").name == "datasets/x"  # one retry, then the plaintext server answers
    with Client.from_env({"TEXTFT_TLS": "on"}) as client:
        assert client.tls  # system roots
    with pytest.raises(ValueError, match="TEXTFT_TLS"):
        Client.from_env({"TEXTFT_TLS": "maybe"})


class RestartingTrainer(trainer_pb2_grpc.TrainerServiceServicer):
    """A run of five events whose first watch breaks after two of them, as it
    does when the trainer restarts; the run is READY once all five were sent."""

    def __init__(self) -> None:
        self.from_sequences: list[int] = []
        self.sent = 0

    def WatchModelVersion(self, request, context):
        self.from_sequences.append(request.from_sequence)
        for sequence in range(request.from_sequence, 5):
            if len(self.from_sequences) == 1 and sequence == 2:
                raise Unavailable("trainer restarting")
            self.sent = max(self.sent, sequence + 1)
            yield trainer_pb2.WatchModelVersionResponse(event=trainer_pb2.ModelVersionEvent(sequence=sequence))

    def GetModelVersion(self, request, context):
        state = trainer_pb2.ModelVersion.STATE_READY if self.sent == 5 else trainer_pb2.ModelVersion.STATE_TRAINING
        return trainer_pb2.GetModelVersionResponse(
            model_version=trainer_pb2.ModelVersion(name=request.name, state=state)
        )


def test_wait_resumes_a_broken_watch_after_the_last_event_seen() -> None:
    servicer = RestartingTrainer()

    def register(server: grpc.Server) -> list[str]:
        trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server)
        return ["textft.v1.TrainerService"]

    running = start_server(Settings(auth_enabled=False), 0, register, host="127.0.0.1")
    try:
        seen: list[int] = []
        with Client(trainer_target=f"127.0.0.1:{running.port}", env={}, api_key="") as client:
            done = client.wait("models/m/versions/v1", timeout=30, on_event=lambda e: seen.append(e.sequence))
        assert done.state == trainer_pb2.ModelVersion.STATE_READY
        assert seen == [0, 1, 2, 3, 4]  # each event once, in order
        assert servicer.from_sequences == [0, 2]  # resumed after the last event seen, not from 0
    finally:
        running.stop(0)
