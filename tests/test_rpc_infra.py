"""The shared server plumbing on a real gRPC server (port 0, loopback): auth,
error mapping with rich details, health, reflection, message limits, and the
log filter. The servicers here are small fakes built on the generated stubs."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from textft import errors
from textft.v1 import (
    dataset_pb2,
    dataset_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from textft_services.common.bootstrap import Running, start_server
from textft_services.common.config import Settings, StoreSettings
from textft_services.common.logs import JsonFormatter, SecretFilter

pytestmark = pytest.mark.integration

API_KEY = "tft_infra_key_3f9a1c7e_5b2d8e0a4c6f1b3d"
STORE_SECRET = "store-secret-b81d5e0a"
MAX_MESSAGE = 64 * 1024
DATASET_SERVICE = "textft.v1.DatasetService"
TRAINER_SERVICE = "textft.v1.TrainerService"
INFERENCE_SERVICE = "textft.v1.InferenceService"

ERROR_CLASSES = [
    errors.InvalidArgument,
    errors.NotFound,
    errors.AlreadyExists,
    errors.FailedPrecondition,
    errors.OutOfRange,
    errors.Unauthenticated,
    errors.PermissionDenied,
    errors.ResourceExhausted,
    errors.Unavailable,
    errors.DeadlineExceeded,
    errors.Cancelled,
    errors.Unimplemented,
    errors.Aborted,
    errors.Internal,
]
BY_NAME = {cls.__name__: cls for cls in ERROR_CLASSES}


class FakeDatasets(dataset_pb2_grpc.DatasetServiceServicer):
    """GetDataset behaves according to the name asked for; ListDatasets is
    left to the generated base class (UNIMPLEMENTED)."""

    def GetDataset(self, request, context):
        name = request.name
        if name.startswith("raise/"):
            cls = BY_NAME[name.removeprefix("raise/")]
            raise cls(f"{cls.__name__} happened", reason="TEST_" + cls.code.name, metadata={"name": name})
        if name == "invalid":
            raise errors.InvalidArgument(
                "invalid request: 2 problems — see the details",
                reason="INVALID_CONFIG",
                violations=[
                    errors.FieldViolation("trainer_config.learning_rate", "must be positive"),
                    errors.FieldViolation("dataset_version", "datasets/x/versions/v1 has no rows"),
                ],
            )
        if name == "runtime":
            raise RuntimeError(f"connection to store failed with password {STORE_SECRET} and key {API_KEY}")
        if name == "secret-in-message":
            raise errors.NotFound(f"object at http://u:{STORE_SECRET}@host/ not found")
        if name == "abort":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "custom abort")
        if name == "key-error":
            return {}["missing"]
        return dataset_pb2.GetDatasetResponse(dataset=dataset_pb2.Dataset(name=name))

    def UploadDatasetVersion(self, request_iterator, context):
        header = next(request_iterator).header
        total = 0
        for message in request_iterator:
            total += len(message.chunk)
            if total > 10:
                if header.parent == "runtime":
                    raise RuntimeError(f"disk full {STORE_SECRET}")
                raise errors.ResourceExhausted("upload larger than 10 bytes", reason="UPLOAD_TOO_LARGE")
        return dataset_pb2.UploadDatasetVersionResponse(
            dataset_version=dataset_pb2.DatasetVersion(name=f"{header.parent}/versions/v{total}")
        )


def event(sequence: int) -> trainer_pb2.WatchModelVersionResponse:
    return trainer_pb2.WatchModelVersionResponse(
        event=trainer_pb2.ModelVersionEvent(sequence=sequence, kind=trainer_pb2.ModelVersionEvent.KIND_LOG)
    )


class FakeTrainer(trainer_pb2_grpc.TrainerServiceServicer):
    def WatchModelVersion(self, request, context):
        if request.name == "not-found-first":
            raise errors.NotFound("model version not found", reason="MODEL_VERSION_NOT_FOUND")
        yield event(0)
        yield event(1)
        if request.name == "not-found-after":
            raise errors.NotFound("model version deleted while watching", reason="MODEL_VERSION_NOT_FOUND")
        if request.name == "runtime-after":
            raise RuntimeError(f"watcher crashed: {STORE_SECRET}")
        yield event(2)


def make_settings(**changes) -> Settings:
    base = Settings(
        store=StoreSettings(kind="s3", endpoint="h:1", access_key="access-9c2e", secret_key=STORE_SECRET),
        api_keys=(API_KEY, "tft_second_key_77_0c1d2e3f4a5b6c7d8e9f"),
        api_key=API_KEY,
        auth_enabled=True,
        max_message_bytes=MAX_MESSAGE,
        grpc_workers=4,
    )
    return base.with_overrides(**changes)


def register(server: grpc.Server) -> list[str]:
    dataset_pb2_grpc.add_DatasetServiceServicer_to_server(FakeDatasets(), server)
    trainer_pb2_grpc.add_TrainerServiceServicer_to_server(FakeTrainer(), server)
    # Every method left to the generated base class.
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(inference_pb2_grpc.InferenceServiceServicer(), server)
    return [DATASET_SERVICE, TRAINER_SERVICE, INFERENCE_SERVICE]


@pytest.fixture(scope="module")
def server() -> Iterator[Running]:
    running = start_server(make_settings(), 0, register, host="127.0.0.1")
    yield running
    running.stop(0)


@pytest.fixture(scope="module")
def channel(server: Running) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


AUTH = [("authorization", f"Bearer {API_KEY}")]


@pytest.fixture(scope="module")
def datasets(channel: grpc.Channel) -> dataset_pb2_grpc.DatasetServiceStub:
    return dataset_pb2_grpc.DatasetServiceStub(channel)


@pytest.fixture(scope="module")
def trainer(channel: grpc.Channel) -> trainer_pb2_grpc.TrainerServiceStub:
    return trainer_pb2_grpc.TrainerServiceStub(channel)


def get(datasets, name: str, metadata=AUTH) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        datasets.GetDataset(dataset_pb2.GetDatasetRequest(name=name), metadata=metadata, timeout=10)
    return info.value


# ---- auth ----
def test_valid_key_is_accepted(datasets) -> None:
    response = datasets.GetDataset(dataset_pb2.GetDatasetRequest(name="datasets/ok"), metadata=AUTH, timeout=10)
    assert response.dataset.name == "datasets/ok"
    # Any configured key; the scheme is case-insensitive.
    other = [("authorization", "bearer tft_second_key_77_0c1d2e3f4a5b6c7d8e9f")]
    assert datasets.GetDataset(dataset_pb2.GetDatasetRequest(name="x"), metadata=other, timeout=10).dataset.name == "x"


@pytest.mark.parametrize(
    ("metadata", "hint"),
    [
        ((), "missing API key"),
        ((("authorization", "Bearer tft_wrong_key"),), "invalid API key"),
        ((("authorization", f"Bearer {API_KEY}x"),), "invalid API key"),
        ((("authorization", f"Bearer {API_KEY[:-1]}"),), "invalid API key"),
        ((("authorization", f"Basic {API_KEY}"),), "invalid API key"),
        ((("authorization", API_KEY),), "invalid API key"),
        ((("authorization", "Bearer "),), "invalid API key"),
        ((("x-api-key", API_KEY),), "missing API key"),
    ],
    ids=["none", "wrong", "longer", "prefix", "basic-scheme", "no-scheme", "empty-token", "other-header"],
)
def test_unauthenticated(datasets, trainer, metadata, hint: str) -> None:
    err = get(datasets, "datasets/ok", metadata)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert hint in err.details()
    assert API_KEY not in err.details()
    # Streaming methods are guarded too, before the handler runs.
    stream = trainer.WatchModelVersion(trainer_pb2.WatchModelVersionRequest(name="x"), metadata=metadata, timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        list(stream)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    upload = [dataset_pb2.UploadDatasetVersionRequest(header=dataset_pb2.UploadHeader(parent="p"))]
    with pytest.raises(grpc.RpcError) as info:
        datasets.UploadDatasetVersion(iter(upload), metadata=metadata, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_auth_needs_a_key_configured() -> None:
    with pytest.raises(ValueError, match="TEXTFT_API_KEYS"):
        start_server(make_settings(api_keys=()), 0, register, host="127.0.0.1")


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]", "10.1.2.3", "dataset.internal"])
def test_plaintext_off_loopback_is_refused_unless_allowed(host: str) -> None:
    with pytest.raises(ValueError, match="TEXTFT_ALLOW_PLAINTEXT"):
        start_server(make_settings(), 0, register, host=host)


def test_plaintext_on_any_address_when_allowed_explicitly() -> None:
    running = start_server(make_settings(allow_plaintext=True), 0, register, host="0.0.0.0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            err = get(dataset_pb2_grpc.DatasetServiceStub(ch), "datasets/ok", [])
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED  # served, and keys still needed
    finally:
        running.stop(0)


def test_auth_off_only_when_configured() -> None:
    running = start_server(make_settings(auth_enabled=False, api_keys=()), 0, register, host="127.0.0.1")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = dataset_pb2_grpc.DatasetServiceStub(ch)
            assert stub.GetDataset(dataset_pb2.GetDatasetRequest(name="open"), timeout=10).dataset.name == "open"
    finally:
        running.stop(0)


# ---- health and reflection ----
@pytest.mark.parametrize("service", ["", DATASET_SERVICE, TRAINER_SERVICE, INFERENCE_SERVICE])
def test_health_serving_without_a_key(channel, service: str) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_watch_needs_a_key(channel) -> None:
    """Check is the whole key-less surface: a Watch holds a stream open."""
    health = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        next(health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), metadata=AUTH, timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


def test_key_less_watch_flood_takes_no_slot_from_authorised_calls() -> None:
    """Ten times more key-less Watch streams than the server has RPC slots (8):
    each is refused at once, none stays open, and authorised calls still run."""
    running = start_server(make_settings(), 0, register, host="127.0.0.1")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            request = health_pb2.HealthCheckRequest(service=DATASET_SERVICE)
            flood = [health.Watch(request, timeout=60) for _ in range(80)]
            codes = set()
            for watch in flood:
                with pytest.raises(grpc.RpcError) as info:
                    next(watch)
                codes.add(info.value.code())
            # Refused: UNAUTHENTICATED, or RESOURCE_EXHAUSTED while the burst fills the slots.
            assert grpc.StatusCode.UNAUTHENTICATED in codes
            assert codes <= {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED}
            stub = dataset_pb2_grpc.DatasetServiceStub(ch)
            for _ in range(10):
                got = stub.GetDataset(dataset_pb2.GetDatasetRequest(name="datasets/ok"), metadata=AUTH, timeout=10)
                assert got.dataset.name == "datasets/ok"
            assert health.Check(request, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        running.stop(0)


def test_health_unknown_service_is_not_found(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service="textft.v1.NoSuchService"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_stop_reports_not_serving_then_drains() -> None:
    """stop() first tells health watchers NOT_SERVING (so balancers drain),
    then waits for in-flight calls, up to the grace period."""
    import threading

    running = start_server(make_settings(), 0, register, host="127.0.0.1")
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=DATASET_SERVICE), metadata=AUTH, timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stopper = threading.Thread(target=running.stop, args=(20.0,))
        stopper.start()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert stopper.is_alive()  # still draining: the watch is an in-flight call
        watch.cancel()  # the last call ends: stop returns well before its grace period
        stopper.join(10)
        assert not stopper.is_alive()


class _AddMetadata(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, metadata) -> None:
        self.metadata = list(metadata)

    def _details(self, details):
        return details._replace(metadata=[*(details.metadata or ()), *self.metadata])

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


def test_reflection_lists_and_describes_the_services(channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=AUTH, timeout=10
    )
    listed = {s.name for r in responses for s in r.list_services_response.service}
    assert {DATASET_SERVICE, TRAINER_SERVICE, "grpc.health.v1.Health"} <= listed

    # What grpcurl does: resolve a service's descriptor through reflection.
    authed = grpc.intercept_channel(channel, _AddMetadata(AUTH))
    db = ProtoReflectionDescriptorDatabase(authed)
    assert DATASET_SERVICE in set(db.get_services())
    from google.protobuf.descriptor_pool import DescriptorPool

    pool = DescriptorPool(db)
    service = pool.FindServiceByName(DATASET_SERVICE)
    assert {"GetDataset", "UploadDatasetVersion", "ListDatasets"} <= {m.name for m in service.methods}
    request = pool.FindMessageTypeByName("textft.v1.GetDatasetRequest")
    assert [f.name for f in request.fields] == ["name"]


# ---- error mapping ----
@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_each_error_maps_to_its_status(datasets, cls: type[errors.TextftError]) -> None:
    err = get(datasets, f"raise/{cls.__name__}")
    assert err.code() == cls.code
    assert err.details() == f"{cls.__name__} happened"
    converted = errors.from_rpc_error(err)
    assert type(converted) is cls
    assert converted.message == f"{cls.__name__} happened"
    assert converted.reason == "TEST_" + cls.code.name
    assert converted.metadata == {"name": f"raise/{cls.__name__}"}
    assert converted.retryable == cls.retryable


def test_invalid_argument_carries_field_violations(datasets) -> None:
    err = get(datasets, "invalid")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    converted = errors.from_rpc_error(err)
    assert isinstance(converted, errors.InvalidArgument)
    assert converted.message == "invalid request: 2 problems — see the details"  # non-ASCII survives
    assert converted.reason == "INVALID_CONFIG"
    assert converted.violations == [
        errors.FieldViolation("trainer_config.learning_rate", "must be positive"),
        errors.FieldViolation("dataset_version", "datasets/x/versions/v1 has no rows"),
    ]
    assert "trainer_config.learning_rate: must be positive" in str(converted)


def test_names_errors_reach_the_client_with_their_field(datasets) -> None:
    """InvalidArgument.for_field as raised by names.check_id, shortened message and all."""
    from textft_services.common import names

    class Checking(FakeDatasets):
        def GetDataset(self, request, context):
            names.check_id(request.name, "dataset_id")
            return dataset_pb2.GetDatasetResponse()

    def register_checking(server: grpc.Server) -> list[str]:
        dataset_pb2_grpc.add_DatasetServiceServicer_to_server(Checking(), server)
        return [DATASET_SERVICE]

    running = start_server(make_settings(), 0, register_checking, host="127.0.0.1")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            err = get(dataset_pb2_grpc.DatasetServiceStub(ch), "Bad/../" + "x" * 200)
    finally:
        running.stop(0)
    converted = errors.from_rpc_error(err)
    assert isinstance(converted, errors.InvalidArgument)
    assert [v.field for v in converted.violations] == ["dataset_id"]
    assert converted.reason == "INVALID_ID"


def test_unexpected_exception_is_internal_without_details(datasets, caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="textft.rpc"):
        err = get(datasets, "runtime")
    assert err.code() == grpc.StatusCode.INTERNAL
    details = err.details()
    assert STORE_SECRET not in details
    assert API_KEY not in details
    assert "RuntimeError" not in details
    assert "connection to store" not in details
    match = re.search(r"ref ([0-9a-f]{12})", details)
    assert match, details
    # The log has the reference and the traceback, so an operator can find it.
    logged = [r for r in caplog.records if match.group(1) in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert "GetDataset" in logged[0].getMessage()
    converted = errors.from_rpc_error(err)
    assert isinstance(converted, errors.Internal)
    assert converted.violations == []

    err = get(datasets, "key-error")
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "missing" not in err.details()


def test_secrets_are_scrubbed_from_domain_error_messages(datasets) -> None:
    err = get(datasets, "secret-in-message")
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert STORE_SECRET not in err.details()
    assert "***" in err.details()
    assert errors.from_rpc_error(err).message == err.details()


def test_deliberate_abort_passes_through(datasets) -> None:
    err = get(datasets, "abort")
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.details() == "custom abort"


def test_unimplemented(channel, datasets) -> None:
    # Left to the generated base class.
    with pytest.raises(grpc.RpcError) as info:
        datasets.ListDatasets(dataset_pb2.ListDatasetsRequest(), metadata=AUTH, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert isinstance(errors.from_rpc_error(info.value), errors.Unimplemented)
    inference = inference_pb2_grpc.InferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        inference.Predict(inference_pb2.PredictRequest(), metadata=AUTH, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # A method of a service this server does not have at all.
    nope = channel.unary_unary("/textft.v1.NoSuchService/Get")
    with pytest.raises(grpc.RpcError) as info:
        nope(b"", metadata=AUTH, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_message_size_limit(datasets) -> None:
    err = get(datasets, "x" * (MAX_MESSAGE + 1))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# ---- streaming handlers ----
def watch(trainer, name: str) -> tuple[list[int], grpc.RpcError | None]:
    seen: list[int] = []
    stream = trainer.WatchModelVersion(trainer_pb2.WatchModelVersionRequest(name=name), metadata=AUTH, timeout=10)
    try:
        for response in stream:
            seen.append(response.event.sequence)
    except grpc.RpcError as err:
        return seen, err
    return seen, None


def test_server_stream_completes(trainer) -> None:
    assert watch(trainer, "fine") == ([0, 1, 2], None)


def test_server_stream_error_before_first_message(trainer) -> None:
    seen, err = watch(trainer, "not-found-first")
    assert seen == []
    assert err is not None and err.code() == grpc.StatusCode.NOT_FOUND
    converted = errors.from_rpc_error(err)
    assert isinstance(converted, errors.NotFound)
    assert converted.reason == "MODEL_VERSION_NOT_FOUND"


def test_server_stream_error_after_messages(trainer) -> None:
    seen, err = watch(trainer, "not-found-after")
    assert seen == [0, 1]
    assert err is not None and err.code() == grpc.StatusCode.NOT_FOUND
    converted = errors.from_rpc_error(err)
    assert converted.message == "model version deleted while watching"
    assert converted.reason == "MODEL_VERSION_NOT_FOUND"


def test_server_stream_unexpected_error(trainer) -> None:
    seen, err = watch(trainer, "runtime-after")
    assert seen == [0, 1]
    assert err is not None and err.code() == grpc.StatusCode.INTERNAL
    assert STORE_SECRET not in err.details()
    assert re.search(r"ref [0-9a-f]{12}", err.details())


def test_server_stream_unimplemented(channel) -> None:
    inference = inference_pb2_grpc.InferenceServiceStub(channel)
    stream = inference.PredictStream(inference_pb2.PredictStreamRequest(), metadata=AUTH, timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        list(stream)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


# ---- client streaming ----
def upload(datasets, parent: str, chunks: list[bytes]):
    messages = [dataset_pb2.UploadDatasetVersionRequest(header=dataset_pb2.UploadHeader(parent=parent))]
    messages += [dataset_pb2.UploadDatasetVersionRequest(chunk=c) for c in chunks]
    return datasets.UploadDatasetVersion(iter(messages), metadata=AUTH, timeout=10)


def test_client_stream(datasets) -> None:
    assert upload(datasets, "datasets/d", [b"abc", b"de"]).dataset_version.name == "datasets/d/versions/v5"
    with pytest.raises(grpc.RpcError) as info:
        upload(datasets, "datasets/d", [b"0123456789", b"x"])
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert errors.from_rpc_error(info.value).reason == "UPLOAD_TOO_LARGE"
    with pytest.raises(grpc.RpcError) as info:
        upload(datasets, "runtime", [b"0123456789", b"x"])
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert STORE_SECRET not in info.value.details()


# ---- from_rpc_error without rich details ----
def test_from_rpc_error_on_a_plain_status() -> None:
    class PlainError(grpc.RpcError, grpc.Call):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return "connection refused"

        def trailing_metadata(self):
            return ()

        def initial_metadata(self):
            return ()

        def is_active(self):
            return False

        def time_remaining(self):
            return None

        def cancel(self):
            return False

        def add_callback(self, callback):
            return False

    converted = errors.from_rpc_error(PlainError())
    assert isinstance(converted, errors.Unavailable)
    assert converted.retryable
    assert converted.message == "connection refused"
    assert (converted.reason, converted.violations) == ("", [])


# ---- log scrubbing ----
def _capture(secrets, formatter: logging.Formatter | None = None) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretFilter(secrets))
    handler.setFormatter(formatter or logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"textft.test.{len(secrets)}.{id(stream)}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    return logger, stream


@pytest.mark.parametrize("formatter", [None, JsonFormatter()], ids=["text", "json"])
def test_secret_filter_scrubs_messages_args_and_tracebacks(formatter) -> None:
    logger, stream = _capture([API_KEY, STORE_SECRET], formatter)
    logger.info("key is %s, store %s", API_KEY, f"s3://u:{STORE_SECRET}@h")
    logger.warning(f"literal {API_KEY}")
    logger.info("dict args %(k)s", {"k": STORE_SECRET})
    try:
        raise RuntimeError(f"failed with {STORE_SECRET}")
    except RuntimeError:
        logger.exception("handler failed (ref abc123)")
    out = stream.getvalue()
    assert API_KEY not in out
    assert STORE_SECRET not in out
    assert out.count("***") >= 5
    assert "handler failed (ref abc123)" in out
    assert "RuntimeError" in out  # the traceback is kept, minus the secret


def test_secret_filter_without_secrets_leaves_records_alone() -> None:
    logger, stream = _capture([])
    logger.info("value %d", 42)
    assert stream.getvalue() == "INFO value 42\n"


def test_internal_error_log_line_is_scrubbed(datasets) -> None:
    """The INTERNAL path logs the traceback; through the service's filter the secret is gone."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretFilter(make_settings().secrets()))
    rpc_log = logging.getLogger("textft.rpc")
    rpc_log.addHandler(handler)
    try:
        err = get(datasets, "runtime")
    finally:
        rpc_log.removeHandler(handler)
    ref = re.search(r"ref ([0-9a-f]{12})", err.details()).group(1)
    out = stream.getvalue()
    assert ref in out
    assert "connection to store failed" in out  # the details are in the log
    assert STORE_SECRET not in out
    assert API_KEY not in out
