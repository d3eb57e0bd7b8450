"""The one error hierarchy of hbd.

Services raise these. Each class carries the HTTP status dockerd uses and the
gRPC status code the CRI answers with (the name of a `grpc.StatusCode`, kept
as text so that this module needs no gRPC); `hbd.api.app.error_middleware`
and `hbd.api.cri.server` are the only places that apply them. Messages follow
dockerd's wording because the SDKs and the CLI parse some of them.
"""

from __future__ import annotations


class HbdError(Exception):
    """Base class: an error with a message meant for the API client."""

    status = 500
    grpc_code = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidParameter(HbdError):
    status = 400
    grpc_code = "INVALID_ARGUMENT"


class Unauthorized(HbdError):
    status = 401
    grpc_code = "UNAUTHENTICATED"


class Forbidden(HbdError):
    status = 403
    grpc_code = "PERMISSION_DENIED"


class NotFound(HbdError):
    status = 404
    grpc_code = "NOT_FOUND"


class Conflict(HbdError):
    status = 409
    grpc_code = "FAILED_PRECONDITION"


class NotModified(HbdError):
    status = 304


class NotImplementedByHbd(HbdError):
    status = 501
    grpc_code = "UNIMPLEMENTED"


class Unavailable(HbdError):
    status = 503
    grpc_code = "UNAVAILABLE"


class DeadlineExceeded(HbdError):
    """An operation that did not finish in the time its caller gave it."""

    status = 500
    grpc_code = "DEADLINE_EXCEEDED"


class SystemError_(HbdError):
    status = 500
    grpc_code = "INTERNAL"


def no_such_container(ref: str) -> NotFound:
    return NotFound(f"No such container: {ref}")


def no_such_image(ref: str) -> NotFound:
    return NotFound(f"No such image: {ref}")


def no_such_exec(ref: str) -> NotFound:
    return NotFound(f"No such exec instance: {ref}")
