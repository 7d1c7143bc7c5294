"""Server interceptors shared by every service: API keys and roles (access.py), and the one place
where domain errors become gRPC statuses (KServe's habit). Unexpected errors
become INTERNAL with a reference id; the traceback goes to the log only."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc

from textft.errors import FieldViolation, TextftError

from .access import METHOD_PERMISSIONS, MUTATING, AuditLog, KeyRing, Principal, check_apps, reset_caller, set_caller

log = logging.getLogger("textft.rpc")

# The whole key-less surface: the unary probes of Kubernetes, load balancers
# and Open Inference Protocol gateways, cheap reads that hold nothing open.
# Health/Watch holds a stream, so it needs a key like everything else:
# key-less streams must not be able to pile up.
AUTH_EXEMPT_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
    }
)
# Library servicers with their own error handling, passed through as they are
# (wrapping a handler drops what gRPC reads off its method, such as
# grpcio-health's experimental_non_blocking).
UNWRAPPED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _wrap_handler(handler: grpc.RpcMethodHandler, wrap: Callable[[Any, bool], Any]) -> grpc.RpcMethodHandler:
    """Rebuilds a method handler with its behaviour wrapped, keeping its kind."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary, False), handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap(handler.unary_stream, True), handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrap(handler.stream_unary, False), handler.request_deserializer, handler.response_serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        wrap(handler.stream_stream, True), handler.request_deserializer, handler.response_serializer
    )


def abort_with(context: grpc.ServicerContext, error: TextftError) -> None:
    context.abort_with_status(error.to_grpc_status())


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps TextftError to its status with rich details; anything else to INTERNAL."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = [s for s in secrets if s]

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _handle(self, method: str, context: grpc.ServicerContext, exc: BaseException) -> None:
        if isinstance(exc, TextftError):
            exc.message = self._scrub(exc.message)
            # Field descriptions and metadata echo user input too: scrub them all.
            exc.violations = [FieldViolation(self._scrub(v.field), self._scrub(v.description)) for v in exc.violations]
            exc.metadata = {k: self._scrub(v) for k, v in exc.metadata.items()}
            log.info("%s -> %s: %s", method, exc.code.name, exc.message)
            abort_with(context, exc)
        code = context.code() if hasattr(context, "code") else None
        if isinstance(exc, NotImplementedError) and code == grpc.StatusCode.UNIMPLEMENTED:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented in this release")
        if code is not None and code != grpc.StatusCode.OK:
            raise exc  # the handler aborted on purpose
        ref = uuid.uuid4().hex[:12]
        log.exception("%s failed (ref %s)", method, ref)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error (ref {ref}); the server log has the details")

    def intercept_service(self, continuation: Any, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(UNWRAPPED_PREFIXES):
            return handler

        def wrap(behaviour: Any, streaming: bool) -> Any:
            if streaming:

                def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                    try:
                        yield from behaviour(request, context)
                    except Exception as exc:
                        self._handle(method, context, exc)

                return stream

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return behaviour(request, context)
                except Exception as exc:
                    self._handle(method, context, exc)

            return unary

        return _wrap_handler(handler, wrap)


def _resource(request: Any) -> str:
    """The resource a request names, for the audit log."""
    for field in ("name", "parent", "model_version"):
        value = getattr(request, field, None)
        if isinstance(value, str) and value:
            return value
    return ""


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks `authorization: Bearer <key>`, then the key's role against the
    permission the method needs (access.METHOD_PERMISSIONS), and records
    mutating calls in the audit log. A method missing from the table is
    refused: a new RPC is served only once it is classified."""

    def __init__(self, keys: KeyRing, audit: AuditLog | None = None) -> None:
        self._keys = keys
        self._audit = audit

    def intercept_service(self, continuation: Any, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        if method in AUTH_EXEMPT_METHODS:
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        header = metadata.get("authorization", "")
        scheme, _, token = header.partition(" ")
        principal = self._keys.resolve(token.strip()) if scheme.lower() == "bearer" and token else None
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if principal is None:
            message = "missing API key: send 'authorization: Bearer <key>'" if not header else "invalid API key"
            return _deny(handler, grpc.StatusCode.UNAUTHENTICATED, message)
        permission = METHOD_PERMISSIONS.get(method)
        mutating = permission is None or permission in MUTATING
        if permission is None or not principal.may(permission):
            needed = permission.value if permission else "a permission this release does not define"
            message = (
                f"the key of {principal.name} has role {principal.role_name} in app {principal.app}; "
                f"{method} needs {needed} (roles: admin > editor (write) > predictor (read, predict))"
            )
            if self._audit is not None and mutating:
                self._audit.record(principal, method, "", grpc.StatusCode.PERMISSION_DENIED.name)
            return _deny(handler, grpc.StatusCode.PERMISSION_DENIED, message)
        audit = self._audit if mutating else None
        requests_stream = handler.request_streaming

        def admit(request: Any, context: grpc.ServicerContext) -> Any:
            """The request, checked against the caller's app (access.check_apps);
            a stream of requests is checked message by message as it is read."""
            if requests_stream:
                return _checked_stream(principal, method, request)
            try:
                check_apps(principal, method, request)
            except TextftError as e:
                abort_with(context, e)
            return request

        def wrap(behaviour: Any, streaming: bool) -> Any:
            if streaming:

                def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                    token = set_caller(principal)
                    try:
                        yield from behaviour(admit(request, context), context)
                    finally:
                        reset_caller(token)

                return stream

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                token = set_caller(principal)
                outcome = "OK"
                try:
                    return behaviour(admit(request, context), context)
                except BaseException:
                    code = context.code() if hasattr(context, "code") else None
                    outcome = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
                    raise
                finally:
                    reset_caller(token)
                    if audit is not None:
                        resource = "" if isinstance(request, Iterator) else _resource(request)
                        audit.record(principal, method, resource, outcome)

            return unary

        return _wrap_handler(handler, wrap)


def _checked_stream(principal: Principal, method: str, requests: Iterator[Any]) -> Iterator[Any]:
    # Raised inside the handler, so the ErrorInterceptor maps it like the handler's own NOT_FOUND.
    for request in requests:
        check_apps(principal, method, request)
        yield request


def _deny(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    def wrap(_behaviour: Any, _streaming: bool) -> Any:
        def deny(_request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(code, message)

        return deny

    return _wrap_handler(handler, wrap)
