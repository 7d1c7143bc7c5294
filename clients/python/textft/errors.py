"""One exception hierarchy for textft, shared by the SDK (raised from gRPC
statuses) and the services (raised by domain code, mapped to statuses by an
interceptor). Each class carries its gRPC status code."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "textft.dev"


@dataclass(frozen=True)
class FieldViolation:
    """A bad request field: `field` is a path such as `trainer_config.learning_rate`."""

    field: str
    description: str


@dataclass(eq=False)
class TextftError(Exception):
    """Base of every textft error. `reason` is a machine-readable UPPER_SNAKE code."""

    message: str
    reason: str = ""
    violations: list[FieldViolation] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    code = grpc.StatusCode.INTERNAL
    retryable = False

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        text = self.message
        if self.violations:
            text += " [" + "; ".join(f"{v.field}: {v.description}" for v in self.violations) + "]"
        return text

    # -- rich status (google.rpc.Status with BadRequest / ErrorInfo details) --
    def to_status_proto(self) -> status_pb2.Status:
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in self.violations
                ]
            )
            status.details.add().Pack(bad)
        if self.reason or self.metadata:
            info = error_details_pb2.ErrorInfo(
                reason=self.reason or self.code.name, domain=ERROR_DOMAIN, metadata=self.metadata
            )
            status.details.add().Pack(info)
        return status

    def to_grpc_status(self) -> grpc.Status:
        return rpc_status.to_status(self.to_status_proto())


class InvalidArgument(TextftError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    @classmethod
    def for_field(cls, field_path: str, description: str, reason: str = "") -> InvalidArgument:
        return cls(
            f"invalid {field_path}: {description}",
            reason=reason,
            violations=[FieldViolation(field_path, description)],
        )


class NotFound(TextftError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(TextftError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(TextftError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRange(TextftError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unauthenticated(TextftError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(TextftError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(TextftError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True


class Unavailable(TextftError):
    code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class DeadlineExceeded(TextftError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    retryable = True


class Cancelled(TextftError):
    code = grpc.StatusCode.CANCELLED


class Unimplemented(TextftError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Aborted(TextftError):
    code = grpc.StatusCode.ABORTED
    retryable = True


class Internal(TextftError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[TextftError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        OutOfRange,
        Unauthenticated,
        PermissionDenied,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        Unimplemented,
        Aborted,
        Internal,
    )
}


def from_status_code(code: int, message: str, reason: str = "") -> TextftError:
    """The TextftError for a numeric gRPC status code (as a resource records a
    failure it ended with, e.g. ModelEvaluation.error_code)."""
    status = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.INTERNAL)
    error = _BY_CODE.get(status, Internal)(message, reason=reason)
    error.grpc_code = status  # type: ignore[attr-defined]
    return error


def from_rpc_error(err: grpc.RpcError) -> TextftError:
    """Turns a failed call into the matching TextftError, with its rich details."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = (err.details() if hasattr(err, "details") else None) or str(code)
    cls = _BY_CODE.get(code, Internal)
    violations: list[FieldViolation] = []
    reason = ""
    metadata: dict[str, str] = {}
    status = None
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except Exception:
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
    error = cls(message, reason=reason, violations=violations, metadata=metadata)
    error.grpc_code = code  # type: ignore[attr-defined]
    return error
