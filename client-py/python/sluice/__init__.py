"""Python client of sluice, the node-local data-loading daemon.

::

    import sluice

    client = sluice.Client()  # $SLUICE_ADDRESS, else unix:///run/sluice/sluiced.sock
    with client.get("s3://bucket/train/shard-0000.tar") as buf:
        header = bytes(memoryview(buf)[:512])  # no copy until bytes()

See docs/PYTHON.md for the whole API, zero-copy semantics, fork/spawn and
exceptions.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Optional, Union

from . import _native
from ._native import Buffer
from ._types import (
    AbortedError,
    AlreadyExistsError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    ObjectMeta,
    PermissionDeniedError,
    ResourceExhaustedError,
    SluiceError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = [
    "ADDRESS_ENV",
    "DEFAULT_ADDRESS",
    "AbortedError",
    "AlreadyExistsError",
    "Buffer",
    "BytesLike",
    "Client",
    "DeadlineExceededError",
    "InvalidArgumentError",
    "Item",
    "NotFoundError",
    "ObjectMeta",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "SluiceError",
    "UnauthenticatedError",
    "UnavailableError",
    "Writer",
    "default_address",
]

__version__: str = _native.__version__

#: Where the daemon listens unless told otherwise.
DEFAULT_ADDRESS: str = _native.DEFAULT_ADDRESS
#: The environment variable naming the daemon address.
ADDRESS_ENV: str = _native.ADDRESS_ENV

#: Anything with the buffer protocol: bytes, bytearray, memoryview, numpy arrays...
BytesLike = Union[bytes, bytearray, memoryview]
#: An item of ``get_many``: a URI, or ``(uri, offset, length)`` for a byte range.
Item = Union[str, tuple[str, Optional[int], Optional[int]]]


def default_address() -> str:
    """``$SLUICE_ADDRESS`` if set and not empty, else :data:`DEFAULT_ADDRESS`."""
    return os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


def _as_bytes_view(data: object) -> memoryview:
    """A 1-D, C-contiguous view of unsigned bytes over ``data``, copying only
    a non-contiguous buffer."""
    view = memoryview(data)  # type: ignore[arg-type]
    if view.format == "B" and view.ndim == 1 and view.c_contiguous:
        return view
    try:
        return view.cast("B")
    except TypeError:
        return memoryview(view.tobytes())


class Writer:
    """A streaming upload of one object, written to like a binary file
    (``torch.save(state, writer)`` works). Obtain one from
    :meth:`Client.open_writer`.

    Bytes go to the daemon as they are written, a few MiB in memory at most.
    The object is committed by :meth:`close` (or a ``with`` block that ends
    normally), never before. If the ``with`` block raises, or the writer is
    aborted or collected without ``close()``, the daemon discards the upload
    and the object is not created (an existing one keeps its content). A
    failed upload raises from ``write``, ``flush`` or ``close``.
    """

    def __init__(self, native: _native.Writer) -> None:
        self._native = native
        self._meta: Optional[ObjectMeta] = None

    @property
    def name(self) -> str:
        """The destination URI."""
        return self._native.name

    @property
    def closed(self) -> bool:
        return self._native.closed

    @property
    def meta(self) -> Optional[ObjectMeta]:
        """The new object's metadata, once closed."""
        return self._meta

    def write(self, data: BytesLike) -> int:
        """Appends ``data`` (any bytes-like object); returns its size in
        bytes. Blocks while the daemon is behind."""
        return self._native.write(_as_bytes_view(data))

    def flush(self) -> None:
        """Passes buffered bytes on to the upload (nothing is committed
        before :meth:`close`)."""
        self._native.flush()

    def tell(self) -> int:
        """Bytes written so far."""
        return self._native.tell()

    def close(self) -> ObjectMeta:
        """Commits the object and returns its metadata; raises if the upload
        failed. Closing again returns the same metadata."""
        self._meta = self._native.close()
        return self._meta

    def abort(self) -> None:
        """Abandons the upload: the object is not created."""
        self._native.abort()

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<sluice.Writer {self.name} ({state})>"


def _rebuild_client(
    address: str,
    ca_file: object,
    token: Optional[str],
    token_file: object,
    client_cert: object,
    client_key: object,
) -> Client:
    """Unpickles a :class:`Client`."""
    return Client(
        address,
        ca_file=ca_file,  # type: ignore[arg-type]
        token=token,
        token_file=token_file,  # type: ignore[arg-type]
        client_cert=client_cert,  # type: ignore[arg-type]
        client_key=client_key,  # type: ignore[arg-type]
    )


