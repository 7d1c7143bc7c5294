"""Who may call what: roles, API keys and the audit log, checked in one place
(the AuthInterceptor in interceptors.py) for every RPC of every service.

Every RPC needs one permission (METHOD_PERMISSIONS, a table a test checks
against every service the protos define, so a new RPC cannot be served
unclassified), and a key's role grants a set of them:

    admin      read, predict, write, admin (deletes, keys, the audit log);
               in the default app also platform (apps)
    editor     read, predict, write (datasets, training, evaluation, loading)
    predictor  read, predict

Keys: the ones configured in TEXTFT_API_KEYS (the local stack's, and a
deployment's bootstrap key) are admins of the default app and live only in
the environment. The services call each other as the read-only principal
`service` (Settings.service_key). Keys created through AccessService look like
`tft_{key_id}_{secret}`; the database keeps the key id and a SHA-256 of the
whole key, never the key. A fast hash is enough here (GitHub and Stripe do the
same): the secret is 32 random bytes, nothing a dictionary could guess. A
resolved key is cached for AUTH_CACHE_SECONDS, so revocation takes effect
within that time and a call costs no query while it is cached.

Apps: every dataset and model belongs to one (names.py), and a key works in
one. check_apps, called by the same interceptor for every request, refuses a
name of another app with the NOT_FOUND a missing resource gets. Admins of the
default app are the platform's (Permission.PLATFORM: creating and deleting
apps); the services' identity alone acts in every app.

Mutating calls (write and admin) by an authenticated caller are recorded in
the audit log with their outcome, refusals included. A failed audit write is
logged and does not fail the call.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Any

import sqlalchemy as sa
from google.protobuf import json_format

from textft.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from textft.v1 import access_pb2

from . import names, schema
from .db import Database
from .protojson import to_dict

log = logging.getLogger("textft.access")
MIN_KEY_LENGTH = 32
SERVICE_PRINCIPAL = "service"
AUTH_CACHE_SECONDS = 5.0
KEY_PREFIX = "tft_"
_KEY_RE = re.compile(r"tft_([a-z0-9]{12})_[A-Za-z0-9_-]{32,}")
_PRINCIPAL_RE = re.compile(r"[A-Za-z0-9._@-]{1,255}")


class Permission(str, Enum):
    READ = "read"
    PREDICT = "predict"
    WRITE = "write"
    ADMIN = "admin"
    # Creating, listing and deleting apps: admins of the default app only (the
    # platform's operators; the keys in TEXTFT_API_KEYS are theirs).
    PLATFORM = "platform"


ROLE = access_pb2.Role
ROLE_NAMES = {ROLE.ROLE_ADMIN: "admin", ROLE.ROLE_EDITOR: "editor", ROLE.ROLE_PREDICTOR: "predictor"}
ROLES_BY_NAME = {name: role for role, name in ROLE_NAMES.items()}  # the database stores the names
ROLE_PERMISSIONS: dict[int, frozenset[Permission]] = {
    ROLE.ROLE_ADMIN: frozenset(Permission),
    ROLE.ROLE_EDITOR: frozenset({Permission.READ, Permission.PREDICT, Permission.WRITE}),
    ROLE.ROLE_PREDICTOR: frozenset({Permission.READ, Permission.PREDICT}),
}
MUTATING = frozenset({Permission.WRITE, Permission.ADMIN, Permission.PLATFORM})


def _methods(service: str, **permissions: Permission) -> dict[str, Permission]:
    return {f"/{service}/{method}": permission for method, permission in permissions.items()}


R, P, W, A, PLATFORM = Permission.READ, Permission.PREDICT, Permission.WRITE, Permission.ADMIN, Permission.PLATFORM
METHOD_PERMISSIONS: dict[str, Permission] = {
    **_methods(
        "textft.v1.DatasetService",
        CreateDataset=W,
        GetDataset=R,
        ListDatasets=R,
        DeleteDataset=A,
        UploadDatasetVersion=W,
        ImportDatasetVersion=W,
        GetDatasetVersion=R,
        ListDatasetVersions=R,
        ReadRows=R,
        GetValidationReport=R,
    ),
    **_methods(
        "textft.v1.TrainerService",
        ListTemplates=R,
        GetTemplate=R,
        CreateModel=W,
        GetModel=R,
        ListModels=R,
        DeleteModel=A,
        CreateModelVersion=W,
        GetModelVersion=R,
        ListModelVersions=R,
        WatchModelVersion=R,
        CancelModelVersion=W,
        EvaluateModelVersion=W,
        GetModelEvaluation=R,
        WatchModelEvaluation=R,
    ),
    **_methods(
        "textft.v1.InferenceService",
        Predict=P,
        PredictStream=P,
        LoadModelVersion=W,
        UnloadModelVersion=W,
        ListLoadedModelVersions=R,
    ),
    **_methods(
        "textft.v1.AccessService",
        CreateApiKey=A,
        ListApiKeys=A,
        RevokeApiKey=A,
        ListAuditEvents=A,
        GetCaller=R,
        CreateApp=PLATFORM,
        GetApp=R,
        ListApps=PLATFORM,
        DeleteApp=PLATFORM,
    ),
    **_methods(
        "inference.GRPCInferenceService",
        ModelReady=R,
        ServerMetadata=R,
        ModelMetadata=R,
        ModelInfer=P,
    ),
    **_methods("grpc.health.v1.Health", Watch=R),
    **_methods("grpc.reflection.v1alpha.ServerReflection", ServerReflectionInfo=R),
    **_methods("grpc.reflection.v1.ServerReflection", ServerReflectionInfo=R),
}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str
    app: str
    role: int
    key_id: str = ""  # empty for keys configured in the environment
    any_app: bool = False  # the services' own identity, which acts for callers of every app

    @property
    def role_name(self) -> str:
        return ROLE_NAMES.get(self.role, "none")

    @property
    def platform_admin(self) -> bool:
        return self.role == ROLE.ROLE_ADMIN and self.app == schema.DEFAULT_APP and not self.any_app

    def may(self, permission: Permission) -> bool:
        if permission is Permission.PLATFORM:
            return self.platform_admin
        return permission in ROLE_PERMISSIONS.get(self.role, frozenset())


# ---- apps: the tenancy policy ----
# Every request names the resources it is about in string fields with these
# names (AIP-122: name, parent, and references such as dataset_version); `app`
# fields hold an app id. They are found in each request type's descriptor,
# nested singular messages (an upload's header) included, so a new RPC is
# covered by its field names, not by a handler remembering to check.
_NAME_FIELDS = frozenset({"name", "parent", "dataset_version", "model_version", "app"})
# The Open Inference Protocol names a model in `name` / `model_name` (a bare id
# is a default-app model); its `version` / `model_version` are version numbers.
_OIP_NAME_FIELDS = frozenset({"name", "model_name"})
# The RPCs in which platform admins may name any app.
APP_MANAGEMENT = frozenset(f"/textft.v1.AccessService/{m}" for m in ("CreateApp", "GetApp", "ListApps", "DeleteApp"))
_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {}


def reference_paths(descriptor: Any, depth: int = 0) -> tuple[tuple[str, ...], ...]:
    """The field paths of a request type that name resources, e.g. ("header", "parent")."""
    cached = _PATHS.get(descriptor.full_name) if depth == 0 else None
    if cached is not None:
        return cached
    fields = _OIP_NAME_FIELDS if descriptor.full_name.startswith("inference.") else _NAME_FIELDS
    paths: list[tuple[str, ...]] = []
    for f in descriptor.fields:
        if f.label == f.LABEL_REPEATED:
            continue
        if f.type == f.TYPE_STRING and f.name in fields:
            paths.append((f.name,))
        elif f.type == f.TYPE_MESSAGE and depth < 2 and not f.message_type.full_name.startswith("google.protobuf."):
            paths += [(f.name, *p) for p in reference_paths(f.message_type, depth + 1)]
    if depth == 0:
        _PATHS[descriptor.full_name] = tuple(paths)
    return tuple(paths)


def referenced_apps(request: Any) -> list[tuple[str, str]]:
    """(the name as written, its app) for every resource the request names."""
    found = []
    for path in reference_paths(request.DESCRIPTOR):
        message = request
        for part in path[:-1]:
            if not message.HasField(part):
                break
            message = getattr(message, part)
        else:
            value = getattr(message, path[-1])
            if path[-1] == "app":
                if value:
                    found.append((f"apps/{value}", value))
            else:
                app = names.app_of(value)
                if app is not None:
                    found.append((value, app))
    return found


def check_apps(principal: Principal, method: str, request: Any) -> None:
    """NOT_FOUND, worded as for a missing resource, when the request names
    anything outside the caller's app: another app's resources do not exist
    for the caller, and no answer tells one that exists there from one that
    does not. Only the services' identity acts in every app, and the platform's
    admins in the app-management RPCs."""
    if principal.any_app or (method in APP_MANAGEMENT and principal.platform_admin):
        return
    for value, app in referenced_apps(request):
        if app != principal.app:
            raise names.not_found(value)


# The caller of the RPC this thread serves (set by the AuthInterceptor).
_caller: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("textft_caller", default=None)


def current_caller() -> Principal | None:
    return _caller.get()


def caller_app() -> str:
    """The app of the RPC's caller; the default app with auth off."""
    caller = _caller.get()
    return caller.app if caller is not None else schema.DEFAULT_APP


