"""Security: every RPC of every service, walked from the service descriptors,
refuses a request with no key or a wrong key; secrets never reach logs or
error messages; config keys that run remote code or write outside the job's
directory are refused."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from conftest import RunningStack
from reliability import record

from textft.errors import InvalidArgument
from textft.v1 import dataset_pb2, inference_pb2, trainer_pb2, trainer_pb2_grpc

pytestmark = pytest.mark.reliability

SERVICES = {
    "dataset": dataset_pb2.DESCRIPTOR.services_by_name["DatasetService"],
    "trainer": trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"],
    "inference": inference_pb2.DESCRIPTOR.services_by_name["InferenceService"],
}
BAD_CREDENTIALS = {
    "no key": [],
    "wrong key": [("authorization", "Bearer not-the-key")],
    "key with a suffix": None,  # filled in with the real key + "x": a prefix match must not pass
    "basic scheme": [("authorization", "Basic dGV4dGZ0OnNlY3JldA==")],
    "empty bearer": [("authorization", "Bearer ")],
}


def _call(channel: grpc.Channel, service: str, method: object, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    path = f"/{service}/{method.name}"  # type: ignore[attr-defined]
    ident = lambda b: b  # noqa: E731 - raw bytes: an empty message is a valid request of any type
    if method.client_streaming:  # type: ignore[attr-defined]
        fn = channel.stream_unary(path, request_serializer=ident, response_deserializer=ident)
        call = lambda: fn(iter([b""]), metadata=metadata, timeout=10)  # noqa: E731
    elif method.server_streaming:  # type: ignore[attr-defined]
        fn = channel.unary_stream(path, request_serializer=ident, response_deserializer=ident)
        call = lambda: list(fn(b"", metadata=metadata, timeout=10))  # noqa: E731
    else:
        fn = channel.unary_unary(path, request_serializer=ident, response_deserializer=ident)
        call = lambda: fn(b"", metadata=metadata, timeout=10)  # noqa: E731
    try:
        call()
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def test_every_rpc_requires_a_valid_key(stack: RunningStack) -> None:
    credentials = dict(BAD_CREDENTIALS)
    credentials["key with a suffix"] = [("authorization", f"Bearer {stack.api_key}x")]
    checked = 0
    failures = []
    for name, descriptor in SERVICES.items():
        with grpc.insecure_channel(stack.stack.addresses[name]) as channel:
            for method in descriptor.methods:
                for label, metadata in credentials.items():
                    code = _call(channel, descriptor.full_name, method, metadata)
                    checked += 1
                    if code != grpc.StatusCode.UNAUTHENTICATED:
                        failures.append(f"{descriptor.name}.{method.name} with {label}: {code.name}")
    record("auth", "RPC x credential cases refused", f"{checked - len(failures)} / {checked}")
    assert not failures, failures
    assert checked == 5 * sum(len(d.methods) for d in SERVICES.values())


def test_a_valid_key_passes_auth_on_every_rpc(stack: RunningStack) -> None:
    """The same walk with the real key never answers UNAUTHENTICATED (it may be
    INVALID_ARGUMENT for an empty request): auth is not refusing everything."""
    metadata = [("authorization", f"Bearer {stack.api_key}")]
    for name, descriptor in SERVICES.items():
        with grpc.insecure_channel(stack.stack.addresses[name]) as channel:
            for method in descriptor.methods:
                code = _call(channel, descriptor.full_name, method, metadata)
                assert code != grpc.StatusCode.UNAUTHENTICATED, f"{descriptor.name}.{method.name}"
                assert code != grpc.StatusCode.INTERNAL, f"{descriptor.name}.{method.name} crashed on an empty request"


def test_secrets_never_reach_logs_or_errors(stack: RunningStack) -> None:
    client = stack.client()
    secret = stack.env["MINIO_SECRET_KEY"]
    messages = []
    for bad in (f"datasets/{stack.api_key}", f"datasets/x/versions/{secret}"):
        try:
            client.get_dataset_version(bad)
        except Exception as e:
            messages.append(str(e))
    try:
        stack.client(api_key=stack.api_key + "-wrong").list_templates()
    except Exception as e:
        messages.append(str(e))
    client.close()
    assert messages and not any(stack.api_key in m or secret in m for m in messages), messages
    text = (Path(stack.stack.env["TEXTFT_HOME"]) / "services.log").read_text()
    assert stack.api_key not in text
    assert secret not in text
    record("secrets", "API key / store secret in logs or errors", "0 / 0")


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"model_config": {"trust_remote_code": True}}, "model_config.trust_remote_code"),
        ({"trainer_config": {"output_dir": "/etc"}}, "trainer_config.output_dir"),
        ({"trainer_config": {"logging_dir": "../../x"}}, "trainer_config.logging_dir"),
        ({"trainer_config": {"deepspeed": "/etc/passwd"}}, "trainer_config.deepspeed"),
        ({"trainer_config": {"resume_from_checkpoint": "/"}}, "trainer_config.resume_from_checkpoint"),
        ({"model_config": {"cache_dir": "/tmp/elsewhere"}}, "model_config.cache_dir"),
        ({"model_config": {"pretrained_model_name_or_path": "/etc"}}, "model_config.pretrained_model_name_or_path"),
        (
            {"model_config": {"pretrained_model_name_or_path": "store://base-models/../../models"}},
            "model_config.pretrained_model_name_or_path",
        ),
        (
            {"tokenizer_config": {"pretrained_model_name_or_path": "../x"}},
            "tokenizer_config.pretrained_model_name_or_path",
        ),
        ({"trainer_config": {"report_to": ["wandb"]}}, "trainer_config.report_to"),
        ({"trainer_config": {"hub_model_id": "me/model"}}, "trainer_config.hub_model_id"),
        ({"model_config": {"token": "hf_x"}}, "model_config.token"),
    ],
)
def test_path_writing_and_remote_code_keys_are_refused(overrides: dict, field: str) -> None:
    from textft_services.trainer import configs
    from textft_services.trainer.templates import TEMPLATES

    with pytest.raises(InvalidArgument) as info:
        configs.validate(configs.merge(TEMPLATES["gpt-neo-125m-lora-text-classification"].defaults(), overrides))
    assert field in [v.field for v in info.value.violations]


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def test_key_less_health_flood_starves_nothing(stack: RunningStack) -> None:
    """A few hundred key-less Health/Watch streams and Checks at the trainer:
    Watch is refused at once (only Check is key-less), probes stay SERVING and
    authorised calls keep answering. The latency ratio is a figure, not a test."""
    from concurrent.futures import ThreadPoolExecutor

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    address = stack.stack.addresses["trainer"]
    metadata = [("authorization", f"Bearer {stack.api_key}")]
    request = trainer_pb2.ListTemplatesRequest()

    def authorised(n: int) -> list[float]:
        import time

        with grpc.insecure_channel(address) as channel:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            took = []
            for _ in range(n):
                began = time.perf_counter()
                assert stub.ListTemplates(request, metadata=metadata, timeout=30).templates
                took.append(time.perf_counter() - began)
            return took

    quiet = authorised(100)
    flood_codes: dict[str, int] = {}
    # Spread over connections: one connection alone is capped at
    # TEXTFT_MAX_CONCURRENT_STREAMS (100) streams, the rest refused by HTTP/2.
    own_connection = [("grpc.use_local_subchannel_pool", 1)]  # else channels to one target share one
    channels = [grpc.insecure_channel(address, options=own_connection) for _ in range(6)]
    try:
        with ThreadPoolExecutor(4) as pool:
            watches, checks = [], []
            for channel in channels:
                health = health_pb2_grpc.HealthStub(channel)
                watches += [health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60) for _ in range(50)]
                checks += [
                    health.Check.future(health_pb2.HealthCheckRequest(service=""), timeout=60) for _ in range(50)
                ]
            during = pool.submit(authorised, 100)
            for watch in watches:
                try:
                    next(watch)
                    code = "OPEN"
                except grpc.RpcError as e:
                    code = e.code().name
                flood_codes[code] = flood_codes.get(code, 0) + 1
            serving = sum(1 for c in checks if c.result().status == health_pb2.HealthCheckResponse.SERVING)
            loaded = during.result()
    finally:
        for channel in channels:
            channel.close()
    assert "OPEN" not in flood_codes, flood_codes  # no key-less stream stayed open
    assert serving == len(checks)  # probes kept answering
    record("key-less flood", "300 Watch streams: refused / left open", f"{300 - flood_codes.get('OPEN', 0)} / 0")
    record("key-less flood", "300 Checks during the flood: SERVING", f"{serving} / 300")
    record(
        "key-less flood",
        "authorised p99 during / without the flood",
        f"{_p99(loaded) * 1000:.1f} / {_p99(quiet) * 1000:.1f} ms ({_p99(loaded) / _p99(quiet):.2f}x)",
    )
