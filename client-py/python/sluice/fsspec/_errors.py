"""How the fsspec layer reports failures.

The client's exceptions already derive from the built-in ones fsspec callers
catch (``NotFoundError`` is a ``FileNotFoundError``, ``PermissionDeniedError``
a ``PermissionError``, ``UnavailableError`` a ``ConnectionError``,
``InvalidArgumentError`` a ``ValueError``...), and their messages name the
daemon URI: those pass through unchanged, so ``except sluice.UnavailableError``
keeps working around pandas code. The few without a built-in base (a daemon
limit, an object changed mid-read, a refused whole-bucket delete) become an
``OSError`` with a fitting errno, chained to the original. Errors the layer
raises itself name the ``sluice://`` URL as the file name.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar, Union

from .._types import SluiceError
from . import _paths

_ERRNO = {
    # Retrying later may work.
    "RESOURCE_EXHAUSTED": errno.EAGAIN,
    # The object changed while it was read: what was read is stale.
    "ABORTED": errno.ESTALE,
}

F = TypeVar("F", bound=Callable[..., Any])


def as_os_error(error: SluiceError) -> Union[OSError, ValueError]:
    """``error`` itself when it is already an ``OSError`` or ``ValueError``,
    else an ``OSError`` carrying its message."""
    if isinstance(error, (OSError, ValueError)):
        return error
    return OSError(_ERRNO.get(error.code, errno.EIO), f"{error.code}: {error.message}")


def translating(method: F) -> F:
    """Raises the client's errors from ``method`` as :func:`as_os_error`
    makes them."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except SluiceError as error:
            if isinstance(error, (OSError, ValueError)):
                raise
            raise as_os_error(error) from error

    return wrapper  # type: ignore[return-value]


def url(path: str) -> str:
    return f"{_paths.PROTOCOL}://{path}"


def not_found(path: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), url(path))


def exists(path: str) -> FileExistsError:
    return FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), url(path))


def is_a_directory(path: str) -> IsADirectoryError:
    return IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), url(path))


def not_empty(path: str) -> OSError:
    return OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), url(path))
