"""Load and restart of the inference service, through real processes on loopback.

- The gRPC server's own bound: beyond TEXTFT_MAX_CONCURRENT_RPCS it answers
  RESOURCE_EXHAUSTED at once instead of queueing without limit.
- 64 concurrent Predict clients, each with its own channel and a 2 s deadline,
  for a bounded time (15 s; 60 s with TEXTFT_HEAVY=1) against a dedicated
  inference process with a small queue (16): raw stub calls, no SDK retries, so
  every outcome is counted. Goal: 0 errors other than RESOURCE_EXHAUSTED and
  DEADLINE_EXCEEDED, overload answered by RESOURCE_EXHAUSTED, memory bounded.
- The inference process restarted on the same port under load: SDK clients
  (retries on UNAVAILABLE) see no error, the adapter reloads in the new process.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import RunningStack
from reliability import HEAVY, record
from support import CLS_TEMPLATE, MV, TINY_BASE_URI

from textft import Client
from textft.v1 import inference_pb2, inference_pb2_grpc
from textft_services.common.bootstrap import start_server
from textft_services.common.config import Settings
from textft_services.inference.metrics import parse
from textft_services.stack import ServiceProcess, _free_port, start_service

pytestmark = pytest.mark.reliability
SHORT = {"max_steps": 10, "learning_rate": 5e-3, "per_device_train_batch_size": 8, "logging_steps": 5}
WORDS = ["great", "awful", "superb", "boring", "loved", "dull", "wonderful", "dreadful"]
GOOD = {"great", "superb", "loved", "wonderful"}
TEXTS = [f"the film was {w} from start to end" for w in WORDS]

CLIENTS = 64
DEADLINE_S = 2.0
LOAD_SECONDS = 60.0 if HEAVY else 15.0
QUEUE_SIZE = 16
RESTART_CLIENTS = 8
MIB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def metrics_of(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        return parse(response.read().decode())


@pytest.fixture(scope="module")
def versions(stack: RunningStack) -> list[str]:
    """Two classification adapters of one base (opposite labelling), trained briefly."""
    with stack.client() as c:
        rows = [(t, "pos" if w in GOOD else "neg") for w, t in zip(WORDS, TEXTS, strict=True)] * 6
        bodies = {
            "load-sentiment": "text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows),
            "load-flipped": "text,label\n" + "".join(f"{t},{'neg' if lab == 'pos' else 'pos'}\n" for t, lab in rows),
        }
        runs = []
        for i, (name, body) in enumerate(bodies.items()):
            c.create_dataset(name)
            dataset = c.upload_dataset(name, body.encode(), task="classification", format="csv").name
            c.create_model(f"load-{i}", task="classification")
            overrides = {"model_config": {"pretrained_model_name_or_path": TINY_BASE_URI}, "trainer_config": SHORT}
            runs.append(c.train(f"load-{i}", dataset, CLS_TEMPLATE, **overrides).name)  # type: ignore[arg-type]
        for run in runs:
            done = c.wait(run, timeout=600)
            assert done.state == MV.STATE_READY, done.failure.message
    return runs


def inference_env(stack: RunningStack, home: Path, metrics_port: int) -> dict[str, str]:
    return {
        **stack.env,
        "TEXTFT_HOME": str(home),
        "TEXTFT_INFERENCE_QUEUE_SIZE": str(QUEUE_SIZE),
        "TEXTFT_METRICS_PORT": str(metrics_port),
    }


def sdk_client(stack: RunningStack, address: str, **kwargs: Any) -> Client:
    a = stack.stack.addresses
    return Client(a["dataset"], a["trainer"], address, api_key=stack.api_key, **kwargs)


# ---- the gRPC server's own bound ----
class Blocking(inference_pb2_grpc.InferenceServiceServicer):
    """Predict holds its handler until released; counts the handlers running."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def Predict(self, request: Any, context: grpc.ServicerContext) -> inference_pb2.PredictResponse:
        self.entered.release()
        self.release.wait(30)
        return inference_pb2.PredictResponse(model_version=request.model_version)


