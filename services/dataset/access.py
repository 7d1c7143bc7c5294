"""AccessService: API keys and the audit log (services/common/access.py holds
the rules; this is the thin gRPC layer). Served by the dataset service."""

from __future__ import annotations

import grpc

from textft.errors import PermissionDenied
from textft.v1 import access_pb2, access_pb2_grpc

from ..common import schema
from ..common.access import ROLE, ApiKeys, AuditLog, Principal, current_caller
from ..common.db import Database

# With auth off (TEXTFT_AUTH=off) every caller is this one.
ANONYMOUS = Principal("anonymous", schema.DEFAULT_APP, ROLE.ROLE_ADMIN)


def _app(requested: str, caller: Principal) -> str:
    """The app a request is about: the caller's own; another is refused."""
    if requested and requested != caller.app:
        raise PermissionDenied(
            f"the key of {caller.name} works in app {caller.app}, not {requested[:63]!r}",
            reason="APP_NOT_ALLOWED",
        )
    return caller.app


class AccessServicer(access_pb2_grpc.AccessServiceServicer):
    def __init__(self, db: Database) -> None:
        self.keys = ApiKeys(db)
        self.audit = AuditLog(db)

    def CreateApiKey(
        self, request: access_pb2.CreateApiKeyRequest, context: grpc.ServicerContext
    ) -> access_pb2.CreateApiKeyResponse:
        caller = current_caller() or ANONYMOUS
        key, secret = self.keys.create(_app(request.app, caller), request.principal, request.role, request.description)
        return access_pb2.CreateApiKeyResponse(api_key=key, secret=secret)

    def ListApiKeys(
        self, request: access_pb2.ListApiKeysRequest, context: grpc.ServicerContext
    ) -> access_pb2.ListApiKeysResponse:
        caller = current_caller() or ANONYMOUS
        return access_pb2.ListApiKeysResponse(
            api_keys=self.keys.list(_app(request.app, caller), request.include_revoked)
        )

    def RevokeApiKey(
        self, request: access_pb2.RevokeApiKeyRequest, context: grpc.ServicerContext
    ) -> access_pb2.RevokeApiKeyResponse:
        caller = current_caller() or ANONYMOUS
        return access_pb2.RevokeApiKeyResponse(api_key=self.keys.revoke(request.key_id, caller.app))

    def ListAuditEvents(
        self, request: access_pb2.ListAuditEventsRequest, context: grpc.ServicerContext
    ) -> access_pb2.ListAuditEventsResponse:
        caller = current_caller() or ANONYMOUS
        events, token = self.audit.list(_app(request.app, caller), request.page_size, request.page_token)
        return access_pb2.ListAuditEventsResponse(events=events, next_page_token=token)

    def GetCaller(
        self, request: access_pb2.GetCallerRequest, context: grpc.ServicerContext
    ) -> access_pb2.GetCallerResponse:
        caller = current_caller() or ANONYMOUS
        return access_pb2.GetCallerResponse(
            principal=caller.name, app=caller.app, role=caller.role, key_id=caller.key_id
        )