def set_caller(principal: Principal | None) -> contextvars.Token[Principal | None]:
    return _caller.set(principal)


def reset_caller(token: contextvars.Token[Principal | None]) -> None:
    _caller.reset(token)


def check_static_keys(keys: tuple[str, ...]) -> None:
    for i, key in enumerate(keys, 1):
        if len(key) < MIN_KEY_LENGTH:
            raise ValueError(
                f"TEXTFT_API_KEYS: key {i} of {len(keys)} is {len(key)} characters; keys must be at least "
                f"{MIN_KEY_LENGTH} (e.g. python -c 'import secrets; print(\"tft_\" + secrets.token_urlsafe(32))')"
            )


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class KeyRing:
    """Resolves a presented key to its principal: the configured keys first
    (compared in constant time, every one of them), then the database's."""

    def __init__(self, static_keys: tuple[str, ...], db: Database | None = None, service_key: str = "") -> None:
        check_static_keys(static_keys)
        self._static = [
            (k.encode(), Principal(f"configured-key-{i}", schema.DEFAULT_APP, ROLE.ROLE_ADMIN))
            for i, k in enumerate(static_keys, 1)
        ]
        if service_key:
            if len(service_key) < MIN_KEY_LENGTH:
                raise ValueError(f"TEXTFT_SERVICE_KEY must be at least {MIN_KEY_LENGTH} characters")
            # The services calling each other: reads only, whatever a user's key may do.
            self._static.append(
                (
                    service_key.encode(),
                    Principal(SERVICE_PRINCIPAL, schema.DEFAULT_APP, ROLE.ROLE_PREDICTOR, any_app=True),
                )
            )
        self._db = db
        self._cache: dict[str, tuple[float, str, Principal | None]] = {}
        self._lock = threading.Lock()
        if not self._static:  # the bootstrap key: without one, nobody could create the others
            raise ValueError("auth is enabled but no API key is configured (TEXTFT_API_KEYS)")

    def resolve(self, token: str) -> Principal | None:
        candidate = token.encode()
        found = None
        for key, principal in self._static:  # no early exit: timing tells nothing
            if hmac.compare_digest(candidate, key):
                found = principal
        if found is not None or self._db is None:
            return found
        match = _KEY_RE.fullmatch(token)
        if match is None:
            return None
        key_id, digest = match.group(1), _hash(token)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key_id)
        if cached is None or cached[0] < now:
            stored_hash, principal = self._lookup(key_id)
            cached = (now + AUTH_CACHE_SECONDS, stored_hash, principal)
            with self._lock:
                if len(self._cache) > 10_000:  # bounded: random key ids cannot grow it without end
                    self._cache.clear()
                self._cache[key_id] = cached
        _, stored_hash, principal = cached
        if principal is None or not hmac.compare_digest(stored_hash, digest):
            return None
        return principal

    def _lookup(self, key_id: str) -> tuple[str, Principal | None]:
        assert self._db is not None
        t = schema.api_keys
        with self._db.read() as conn:
            row = conn.execute(sa.select(t).where(t.c.key_id == key_id)).one_or_none()
        if row is None or row.revoked_at is not None:
            return "", None
        return row.key_hash, Principal(row.principal, row.app, ROLES_BY_NAME.get(row.role, 0), row.key_id)