def test_server_bounds_rpcs_in_progress() -> None:
    assert Settings().grpc_workers >= 64
    assert Settings().max_rpcs == 2 * Settings().grpc_workers
    assert Settings.from_env({"TEXTFT_MAX_CONCURRENT_RPCS": "7"}).max_rpcs == 7
    servicer = Blocking()

    def register(server: grpc.Server) -> list[str]:
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
        return ["textft.v1.InferenceService"]

    settings = Settings(auth_enabled=False, grpc_workers=2, max_concurrent_rpcs=2)
    running = start_server(settings, 0, register, host="127.0.0.1")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            held = [
                stub.Predict.future(inference_pb2.PredictRequest(model_version=f"v{i}"), timeout=30) for i in (1, 2)
            ]
            for _ in held:
                assert servicer.entered.acquire(timeout=30)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Predict(inference_pb2.PredictRequest(model_version="v3"), timeout=30)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            servicer.release.set()
            assert [f.result().model_version for f in held] == ["v1", "v2"]
            assert stub.Predict(inference_pb2.PredictRequest(model_version="v4"), timeout=30).model_version == "v4"
    finally:
        servicer.release.set()
        running.stop(1)
    record("load", "RPCs beyond TEXTFT_MAX_CONCURRENT_RPCS", "RESOURCE_EXHAUSTED at once (not queued)")


# ---- 64 concurrent clients ----
@dataclass
class Outcomes:
    lock: threading.Lock = field(default_factory=threading.Lock)
    codes: Counter[str] = field(default_factory=Counter)
    ok_latency: list[float] = field(default_factory=list)
    all_latency: list[float] = field(default_factory=list)
    others: list[str] = field(default_factory=list)

    def add(self, code: str, seconds: float, detail: str = "") -> None:
        with self.lock:
            self.codes[code] += 1
            self.all_latency.append(seconds)
            if code == "OK":
                self.ok_latency.append(seconds)
            elif code not in ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED") and len(self.others) < 20:
                self.others.append(f"{code}: {detail}")