class Client:
    """A client of the sluice daemon.

    ``address`` is ``unix:///path/to/sluiced.sock`` (or a bare socket path),
    ``https://host:port`` for a daemon on TCP with TLS, or ``http://host:port``
    for one that serves plaintext (``server.tcp_insecure``); default
    :func:`default_address`. The client connects on first use, and reads
    open one session whose results are leases on the daemon's shared memory
    (when the daemon is on this node's Unix socket).

    For ``https://`` only: ``ca_file`` holds the CA certificates (PEM) the
    daemon's certificate must chain to (default: the system's roots);
    ``token`` or ``token_file`` the bearer token; ``client_cert`` and
    ``client_key`` a client certificate for daemons that require mutual
    TLS. What is not given comes from ``SLUICE_CA_FILE``, ``SLUICE_TOKEN``
    or ``SLUICE_TOKEN_FILE``, ``SLUICE_CLIENT_CERT`` and
    ``SLUICE_CLIENT_KEY``, as in the Rust client and the CLI. The token is
    never sent in plaintext and never shown (``repr``, errors). Pickling a
    client made with ``token=`` carries the token to the receiving process;
    ``token_file`` or ``SLUICE_TOKEN`` keep it out of the pickle.

    Fork-safe: a client created before ``fork`` reconnects in the child on
    first use. Picklable (by address), so it can be handed to ``spawn``
    workers. Thread-safe: calls from several threads run concurrently, each
    releasing the GIL while it waits.
    """

    def __init__(
        self,
        address: Optional[str] = None,
        *,
        ca_file: Optional[Union[str, os.PathLike[str]]] = None,
        token: Optional[str] = None,
        token_file: Optional[Union[str, os.PathLike[str]]] = None,
        client_cert: Optional[Union[str, os.PathLike[str]]] = None,
        client_key: Optional[Union[str, os.PathLike[str]]] = None,
    ) -> None:
        address = address or default_address()
        self._native = _native.Client(
            address, ca_file, token, token_file, client_cert, client_key
        )
        self._credentials = (ca_file, token, token_file, client_cert, client_key)

    @property
    def address(self) -> str:
        """The daemon address."""
        return self._native.address

    def set_trace_context(
        self, traceparent: Optional[str], tracestate: Optional[str] = None
    ) -> None:
        """Sends a W3C trace context (``traceparent``, optionally
        ``tracestate``) with every later call, so that a daemon exporting
        traces makes its spans children of the caller's span; ``None``
        stops. Reads go through a session, which takes the context of its
        opening: set it before the first read. A malformed ``traceparent``
        raises :class:`InvalidArgumentError`."""
        self._native.set_trace_context(traceparent, tracestate)

    def stat(self, uri: str) -> ObjectMeta:
        """Metadata of one object."""
        return self._native.stat(uri)

    def list(self, prefix: str, recursive: bool = True) -> Iterator[Union[ObjectMeta, str]]:
        """The entries under ``prefix`` in URI order, fetched page by page.
        Recursive: every object below (``ObjectMeta``). Not recursive: one
        level, objects as ``ObjectMeta`` and directories as prefix strings
        ending in ``/``."""
        return self._native.list(prefix, recursive)

    def get(
        self, uri: str, offset: Optional[int] = None, length: Optional[int] = None
    ) -> Buffer:
        """Reads ``uri`` whole, or ``length`` bytes from ``offset`` (an
        offset alone reads to the end). Returns a :class:`Buffer` over the
        daemon's shared memory when it is local, without a copy; release it
        with ``close()`` or a ``with`` block, or let it be collected."""
        return self._native.get(uri, offset, length)

    def get_many(
        self, items: Iterable[Item], ordered: bool = True, window: int = 16, plan: bool = True
    ) -> Iterator[tuple[int, Buffer]]:
        """Reads many objects (URIs, or ``(uri, offset, length)`` tuples),
        keeping up to ``window`` reads in flight, and yields
        ``(index, buffer)`` as results arrive: in request order when
        ``ordered``, else in completion order. At most ``window`` results
        are held ahead of the consumer. A failed item raises its exception
        from the iterator at its turn; iterating on goes on with the next.
        With ``plan`` and more items than ``window``, the items also go to
        the daemon as an epoch plan (dropped when the iteration ends), so
        that it reads ahead of the window on request slots of its own."""
        normalized = [
            (item, None, None) if isinstance(item, str) else tuple(item) for item in items
        ]
        return self._native.get_many(normalized, ordered, window, plan)

    def put(self, uri: str, data: BytesLike) -> ObjectMeta:
        """Uploads ``data`` (any bytes-like object, copied first) as
        ``uri``; returns the new object's metadata. For large objects, stream
        with :meth:`open_writer`."""
        return self._native.put(uri, _as_bytes_view(data))

    def open_writer(self, uri: str) -> Writer:
        """A file-like streaming upload to ``uri``, committed on close."""
        return Writer(self._native.open_writer(uri))

    def delete(self, uri: str, recursive: bool = False, whole_bucket: bool = False) -> int:
        """Deletes ``uri``; with ``recursive``, the object ``uri`` and every
        object under ``uri/`` (whole path components: ``run1`` never touches
        ``run10``). Deleting everything in a bucket or file root needs
        ``whole_bucket=True`` (implies ``recursive``). Returns the number of
        objects deleted."""
        return self._native.delete(uri, recursive, whole_bucket)

    def warm(
        self, prefix: Optional[str] = None, concurrency: int = 0, *, uris: Optional[Iterable[str]] = None
    ) -> dict[str, object]:
        """Reads every object under ``prefix`` into the daemon's cache,
        ``concurrency`` at a time (0: the daemon's default), and returns the
        final counts: ``listed_objects``, ``listed_bytes``,
        ``warmed_objects``, ``warmed_bytes``, ``cached_objects``,
        ``cached_bytes``, ``skipped_objects`` (too large to cache),
        ``failed_objects``, ``first_error`` and ``cache_full`` (stopped
        before the end: the rest would not fit). With ``uris`` instead of a
        prefix (an epoch plan's first items, say; at most 100,000): those
        objects, in their order."""
        if (prefix is None) == (uris is None):
            raise ValueError("give a prefix or uris, not both")
        if uris is not None:
            return self._native.warm("", concurrency, list(uris))
        return self._native.warm(prefix, concurrency)

    def evict(self, prefix: str) -> int:
        """Drops every cached object under ``prefix`` (the objects stay) and
        returns how many. Only root, the daemon's user and the daemon's
        ``server.admin_uids`` may (``PermissionError`` otherwise)."""
        return self._native.evict(prefix)

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (_rebuild_client, (self.address, *self._credentials))

    def __repr__(self) -> str:
        return f"sluice.Client({self.address!r})"

    # For tests and diagnostics.

    def submit_plan(self, items: Iterable[Item], plan_id: int = 0, job: str = "") -> int:
        """Tells the daemon the order in which this client will read
        ``items`` (URIs, or ``(uri, offset, length)`` tuples): an epoch
        plan. The daemon reads ahead of this client's position in it and
        keeps in its cache what the plan needs soonest; each read of the
        plan's next item moves the position past it. A plan of the same
        ``plan_id`` is replaced; ``job`` names the job in the daemon's stats.
        The plan lasts as long as this client's session. Returns the items
        the daemon took (0 from a daemon that takes no plans); raises for a
        plan over the daemon's limits or a URI it cannot serve."""
        normalized = [
            (item, None, None) if isinstance(item, str) else tuple(item) for item in items
        ]
        return self._native.submit_plan(normalized, plan_id, job)

    def plan_progress(self, plan_id: int, position: int) -> None:
        """Moves plan ``plan_id``'s position forward to ``position`` items
        consumed (for items read some other way than through this client)."""
        self._native.plan_progress(plan_id, position)

    def drop_plan(self, plan_id: int) -> None:
        """Ends plan ``plan_id``: the daemon stops reading ahead for it."""
        self._native.drop_plan(plan_id)

    def _session_info(self) -> dict[str, object]:
        """The session: ``shared_memory``, ``session_id``, ``lease_quota``,
        ``window`` (opens it if needed)."""
        return self._native._session_info()

    def _is_mapped(self, address: int) -> bool:
        """Whether ``address`` lies in a segment mapped by this client's
        session."""
        return self._native._is_mapped(address)

    @staticmethod
    def _mapped_ranges() -> list[tuple[int, int]]:
        """``[start, end)`` of every read-only shared mapping of the daemon's
        arena in this process (from ``/proc/self/maps``)."""
        ranges = []
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and "memfd:sluice-arena" in fields[5]:
                    start, end = fields[0].split("-")
                    if fields[1].startswith("r") and "w" not in fields[1]:
                        ranges.append((int(start, 16), int(end, 16)))
        return ranges
