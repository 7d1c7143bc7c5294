"""Roles on the running stack: every RPC of every service called with an
admin's, an editor's and a predictor's key, refused exactly when the role
lacks the permission the RPC needs; mutating calls are in the audit log;
revoked keys stop working on every service."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2
from reliability import record
from support import wait_for

from textft.errors import PermissionDenied, Unauthenticated
from textft.v1 import access_pb2, dataset_pb2, inference_pb2, trainer_pb2
from textft_services.common import access

pytestmark = pytest.mark.reliability
DESCRIPTORS = (access_pb2, dataset_pb2, trainer_pb2, inference_pb2, health_pb2)
# Where each service is served (health and reflection: every server; one is enough).
HOSTS = {
    "textft.v1.AccessService": "dataset",
    "textft.v1.DatasetService": "dataset",
    "textft.v1.TrainerService": "trainer",
    "textft.v1.InferenceService": "inference",
    "inference.GRPCInferenceService": "inference",
    "grpc.health.v1.Health": "trainer",
    "grpc.reflection.v1alpha.ServerReflection": "trainer",
    "grpc.reflection.v1.ServerReflection": "trainer",
}


def _kinds() -> dict[str, tuple[bool, bool]]:
    kinds = {
        f"/{service.full_name}/{m.name}": (m.client_streaming, m.server_streaming)
        for module in DESCRIPTORS
        for service in module.DESCRIPTOR.services_by_name.values()
        for m in service.methods
    }
    for version in ("v1alpha", "v1"):
        kinds[f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"] = (True, True)
    return kinds  # the Open Inference Protocol's RPCs, not listed, are all unary


def call_raw(channel: grpc.Channel, method: str, kind: tuple[bool, bool], key: str) -> grpc.StatusCode:
    """Calls method with an empty request (raw bytes); the status it ends with,
    OK for a stream that answered at least once."""
    metadata = [("authorization", f"Bearer {key}")]
    client_streaming, server_streaming = kind
    try:
        if client_streaming and server_streaming:
            responses = channel.stream_stream(method)(iter([b""]), metadata=metadata, timeout=10)
        elif server_streaming:
            responses = channel.unary_stream(method)(b"", metadata=metadata, timeout=10)
        elif client_streaming:
            channel.stream_unary(method)(iter([]), metadata=metadata, timeout=10)
            return grpc.StatusCode.OK
        else:
            channel.unary_unary(method)(b"", metadata=metadata, timeout=10)
            return grpc.StatusCode.OK
        next(iter(responses))
        responses.cancel()
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


@pytest.fixture(scope="module")
def role_keys(stack) -> Iterator[dict[str, str]]:
    with stack.client() as admin:
        keys = {role: admin.create_api_key(f"{role}-tester", role)[1] for role in ("admin", "editor", "predictor")}
        yield keys
        for key in admin.list_api_keys():
            if key.principal.endswith("-tester"):
                admin.revoke_api_key(key.key_id)


def test_every_rpc_is_refused_exactly_when_the_role_lacks_its_permission(stack, role_keys) -> None:
    kinds = _kinds()
    addresses = stack.stack.addresses
    channels = {name: grpc.insecure_channel(address) for name, address in addresses.items()}
    refused = should_refuse = allowed = should_allow = 0
    wrong = []
    try:
        for role, key in role_keys.items():
            principal = access.Principal("x", "default", access.ROLES_BY_NAME[role])
            for method, permission in sorted(access.METHOD_PERMISSIONS.items()):
                service = method.split("/")[1]
                code = call_raw(channels[HOSTS[service]], method, kinds.get(method, (False, False)), key)
                if principal.may(permission):
                    should_allow += 1
                    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                        wrong.append(f"{role} {method}: {code.name}, expected to be allowed")
                    else:
                        allowed += 1
                else:
                    should_refuse += 1
                    if code == grpc.StatusCode.PERMISSION_DENIED:
                        refused += 1
                    else:
                        wrong.append(f"{role} {method}: {code.name}, expected PERMISSION_DENIED")
    finally:
        for channel in channels.values():
            channel.close()
    record(
        "security",
        "RPCs x roles (admin, editor, predictor): refused as the role requires",
        f"{refused}/{should_refuse}",
    )
    record("security", "RPCs x roles: allowed as the role permits", f"{allowed}/{should_allow}")
    assert wrong == []
    assert should_refuse > 20 and should_allow > 60


def test_roles_through_the_sdk_and_the_audit_log(stack, role_keys) -> None:
    with stack.client(role_keys["predictor"]) as predictor, stack.client(role_keys["editor"]) as editor:
        assert predictor.whoami().role == access_pb2.ROLE_PREDICTOR
        predictor.list_datasets()  # reads are a predictor's
        with pytest.raises(PermissionDenied) as err:
            predictor.create_dataset("from-a-predictor")
        assert "predictor" in err.value.message and "write" in err.value.message
        editor.create_dataset("roles-audit")
        with pytest.raises(PermissionDenied):
            editor.call(editor.datasets.DeleteDataset, dataset_pb2.DeleteDatasetRequest(name="datasets/roles-audit"))
        with pytest.raises(PermissionDenied):
            editor.create_api_key("mallory", "admin")
    with stack.client() as admin:
        events = admin.audit_events(page_size=50).events
        seen = {(e.principal, e.method.rsplit("/", 1)[1], e.outcome) for e in events}
        assert ("editor-tester", "CreateDataset", "OK") in seen
        assert ("editor-tester", "DeleteDataset", "PERMISSION_DENIED") in seen
        assert ("predictor-tester", "CreateDataset", "PERMISSION_DENIED") in seen
        assert ("editor-tester", "CreateApiKey", "PERMISSION_DENIED") in seen
        # Reads are not audited.
        assert not any(e.method.endswith(("/ListDatasets", "/GetCaller")) for e in events)
        created = next(e for e in events if e.principal == "editor-tester" and e.method.endswith("/CreateDataset"))
        assert created.resource == "" or created.resource.startswith("datasets")
        admin.call(admin.datasets.DeleteDataset, dataset_pb2.DeleteDatasetRequest(name="datasets/roles-audit"))


def test_a_revoked_key_is_refused_by_every_service(stack) -> None:
    with stack.client() as admin:
        key, secret = admin.create_api_key("short-lived", "editor")
        with stack.client(secret) as holder:
            holder.list_datasets()
            holder.list_models()
            holder.list_loaded_model_versions()
            admin.revoke_api_key(key.key_id)

            def refused_everywhere() -> bool:
                calls = (holder.list_datasets, holder.list_models, holder.list_loaded_model_versions)
                for call in calls:
                    try:
                        call()
                        return False
                    except Unauthenticated:
                        pass
                return True

            # Each service caches a resolved key for AUTH_CACHE_SECONDS.
            wait_for(refused_everywhere, timeout=access.AUTH_CACHE_SECONDS + 10, what="the revoked key refused")
        assert key.key_id not in {k.key_id for k in admin.list_api_keys()}
