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


# ---- apps: the tenancy policy and the apps table ----
SERVICE = Principal(access.SERVICE_PRINCIPAL, "default", ROLE.ROLE_PREDICTOR, any_app=True)
PLATFORM_ADMIN = Principal("root", "default", ROLE.ROLE_ADMIN)
B_ADMIN = Principal("b-admin", "team-b", ROLE.ROLE_ADMIN)


def _request_types() -> dict[str, object]:
    """Every textft.v1 and served Open Inference Protocol RPC's request
    descriptor. The OIP's come from Triton's client stubs, not textft.oip: both
    define the proto package `inference`, one process can hold only one, and
    test_oip uses Triton's (which have more RPCs than textft serves)."""
    from tritonclient.grpc import service_pb2 as oip_pb2

    types = {
        f"/{service.full_name}/{m.name}": m.input_type
        for module in (access_pb2, dataset_pb2, trainer_pb2, inference_pb2, oip_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for m in service.methods
    }
    return {
        method: t
        for method, t in types.items()
        if not method.startswith("/inference.") or method in access.METHOD_PERMISSIONS
    }


def test_the_policy_reads_every_field_that_names_a_resource() -> None:
    """Derived from the descriptors: a request field that looks like a resource
    reference (name, parent, *_version, app, model_name) and is not read by the
    policy fails here, so a new RPC cannot slip past it."""
    looks_like_a_name = re.compile(r"name|parent|app|model_name|dataset_version|model_version")
    skipped = []
    for method, descriptor in _request_types().items():
        read = {path[-1] for path in access.reference_paths(descriptor)}
        oip = method.startswith("/inference.")
        for field in descriptor.fields:
            if field.type != field.TYPE_STRING or field.label == field.LABEL_REPEATED:
                continue
            version_number = oip and field.name == "model_version"  # OIP: a version number, not a name
            if looks_like_a_name.fullmatch(field.name) and field.name not in read and not version_number:
                skipped.append(f"{method}.{field.name}")
    assert skipped == []
    upload = access.reference_paths(dataset_pb2.UploadDatasetVersionRequest.DESCRIPTOR)
    assert ("header", "parent") in upload  # nested in the first message of the stream


def test_another_apps_names_are_not_found_worded_as_a_missing_resource() -> None:
    method = "/textft.v1.DatasetService/GetDatasetVersion"
    request = dataset_pb2.GetDatasetVersionRequest(name="apps/team-a/datasets/d/versions/v1")
    with pytest.raises(NotFound) as err:
        access.check_apps(B_ADMIN, method, request)
    assert err.value.message == "dataset version apps/team-a/datasets/d/versions/v1 not found"
    assert err.value.reason == "DATASET_VERSION_NOT_FOUND"
    access.check_apps(B_ADMIN, method, dataset_pb2.GetDatasetVersionRequest(name="apps/team-b/datasets/d/versions/v1"))
    access.check_apps(SERVICE, method, request)  # the services act in every app
    with pytest.raises(NotFound):  # short names are the default app's
        access.check_apps(B_ADMIN, method, dataset_pb2.GetDatasetVersionRequest(name="datasets/d/versions/v1"))
    with pytest.raises(NotFound):  # a platform admin outside the app-management RPCs is a caller like any other
        access.check_apps(PLATFORM_ADMIN, method, request)
    access.check_apps(PLATFORM_ADMIN, "/textft.v1.AccessService/GetApp", access_pb2.GetAppRequest(name="apps/team-a"))
    with pytest.raises(NotFound) as err:
        access.check_apps(B_ADMIN, "/textft.v1.AccessService/GetApp", access_pb2.GetAppRequest(name="apps/team-a"))
    assert err.value.reason == "APP_NOT_FOUND"
    # Cross-references: a version of B's model trained on A's data.
    train = trainer_pb2.CreateModelVersionRequest(
        parent="apps/team-b/models/m", dataset_version="apps/team-a/datasets/d/versions/v1"
    )
    with pytest.raises(NotFound):
        access.check_apps(B_ADMIN, "/textft.v1.TrainerService/CreateModelVersion", train)
    with pytest.raises(NotFound) as err:
        access.check_apps(B_ADMIN, "/textft.v1.AccessService/ListApiKeys", access_pb2.ListApiKeysRequest(app="team-a"))
    assert err.value.message == "app apps/team-a not found"
    upload = dataset_pb2.UploadDatasetVersionRequest(header=dataset_pb2.UploadHeader(parent="apps/team-a/datasets/d"))
    with pytest.raises(NotFound):
        access.check_apps(B_ADMIN, "/textft.v1.DatasetService/UploadDatasetVersion", upload)
    access.check_apps(
        B_ADMIN, "/textft.v1.DatasetService/UploadDatasetVersion", dataset_pb2.UploadDatasetVersionRequest(chunk=b"x")
    )


def test_platform_admins_are_the_default_apps_admins() -> None:
    assert PLATFORM_ADMIN.may(Permission.PLATFORM)
    assert not B_ADMIN.may(Permission.PLATFORM) and not SERVICE.may(Permission.PLATFORM)
    assert not Principal("e", "default", ROLE.ROLE_EDITOR).may(Permission.PLATFORM)
    perms = access.METHOD_PERMISSIONS
    assert {perms[f"/textft.v1.AccessService/{m}"] for m in ("CreateApp", "ListApps", "DeleteApp")} == {
        Permission.PLATFORM
    }


def test_apps_are_created_listed_and_deleted_with_their_keys(db: Database) -> None:
    apps, keys = access.Apps(db), ApiKeys(db)
    created = apps.create("team-a", "the A team")
    assert created.name == "apps/team-a" and created.description == "the A team"
    assert [a.name for a in apps.list()] == ["apps/default", "apps/team-a"]  # the default app is always there
    assert apps.get("team-a") == created
    with pytest.raises(access.AlreadyExists):
        apps.create("team-a")
    with pytest.raises(InvalidArgument):
        apps.create("Team A")
    _, secret = keys.create("team-a", "alice", ROLE.ROLE_ADMIN)
    apps.delete("team-a")
    assert keys.list("team-a") == [] and KeyRing((BOOT,), db).resolve(secret) is None
    with pytest.raises(NotFound) as err:
        apps.get("team-a")
    assert err.value.reason == "APP_NOT_FOUND"
    with pytest.raises(access.FailedPrecondition):
        apps.delete("default")
