"""AccessService: apps, API keys and the audit log (services/common/access.py
holds the rules; this is the thin gRPC layer). Served by the dataset service,
which holds the store an app's resources live in.

Which app a request may name is decided before it gets here, by the access
policy (access.check_apps): an `app` field or name outside the caller's app
has already been answered NOT_FOUND."""

from __future__ import annotations

import grpc
import sqlalchemy as sa

from textft.errors import FailedPrecondition
from textft.v1 import access_pb2, access_pb2_grpc

from ..common import schema
from ..common.access import ROLE, ApiKeys, Apps, AuditLog, Principal, current_caller
from ..common.db import Database
from ..common.names import app_prefix, parse_app
from ..common.store import ObjectStore

# With auth off (TEXTFT_AUTH=off) every caller is this one.
ANONYMOUS = Principal("anonymous", schema.DEFAULT_APP, ROLE.ROLE_ADMIN)


def _caller() -> Principal:
    return current_caller() or ANONYMOUS


class AccessServicer(access_pb2_grpc.AccessServiceServicer):
    def __init__(self, db: Database, store: ObjectStore) -> None:
        self.keys = ApiKeys(db)
        self.audit = AuditLog(db)
        self.apps = Apps(db)
        self.store = store
        self.db = db

    def _has_records(self, app: str) -> bool:
        """Datasets and models are rows (an empty one has no object in the store)."""
        with self.db.read() as conn:
            for table in (schema.datasets, schema.models):
                if conn.execute(sa.select(table.c.name).where(table.c.app == app).limit(1)).first() is not None:
                    return True
        return False

    def CreateApiKey(
        self, request: access_pb2.CreateApiKeyRequest, context: grpc.ServicerContext
    ) -> access_pb2.CreateApiKeyResponse:
        app = request.app or _caller().app
        key, secret = self.keys.create(app, request.principal, request.role, request.description)
        return access_pb2.CreateApiKeyResponse(api_key=key, secret=secret)

    def ListApiKeys(
        self, request: access_pb2.ListApiKeysRequest, context: grpc.ServicerContext
    ) -> access_pb2.ListApiKeysResponse:
        app = request.app or _caller().app
        return access_pb2.ListApiKeysResponse(api_keys=self.keys.list(app, request.include_revoked))

    def RevokeApiKey(
        self, request: access_pb2.RevokeApiKeyRequest, context: grpc.ServicerContext
    ) -> access_pb2.RevokeApiKeyResponse:
        return access_pb2.RevokeApiKeyResponse(api_key=self.keys.revoke(request.key_id, _caller().app))

    def ListAuditEvents(
        self, request: access_pb2.ListAuditEventsRequest, context: grpc.ServicerContext
    ) -> access_pb2.ListAuditEventsResponse:
        app = request.app or _caller().app
        events, token = self.audit.list(app, request.page_size, request.page_token)
        return access_pb2.ListAuditEventsResponse(events=events, next_page_token=token)

    def GetCaller(
        self, request: access_pb2.GetCallerRequest, context: grpc.ServicerContext
    ) -> access_pb2.GetCallerResponse:
        caller = _caller()
        return access_pb2.GetCallerResponse(
            principal=caller.name, app=caller.app, role=caller.role, key_id=caller.key_id
        )

    def CreateApp(
        self, request: access_pb2.CreateAppRequest, context: grpc.ServicerContext
    ) -> access_pb2.CreateAppResponse:
        app = self.apps.create(request.app_id, request.description)
        response = access_pb2.CreateAppResponse(app=app)
        if request.admin_principal:
            key, secret = self.keys.create(request.app_id, request.admin_principal, ROLE.ROLE_ADMIN, "first admin")
            response.admin_key.CopyFrom(key)
            response.admin_secret = secret
        return response

    def GetApp(self, request: access_pb2.GetAppRequest, context: grpc.ServicerContext) -> access_pb2.GetAppResponse:
        return access_pb2.GetAppResponse(app=self.apps.get(parse_app(request.name).app))

    def ListApps(
        self, request: access_pb2.ListAppsRequest, context: grpc.ServicerContext
    ) -> access_pb2.ListAppsResponse:
        return access_pb2.ListAppsResponse(apps=self.apps.list())

    def DeleteApp(
        self, request: access_pb2.DeleteAppRequest, context: grpc.ServicerContext
    ) -> access_pb2.DeleteAppResponse:
        app = parse_app(request.name).app
        self.apps.get(app)
        if app != schema.DEFAULT_APP and (self._has_records(app) or next(iter(self.store.list(app_prefix(app))), None)):
            raise FailedPrecondition(
                f"app apps/{app} still holds objects (datasets, models or imports): delete them first",
                reason="APP_NOT_EMPTY",
            )
        self.apps.delete(app)
        return access_pb2.DeleteAppResponse()