@pytest.fixture(scope="module")
def loaded(
    stack: RunningStack, versions: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    home = tmp_path_factory.mktemp("inference-load")
    metrics_port = _free_port()
    with open(home / "inference.log", "w") as log:
        service = start_service("inference", inference_env(stack, home, metrics_port), log=log)
        service.metrics_port = metrics_port  # type: ignore[attr-defined]
        try:
            yield service
        finally:
            service.stop()


def test_64_concurrent_clients_with_deadlines(stack: RunningStack, versions: list[str], loaded: ServiceProcess) -> None:
    pid = loaded.proc.pid
    with sdk_client(stack, loaded.address, timeout=120) as c:
        for v in versions:
            c.load_model_version(v)
        for _ in range(3):  # warm: first forward passes, allocator pools
            for v in versions:
                c.predict(v, TEXTS)
    warm = rss_bytes(pid)
    before = metrics_of(loaded.metrics_port)  # type: ignore[attr-defined]

    outcomes = Outcomes()
    stop = threading.Event()
    start = threading.Barrier(CLIENTS + 1)
    peak = [warm]
    metadata = [("authorization", f"Bearer {stack.api_key}")]

    def sample() -> None:
        while not stop.wait(0.1):
            peak[0] = max(peak[0], rss_bytes(pid))

    def worker(i: int) -> None:
        request = inference_pb2.PredictRequest(model_version=versions[i % 2], texts=[TEXTS[i % len(TEXTS)]])
        with grpc.insecure_channel(loaded.address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            grpc.channel_ready_future(channel).result(timeout=30)
            start.wait(60)
            while not stop.is_set():
                began = time.perf_counter()
                try:
                    response = stub.Predict(request, metadata=metadata, timeout=DEADLINE_S)
                except grpc.RpcError as err:
                    code = err.code()
                    outcomes.add(code.name, time.perf_counter() - began, err.details() or "")
                    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        stop.wait(0.05)  # a polite client backs off before retrying
                    continue
                elapsed = time.perf_counter() - began
                if len(response.predictions) == 1 and response.model_version == request.model_version:
                    outcomes.add("OK", elapsed)
                else:
                    outcomes.add("WRONG_ANSWER", elapsed, str(response)[:200])

    threads = [threading.Thread(target=worker, args=(i,), name=f"load-{i}") for i in range(CLIENTS)]
    sampler = threading.Thread(target=sample, name="rss-sampler")
    for t in threads:
        t.start()
    start.wait(60)
    sampler.start()
    began = time.monotonic()
    stop.wait(LOAD_SECONDS)
    stop.set()
    for t in threads:
        t.join(60)
    sampler.join(10)
    wall = time.monotonic() - began
    assert not any(t.is_alive() for t in threads)

    # After the load: the service answers at once and its memory came back down.
    with sdk_client(stack, loaded.address, timeout=30) as c:
        assert len(c.predict(versions[0], TEXTS).predictions) == len(TEXTS)
    after = rss_bytes(pid)
    server = metrics_of(loaded.metrics_port)  # type: ignore[attr-defined]

    codes = outcomes.codes
    total = sum(codes.values())
    others = total - codes["OK"] - codes["RESOURCE_EXHAUSTED"] - codes["DEADLINE_EXCEEDED"]
    rows = server["textft_inference_batch_rows_sum"] - before["textft_inference_batch_rows_sum"]
    passes = server["textft_inference_batch_rows_count"] - before["textft_inference_batch_rows_count"]
    record(
        "load", "clients x deadline x duration", f"{CLIENTS} x {DEADLINE_S:.0f} s x {wall:.0f} s (queue {QUEUE_SIZE})"
    )
    record("load", "requests sent", total)
    record("load", "OK", f"{codes['OK']} ({codes['OK'] / wall:.0f}/s)")
    record("load", "RESOURCE_EXHAUSTED", codes["RESOURCE_EXHAUSTED"])
    record("load", "DEADLINE_EXCEEDED", codes["DEADLINE_EXCEEDED"])
    record("load", "other errors (goal 0)", others)
    record(
        "load",
        "OK latency p50 / p99",
        f"{percentile(outcomes.ok_latency, 0.5) * 1000:.0f} / {percentile(outcomes.ok_latency, 0.99) * 1000:.0f} ms",
    )
    record(
        "load",
        "all-answers latency p50 / p99",
        f"{percentile(outcomes.all_latency, 0.5) * 1000:.0f} / {percentile(outcomes.all_latency, 0.99) * 1000:.0f} ms",
    )
    record("load", "texts per forward pass (mean)", f"{rows / max(passes, 1):.1f}")
    record(
        "load", "inference RSS warm / peak / after", f"{warm / MIB:.0f} / {peak[0] / MIB:.0f} / {after / MIB:.0f} MiB"
    )

    assert others == 0, outcomes.others
    assert codes["OK"] > 0
    # Overload is answered by the inference queue's bound, not by anything else.
    assert codes["RESOURCE_EXHAUSTED"] > 0
    refused_by_queue = server['textft_inference_rejected_total{reason="queue_full"}'] - before.get(
        'textft_inference_rejected_total{reason="queue_full"}', 0.0
    )
    assert refused_by_queue == codes["RESOURCE_EXHAUSTED"]
    # Memory stays bounded: 64 clients hammering for 15 s add no more than a
    # generous margin over the warm process, and it does not keep what it took.
    assert peak[0] <= warm + 512 * MIB, (warm, peak[0])
    assert after <= warm + 256 * MIB, (warm, after)


# ---- restart under load ----
class CountingStub:
    """Wraps the SDK's inference stub: counts Predict attempts and failed ones by code."""

    def __init__(self, stub: inference_pb2_grpc.InferenceServiceStub) -> None:
        self.stub = stub
        self.lock = threading.Lock()
        self.attempts = 0
        self.failed: Counter[str] = Counter()

    def Predict(self, request: Any, **kwargs: Any) -> Any:
        with self.lock:
            self.attempts += 1
        try:
            return self.stub.Predict(request, **kwargs)
        except grpc.RpcError as err:
            with self.lock:
                self.failed[err.code().name] += 1
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stub, name)


def test_restart_under_load(stack: RunningStack, versions: list[str], tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("inference-restart")
    metrics_port = _free_port()
    env = inference_env(stack, home, metrics_port)
    log = open(home / "inference.log", "w")  # noqa: SIM115 - closed below
    old = start_service("inference", env, log=log)
    new: ServiceProcess | None = None
    version = versions[0]
    # Retries: a restart (SIGTERM, exit, a fresh process importing torch, the
    # channel reconnecting) outlasts the SDK's default budget of 3 (~1.4 s).
    clients = [sdk_client(stack, old.address, timeout=30, retries=10) for _ in range(RESTART_CLIENTS)]
    stubs = [CountingStub(c.inference) for c in clients]
    for c, s in zip(clients, stubs, strict=True):
        c.inference = s  # type: ignore[assignment]

    cond = threading.Condition()
    successes = [0]
    most_retries = [0]  # retries one call needed
    surfaced: list[BaseException] = []
    stop = threading.Event()

    def worker(i: int) -> None:
        while not stop.is_set():
            tried = stubs[i].attempts  # this client is this thread's alone
            try:
                response = clients[i].predict(version, [TEXTS[i % len(TEXTS)]])
                assert len(response.predictions) == 1
            except BaseException as exc:  # anything the caller sees is a failure
                with cond:
                    surfaced.append(exc)
                    cond.notify_all()
                return
            with cond:
                successes[0] += 1
                most_retries[0] = max(most_retries[0], stubs[i].attempts - tried - 1)
                cond.notify_all()

    def wait_for(count: int) -> None:
        with cond:
            assert cond.wait_for(lambda: successes[0] >= count or surfaced, timeout=120), successes[0]
        assert not surfaced, surfaced

    threads = [threading.Thread(target=worker, args=(i,), name=f"restart-{i}") for i in range(RESTART_CLIENTS)]
    try:
        for t in threads:
            t.start()
        wait_for(50)  # the old process serves (its cold load included)
        attempts_before = sum(s.attempts for s in stubs)
        killed = time.monotonic()
        code = old.stop()
        exited = time.monotonic()
        with cond:
            served_by_old = successes[0]
        new = start_service("inference", env, port=old.port, log=log)
        ready = time.monotonic()
        assert new.address == old.address
        wait_for(served_by_old + 50)  # every one of these completed after the old process exited
        stop.set()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        assert not surfaced, surfaced
        assert code == 0  # a clean shutdown on SIGTERM

        loaded = clients[0].list_loaded_model_versions()
        assert [v.model_version for v in loaded] == [version]
        values = metrics_of(metrics_port)  # the new process's own counters
        assert values["textft_inference_cache_misses_total"] == 1  # one cold load, however many clients waited
        assert values["textft_inference_adapter_load_seconds_count"] == 1
        attempts = sum(s.attempts for s in stubs)
        failed: Counter[str] = sum((s.failed for s in stubs), Counter())
        assert set(failed) <= {"UNAVAILABLE"}, failed
        record("restart", "clients (SDK, retries=10)", RESTART_CLIENTS)
        record("restart", "Predict attempts / retried (UNAVAILABLE)", f"{attempts} / {failed['UNAVAILABLE']}")
        record("restart", "attempts during the restart", attempts - attempts_before)
        record("restart", "most retries one call needed", most_retries[0])
        record("restart", "failures surfaced to callers (goal 0)", len(surfaced))
        record("restart", "SIGTERM to exit / exit to ready", f"{exited - killed:.1f} s / {ready - exited:.1f} s")
        record("restart", "adapter cold load in the new process", f"{loaded[0].load_seconds:.2f} s")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        for c in clients:
            c.close()
        for svc in (old, new):
            if svc is not None:
                svc.stop()
        log.close()