def _timestamp(seconds: float | None) -> object:
    from google.protobuf import timestamp_pb2

    ts = timestamp_pb2.Timestamp()
    if seconds is not None:
        ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _key_pb(row: sa.Row) -> access_pb2.ApiKey:
    key = access_pb2.ApiKey(
        key_id=row.key_id,
        app=row.app,
        principal=row.principal,
        role=ROLES_BY_NAME.get(row.role, 0),
        description=row.description,
        create_time=_timestamp(row.created_at),
    )
    if row.revoked_at is not None:
        key.revoke_time.CopyFrom(_timestamp(row.revoked_at))
    return key


class ApiKeys:
    """Keys in the database: created with a secret shown once, listed, revoked."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, app: str, principal: str, role: int, description: str = "") -> tuple[access_pb2.ApiKey, str]:
        if not _PRINCIPAL_RE.fullmatch(principal):
            raise InvalidArgument.for_field("principal", "required: 1 to 255 of A-Z a-z 0-9 . _ @ -")
        if role not in ROLE_NAMES:
            raise InvalidArgument.for_field("role", "must be ROLE_ADMIN, ROLE_EDITOR or ROLE_PREDICTOR")
        if len(description) > 1000:
            raise InvalidArgument.for_field("description", f"at most 1000 characters, got {len(description)}")
        key_id = secrets.token_hex(6)
        token = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        t = schema.api_keys
        with self.db.write() as conn:
            conn.execute(
                t.insert().values(
                    key_id=key_id,
                    app=app,
                    principal=principal,
                    role=ROLE_NAMES[role],
                    key_hash=_hash(token),
                    description=description,
                    created_at=time.time(),
                )
            )
            row = conn.execute(sa.select(t).where(t.c.key_id == key_id)).one()
        return _key_pb(row), token

    def list(self, app: str, include_revoked: bool = False) -> list[access_pb2.ApiKey]:
        t = schema.api_keys
        query = sa.select(t).where(t.c.app == app).order_by(t.c.created_at.desc(), t.c.key_id)
        if not include_revoked:
            query = query.where(t.c.revoked_at.is_(None))
        with self.db.read() as conn:
            return [_key_pb(row) for row in conn.execute(query)]

    def revoke(self, key_id: str, app: str) -> access_pb2.ApiKey:
        t = schema.api_keys
        where = (t.c.key_id == key_id) & (t.c.app == app)  # another app's key is NOT_FOUND, like a missing one
        with self.db.write() as conn:
            conn.execute(t.update().where(where & t.c.revoked_at.is_(None)).values(revoked_at=time.time()))
            row = conn.execute(sa.select(t).where(where)).one_or_none()
        if row is None:
            raise NotFound(f"API key {key_id[:64]!r} not found", reason="API_KEY_NOT_FOUND")
        return _key_pb(row)


def _app_pb(row: sa.Row) -> access_pb2.App:
    return json_format.ParseDict(json.loads(row.record), access_pb2.App(), ignore_unknown_fields=True)


class Apps:
    """The apps in the database; `record` holds the App (proto JSON). The
    default app is always there: its row is written when first asked for."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, app_id: str, description: str = "") -> access_pb2.App:
        names.check_id(app_id, "app_id")
        if len(description) > 1000:
            raise InvalidArgument.for_field("description", f"at most 1000 characters, got {len(description)}")
        created = time.time()
        app = access_pb2.App(name=str(names.AppName(app_id)), description=description, create_time=_timestamp(created))
        row = dict(app_id=app_id, uid=uuid.uuid4().hex, record=json.dumps(to_dict(app)), created_at=created)
        try:
            with self.db.write() as conn:
                conn.execute(schema.apps.insert().values(**row))
        except sa.exc.IntegrityError:
            raise AlreadyExists(f"app {app.name} already exists", reason="APP_EXISTS") from None
        return app

    def get(self, app_id: str) -> access_pb2.App:
        row = self._row(app_id)
        if row is None and app_id == schema.DEFAULT_APP:
            self._create_default()
            row = self._row(app_id)
        if row is None:
            raise names.not_found(str(names.AppName(app_id)))
        return _app_pb(row)

    def list(self) -> list[access_pb2.App]:
        self.get(schema.DEFAULT_APP)
        t = schema.apps
        with self.db.read() as conn:
            return [_app_pb(row) for row in conn.execute(sa.select(t).order_by(t.c.app_id))]

    def delete(self, app_id: str) -> None:
        """Removes the app's row and revokes its keys; the caller has checked it is empty."""
        if app_id == schema.DEFAULT_APP:
            raise FailedPrecondition("the default app cannot be deleted", reason="DEFAULT_APP")
        self.get(app_id)
        keys = schema.api_keys
        with self.db.write() as conn:
            conn.execute(schema.apps.delete().where(schema.apps.c.app_id == app_id))
            conn.execute(
                keys.update().where((keys.c.app == app_id) & keys.c.revoked_at.is_(None)).values(revoked_at=time.time())
            )

    def _row(self, app_id: str) -> sa.Row | None:
        with self.db.read() as conn:
            return conn.execute(sa.select(schema.apps).where(schema.apps.c.app_id == app_id)).one_or_none()

    def _create_default(self) -> None:
        try:
            self.create(schema.DEFAULT_APP, "the platform's own app: names without apps/ are in it")
        except AlreadyExists:  # another replica wrote it first
            pass


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, principal: Principal, method: str, resource: str, outcome: str) -> None:
        try:
            with self.db.write() as conn:
                conn.execute(
                    schema.audit_log.insert().values(
                        at=time.time(),
                        principal=principal.name,
                        app=principal.app,
                        method=method,
                        resource=resource[:1024],
                        outcome=outcome,
                    )
                )
        except Exception:
            log.exception("audit: could not record %s by %s (%s)", method, principal.name, outcome)

    def list(self, app: str, page_size: int = 0, page_token: str = "") -> tuple[list[access_pb2.AuditEvent], str]:
        if not 0 <= page_size <= 1000:
            raise InvalidArgument.for_field("page_size", f"must be between 0 and 1000, got {page_size}")
        size = page_size or 100
        t = schema.audit_log
        query = sa.select(t).where(t.c.app == app).order_by(t.c.pk.desc()).limit(size + 1)
        if page_token:
            if not page_token.isdigit():
                raise InvalidArgument.for_field("page_token", "not a token from an earlier ListAuditEvents")
            query = query.where(t.c.pk < int(page_token))
        with self.db.read() as conn:
            rows = list(conn.execute(query))
        more = len(rows) > size
        rows = rows[:size]
        events = [
            access_pb2.AuditEvent(
                time=_timestamp(row.at),
                principal=row.principal,
                app=row.app,
                method=row.method,
                resource=row.resource,
                outcome=row.outcome,
            )
            for row in rows
        ]
        return events, (str(rows[-1].pk) if more and rows else "")
