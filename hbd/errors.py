"""The one error hierarchy of hbd.

Services raise these; the API layer maps each class to the HTTP status dockerd
uses (in exactly one place, `hbd.api.app.error_middleware`). Messages follow
dockerd's wording because the SDKs and the CLI parse some of them.
"""

from __future__ import annotations


class HbdError(Exception):
    """Base class: an error with a message meant for the API client."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidParameter(HbdError):
    status = 400


class Unauthorized(HbdError):
    status = 401


class Forbidden(HbdError):
    status = 403


class NotFound(HbdError):
    status = 404


class Conflict(HbdError):
    status = 409


class NotModified(HbdError):
    status = 304


class NotImplementedByHbd(HbdError):
    status = 501


class Unavailable(HbdError):
    status = 503


class SystemError_(HbdError):
    status = 500


def no_such_container(ref: str) -> NotFound:
    return NotFound(f"No such container: {ref}")


def no_such_image(ref: str) -> NotFound:
    return NotFound(f"No such image: {ref}")


def no_such_exec(ref: str) -> NotFound:
    return NotFound(f"No such exec instance: {ref}")
