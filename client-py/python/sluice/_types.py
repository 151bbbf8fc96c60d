"""Exceptions and object metadata of the sluice client.

The native module builds these through ``_error_from_native`` and
``_meta_from_native``; users import them from ``sluice``.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Optional

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "DeadlineExceededError",
    "InvalidArgumentError",
    "NotFoundError",
    "ObjectMeta",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "SluiceError",
    "UnauthenticatedError",
    "UnavailableError",
]


class SluiceError(Exception):
    """A failed call to the sluice daemon. ``code`` is the gRPC status code
    name (``"NOT_FOUND"``, ``"UNAVAILABLE"``, ...); the subclasses below
    also derive from the matching built-in exception."""

    code: str = "UNKNOWN"

    def __init__(self, *args: object, message: Optional[str] = None) -> None:
        # `message=` too: PyTorch re-raises a DataLoader worker's exception
        # in the main process as `type(e)(message=...)` when the class has a
        # `message` attribute, as this one does.
        super().__init__(*((message,) if message is not None else ()), *args)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class NotFoundError(SluiceError, FileNotFoundError):
    """The object or prefix does not exist (``NOT_FOUND``)."""

    code = "NOT_FOUND"


class PermissionDeniedError(SluiceError, PermissionError):
    """A path outside the daemon's roots, or access refused by the backend
    (``PERMISSION_DENIED``)."""

    code = "PERMISSION_DENIED"


class InvalidArgumentError(SluiceError, ValueError):
    """A malformed URI or address, a bad range (``INVALID_ARGUMENT``,
    ``OUT_OF_RANGE``)."""

    code = "INVALID_ARGUMENT"


class UnauthenticatedError(SluiceError, PermissionError):
    """The daemon's TCP listener refused this client's credentials: no
    token, a wrong token, or no client certificate (``UNAUTHENTICATED``).
    The message never contains the token."""

    code = "UNAUTHENTICATED"


class AlreadyExistsError(SluiceError, FileExistsError):
    """``ALREADY_EXISTS``."""

    code = "ALREADY_EXISTS"


class UnavailableError(SluiceError, ConnectionError):
    """The daemon (or its backend) cannot be reached, the session with it
    ended, or it is shutting down (``UNAVAILABLE``)."""

    code = "UNAVAILABLE"


class DeadlineExceededError(SluiceError, TimeoutError):
    """``DEADLINE_EXCEEDED``."""

    code = "DEADLINE_EXCEEDED"


class ResourceExhaustedError(SluiceError):
    """A limit of the daemon was reached, such as the session's lease quota
    (``RESOURCE_EXHAUSTED``); retrying later may work."""

    code = "RESOURCE_EXHAUSTED"


class AbortedError(SluiceError):
    """The object changed while it was being read (``ABORTED``)."""

    code = "ABORTED"


for _public in (
    SluiceError,
    NotFoundError,
    PermissionDeniedError,
    InvalidArgumentError,
    UnauthenticatedError,
    AlreadyExistsError,
    UnavailableError,
    DeadlineExceededError,
    ResourceExhaustedError,
    AbortedError,
):
    # Shown (and pickled) as the names users import.
    _public.__module__ = "sluice"

_BY_CODE: dict[str, type[SluiceError]] = {
    "NOT_FOUND": NotFoundError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "INVALID_ARGUMENT": InvalidArgumentError,
    "UNAUTHENTICATED": UnauthenticatedError,
    "OUT_OF_RANGE": InvalidArgumentError,
    "ALREADY_EXISTS": AlreadyExistsError,
    "UNAVAILABLE": UnavailableError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
    "RESOURCE_EXHAUSTED": ResourceExhaustedError,
    "ABORTED": AbortedError,
}


def _error_from_native(code: str, message: str) -> SluiceError:
    error = _BY_CODE.get(code, SluiceError)(message)
    error.code = code
    return error


@dataclasses.dataclass(frozen=True)
class ObjectMeta:
    """Metadata of one object."""

    uri: str
    size: int
    etag: str
    last_modified: Optional[datetime.datetime]
    """UTC, when the backend reports it."""
    version: Optional[str]
    """The backend's version id, when it versions objects."""


ObjectMeta.__module__ = "sluice"


def _meta_from_native(
    uri: str,
    size: int,
    etag: str,
    modified: Optional[tuple[int, int]],
    version: str,
) -> ObjectMeta:
    last_modified = None
    if modified is not None:
        seconds, nanos = modified
        last_modified = datetime.datetime.fromtimestamp(
            seconds, tz=datetime.timezone.utc
        ) + datetime.timedelta(microseconds=nanos // 1000)
    return ObjectMeta(uri, size, etag, last_modified, version or None)
