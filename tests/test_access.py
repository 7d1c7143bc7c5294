"""Roles, keys and the audit log (services/common/access.py), without servers:
every RPC the protos define is classified, roles grant what they say, keys
are stored hashed and revocable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from textft.errors import InvalidArgument, NotFound
from textft.v1 import access_pb2, dataset_pb2, inference_pb2, trainer_pb2
from textft_services.common import access, schema
from textft_services.common.access import ROLE, ApiKeys, AuditLog, KeyRing, Permission, Principal
from textft_services.common.config import derive_service_key
from textft_services.common.db import Database
from textft_services.common.interceptors import AUTH_EXEMPT_METHODS

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent
BOOT = "tft_boot_" + "k" * 32


def served_methods() -> set[str]:
    """Every RPC the servers register: textft.v1, the Open Inference Protocol
    (read from its .proto: its stubs clash with tritonclient's in one process),
    health and reflection."""
    methods = {
        f"/{service.full_name}/{method.name}"
        for module in (access_pb2, dataset_pb2, trainer_pb2, inference_pb2, health_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    oip = (ROOT / "protos/textft/oip/v2/open_inference_grpc.proto").read_text()
    methods |= {f"/inference.GRPCInferenceService/{m}" for m in re.findall(r"rpc\s+(\w+)\s*\(", oip)}
    methods |= {f"/grpc.reflection.{v}.ServerReflection/ServerReflectionInfo" for v in ("v1alpha", "v1")}
    return methods


def test_every_served_rpc_is_classified_or_exempt() -> None:
    methods = served_methods()
    unclassified = sorted(methods - set(access.METHOD_PERMISSIONS) - AUTH_EXEMPT_METHODS)
    assert unclassified == [], f"give these a permission in access.METHOD_PERMISSIONS: {unclassified}"
    stale = sorted(set(access.METHOD_PERMISSIONS) - methods)
    assert stale == [], f"no such RPC: {stale}"
    assert not AUTH_EXEMPT_METHODS & set(access.METHOD_PERMISSIONS)


def test_roles_grant_nested_permissions() -> None:
    def may(role: int) -> set[Permission]:
        return {p for p in Permission if Principal("p", "default", role).may(p)}

    assert may(ROLE.ROLE_ADMIN) == set(Permission)
    assert may(ROLE.ROLE_EDITOR) == {Permission.READ, Permission.PREDICT, Permission.WRITE}
    assert may(ROLE.ROLE_PREDICTOR) == {Permission.READ, Permission.PREDICT}
    assert may(ROLE.ROLE_UNSPECIFIED) == set()
    # Deletes and keys are admin's; predictors only read and predict.
    perms = access.METHOD_PERMISSIONS
    assert perms["/textft.v1.DatasetService/DeleteDataset"] is Permission.ADMIN
    assert perms["/textft.v1.TrainerService/DeleteModel"] is Permission.ADMIN
    assert perms["/textft.v1.AccessService/CreateApiKey"] is Permission.ADMIN
    assert perms["/textft.v1.InferenceService/Predict"] is Permission.PREDICT
    assert perms["/textft.v1.DatasetService/ReadRows"] is Permission.READ


def test_configured_keys_must_be_long_and_are_admins() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        KeyRing(("short-key",))
    with pytest.raises(ValueError, match="TEXTFT_API_KEYS"):
        KeyRing(())
    ring = KeyRing((BOOT,))
    principal = ring.resolve(BOOT)
    assert principal is not None and principal.role == ROLE.ROLE_ADMIN and principal.app == schema.DEFAULT_APP
    assert ring.resolve(BOOT + "x") is None and ring.resolve(BOOT[:-1]) is None and ring.resolve("") is None


def test_the_service_key_reads_and_does_nothing_else() -> None:
    service_key = derive_service_key(BOOT)
    ring = KeyRing((BOOT,), service_key=service_key)
    service = ring.resolve(service_key)
    assert service is not None and service.name == "service" and service.role == ROLE.ROLE_PREDICTOR
    assert service.may(Permission.READ) and not service.may(Permission.WRITE) and not service.may(Permission.ADMIN)
    assert ring.resolve(BOOT).role == ROLE.ROLE_ADMIN  # the key it comes from is still the admin's
    with pytest.raises(ValueError, match="TEXTFT_SERVICE_KEY"):
        KeyRing((BOOT,), service_key="short")


@pytest.fixture()
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'textft.db'}")
    database.migrate()
    yield database
    database.close()


def test_created_keys_are_stored_hashed_and_resolve_to_their_role(db: Database) -> None:
    keys = ApiKeys(db)
    key, secret = keys.create("default", "ci-bot", ROLE.ROLE_PREDICTOR, "predictions from CI")
    assert secret.startswith(f"tft_{key.key_id}_") and len(secret) >= access.MIN_KEY_LENGTH
    with db.read() as conn:
        stored = conn.execute(schema.api_keys.select()).one()
    assert secret not in repr(tuple(stored)) and secret.split("_")[-1] not in repr(tuple(stored))
    ring = KeyRing((BOOT,), db)
    principal = ring.resolve(secret)
    assert principal == Principal("ci-bot", "default", ROLE.ROLE_PREDICTOR, key.key_id)
    # Same key id, another secret: refused (the hash is compared, not the id).
    forged = f"tft_{key.key_id}_" + "A" * 43
    assert ring.resolve(forged) is None
    assert [k.principal for k in keys.list("default")] == ["ci-bot"]
    assert keys.list("other-app") == []


def test_revoked_keys_stop_working_once_the_cache_expires(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access, "AUTH_CACHE_SECONDS", 0.0)
    keys = ApiKeys(db)
    key, secret = keys.create("default", "alice", ROLE.ROLE_EDITOR)
    ring = KeyRing((BOOT,), db)
    assert ring.resolve(secret) is not None
    revoked = keys.revoke(key.key_id, "default")
    assert revoked.HasField("revoke_time")
    assert ring.resolve(secret) is None
    assert keys.list("default") == [] and len(keys.list("default", include_revoked=True)) == 1
    with pytest.raises(NotFound):
        keys.revoke(key.key_id, "another-app")  # another app's key does not exist for the caller
    with pytest.raises(NotFound):
        keys.revoke("000000000000", "default")


def test_key_requests_are_checked(db: Database) -> None:
    keys = ApiKeys(db)
    with pytest.raises(InvalidArgument) as err:
        keys.create("default", "", ROLE.ROLE_EDITOR)
    assert err.value.violations[0].field == "principal"
    with pytest.raises(InvalidArgument) as err:
        keys.create("default", "bob", ROLE.ROLE_UNSPECIFIED)
    assert err.value.violations[0].field == "role"


def test_audit_log_pages_newest_first(db: Database) -> None:
    audit = AuditLog(db)
    alice = Principal("alice", "default", ROLE.ROLE_EDITOR)
    for i in range(5):
        audit.record(alice, "/textft.v1.DatasetService/CreateDataset", f"datasets/d{i}", "OK")
    audit.record(Principal("eve", "other", ROLE.ROLE_EDITOR), "/textft.v1.DatasetService/CreateDataset", "x", "OK")
    first, token = audit.list("default", page_size=3)
    second, last = audit.list("default", page_size=3, page_token=token)
    assert [e.resource for e in first + second] == [f"datasets/d{i}" for i in (4, 3, 2, 1, 0)]
    assert token and not last
    with pytest.raises(InvalidArgument):
        audit.list("default", page_token="not-a-token")
