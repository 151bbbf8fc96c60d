"""``SluiceFileSystem``: the fsspec filesystem of the ``sluice`` protocol.

Directories exist while an object lies below them, as in s3fs: see
:mod:`sluice.fsspec._listing`.

Reads and writes
----------------
``cat_file`` is one read; ``cat_ranges`` and ``cat`` of several objects are
one ``get_many`` with ``window`` reads in flight. ``get_file`` and
``cp_file`` read an object up to ``whole_read_limit`` whole (the daemon then
caches it) and a larger one in ``block_size`` ranges through one
``get_many``; what they write streams through a :class:`sluice.Writer`.
Files opened for reading and writing: see :mod:`sluice.fsspec._file`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Optional, Union

from fsspec.callbacks import DEFAULT_CALLBACK, Callback
from fsspec.utils import isfilelike

from .. import Client, NotFoundError, Writer, default_address
from . import _errors, _paths
from ._errors import translating
from ._file import SluiceFile
from ._listing import Info, ObjectStoreListing
from ._reads import Range, fetch_ranges, read_range

MiB = 1 << 20

#: The daemon's default ``engine.part_size``: one block is one backend GET.
DEFAULT_BLOCK_SIZE = 8 * MiB
#: Eight of those parts, which the daemon fetches at once
#: (``engine.per_object_concurrency``): reading such an object whole costs
#: about the time of one part, and caches it.
DEFAULT_WHOLE_READ_LIMIT = 64 * MiB
#: Reads in flight for ``cat_ranges``, ``cat`` and large ``get_file``.
DEFAULT_WINDOW = 16


class SluiceFileSystem(ObjectStoreListing):
    """fsspec access to everything the node's sluice daemon serves, through
    its cache: ``fsspec.filesystem("sluice")``, or ``sluice://`` URLs in
    pandas, pyarrow, Hugging Face datasets and anything else built on fsspec.

    ``address`` and the credentials (``ca_file``, ``token``, ``token_file``,
    ``client_cert``, ``client_key``) are those of :class:`sluice.Client`,
    with the same defaults and environment variables; or pass a ``client``.
    ``block_size`` is the read-ahead and write block, ``cache_type`` the
    fsspec cache of files opened for reading, ``whole_read_limit`` the size
    up to which objects are read whole on first access so that the daemon
    caches them, ``window`` the reads in flight of batched reads.
    """

    protocol = _paths.PROTOCOL
    root_marker = ""

    def __init__(
        self,
        address: Optional[str] = None,
        *,
        client: Optional[Client] = None,
        ca_file: Optional[Union[str, os.PathLike[str]]] = None,
        token: Optional[str] = None,
        token_file: Optional[Union[str, os.PathLike[str]]] = None,
        client_cert: Optional[Union[str, os.PathLike[str]]] = None,
        client_key: Optional[Union[str, os.PathLike[str]]] = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        cache_type: str = "readahead",
        whole_read_limit: int = DEFAULT_WHOLE_READ_LIMIT,
        window: int = DEFAULT_WINDOW,
        **kwargs: Any,
    ) -> None:
        # Other options go to fsspec, which ignores what it does not know:
        # callers add their own (Hugging Face datasets passes its "hf").
        super().__init__(**kwargs)
        if client is None:
            client = _shared_client(
                address,
                ca_file=ca_file,
                token=token,
                token_file=token_file,
                client_cert=client_cert,
                client_key=client_key,
            )
        elif address is not None or any((ca_file, token, token_file, client_cert, client_key)):
            raise ValueError("give an address and credentials or a client, not both")
        self.client = client
        self.blocksize = block_size
        self.cache_type = cache_type
        self.whole_read_limit = whole_read_limit
        self.window = window

    @property
    def fsid(self) -> str:
        return f"sluice:{self.client.address}"

    # Paths.

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        return _paths.strip(path)

    def unstrip_protocol(self, name: str) -> str:
        return _errors.url(_paths.strip(name))

    def _uri(self, path: str) -> str:
        return _paths.to_uri(self._strip_protocol(path))

    # Reads.

    @translating
    def cat_file(
        self, path: str, start: Optional[int] = None, end: Optional[int] = None, **kwargs: Any
    ) -> bytes:
        return read_range(self.client, self._range(path, start, end))

    @translating
    def cat_ranges(
        self,
        paths: list[str],
        starts: Union[Optional[int], Sequence[Optional[int]]],
        ends: Union[Optional[int], Sequence[Optional[int]]],
        max_gap: Optional[int] = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> list[Union[bytes, BaseException]]:
        """All ranges through one ``get_many`` call. ``max_gap`` is taken
        and not needed: nothing is merged, the daemon reads each range."""
        if not isinstance(paths, list):
            raise TypeError("paths must be a list")
        firsts, lasts = _per_path(starts, len(paths)), _per_path(ends, len(paths))
        if len(firsts) != len(paths) or len(lasts) != len(paths):
            raise ValueError("paths, starts and ends differ in length")
        ranges = [self._range(p, s, e) for p, s, e in zip(paths, firsts, lasts, strict=True)]
        out = fetch_ranges(self.client, ranges, self.window)
        if on_error != "return":
            for data in out:
                if isinstance(data, BaseException):
                    raise data
        return out

    def _range(self, path: str, start: Optional[int], end: Optional[int]) -> Range:
        uri = self._uri(path)
        if (start is not None and start < 0) or (end is not None and end < 0):
            # Counted from the end, as in Python slices.
            size = self.client.stat(uri).size
            start = None if start is None else max(0, size + start) if start < 0 else start
            end = None if end is None else max(0, size + end) if end < 0 else end
        return Range(uri, start or 0, end)

    @translating
    def cat(
        self, path: Any, recursive: bool = False, on_error: str = "raise", **kwargs: Any
    ) -> Union[bytes, dict[str, Any]]:
        paths = self.expand_path(path, recursive=recursive)
        if len(paths) == 1 and isinstance(path, str) and paths[0] == self._strip_protocol(path):
            return self.cat_file(paths[0])
        if recursive:
            # Directories are listed with their objects; only objects are read.
            parents = {self._parent(p) for p in paths}
            paths = [p for p in paths if p not in parents]
        data = fetch_ranges(self.client, [Range(self._uri(p), 0, None) for p in paths], self.window)
        out: dict[str, Any] = {}
        for p, value in zip(paths, data, strict=True):
            if isinstance(value, BaseException):
                if on_error == "raise":
                    raise value
                if on_error == "omit":
                    continue
            out[p] = value
        return out

    def _pieces(self, uri: str, size: int) -> Iterator[memoryview]:
        """The object ``uri`` of ``size`` bytes: whole when it may be
        cached, else in ``blocksize`` ranges, ``window`` in flight. Each
        piece is valid until the next is asked for."""
        if size <= self.whole_read_limit:
            with self.client.get(uri) as buf, memoryview(buf) as view:
                yield view
            return
        step = self.blocksize
        items = [(uri, at, min(step, size - at)) for at in range(0, size, step)]
        for _, buf in self.client.get_many(items, ordered=True, window=self.window):
            with buf, memoryview(buf) as view:
                yield view

    @translating
    def get_file(
        self,
        rpath: str,
        lpath: Any,
        callback: Callback = DEFAULT_CALLBACK,
        outfile: Any = None,
        **kwargs: Any,
    ) -> None:
        if outfile is None and isfilelike(lpath):
            outfile = lpath
        info = self.info(rpath)
        if info["type"] == "directory":
            if outfile is None:
                os.makedirs(lpath, exist_ok=True)
            return
        if outfile is not None:
            self._copy_out(info, outfile, callback)
            return
        os.makedirs(os.path.dirname(os.path.abspath(lpath)), exist_ok=True)
        try:
            with open(lpath, "wb") as local:
                self._copy_out(info, local, callback)
        except BaseException:
            os.unlink(lpath)  # no half-copied file
            raise

    def _copy_out(self, info: Info, out: Any, callback: Callback) -> None:
        callback.set_size(info["size"])
        for piece in self._pieces(info["uri"], info["size"]):
            out.write(piece)
            callback.relative_update(len(piece))

    # Writes.

    @translating
    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if mode == "create" and self.exists(path):
            raise _errors.exists(path)
        if self._intrans:
            with self.open(path, "wb") as f:  # committed with the transaction
                f.write(value)
            return
        self.client.put(_paths.to_uri(path), value)

    @translating
    def put_file(
        self,
        lpath: Any,
        rpath: str,
        callback: Callback = DEFAULT_CALLBACK,
        mode: str = "overwrite",
        **kwargs: Any,
    ) -> None:
        if os.path.isdir(lpath):
            return  # a directory appears with its objects
        rpath = self._strip_protocol(rpath)
        if mode == "create" and self.exists(rpath):
            raise _errors.exists(rpath)
        uri = _paths.to_uri(rpath)
        with open(lpath, "rb") as local:
            size = os.fstat(local.fileno()).st_size
            callback.set_size(size)
            if size <= self.blocksize and not self._intrans:
                self.client.put(uri, local.read())
                callback.relative_update(size)
                return
            with self._sink(rpath) as writer:
                while chunk := local.read(self.blocksize):
                    writer.write(chunk)
                    callback.relative_update(len(chunk))

    @translating
    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Reads ``path1`` and writes it as ``path2`` (the daemon has no
        copy of its own); a directory has nothing to copy."""
        info = self.info(path1)
        if info["type"] == "directory":
            return
        if info["size"] <= self.blocksize and not self._intrans:
            with self.client.get(info["uri"]) as buf, memoryview(buf) as view:
                self.client.put(self._uri(path2), view)
            return
        with self._sink(path2) as writer:
            for piece in self._pieces(info["uri"], info["size"]):
                writer.write(piece)

    def _sink(self, path: str) -> Union[Writer, SluiceFile]:
        """Where a streamed write of ``path`` goes: a writer, or in a
        transaction a file, committed with it."""
        if self._intrans:
            return self.open(path, "wb")  # type: ignore[no-any-return]
        return self.client.open_writer(self._uri(path))

    @translating
    def rm_file(self, path: str) -> None:
        path = self._strip_protocol(path)
        try:
            self.client.delete(_paths.to_uri(path))
        except NotFoundError:
            if self._has_objects(_paths.to_prefix(path)):
                raise _errors.is_a_directory(path) from None
            raise

    @translating
    def rm(self, path: Any, recursive: bool = False, maxdepth: Optional[int] = None) -> None:
        """Deletes objects. ``recursive`` (without ``maxdepth``) takes one
        daemon call per path: the object and everything below it. A whole
        bucket or file root is refused (``Client.delete(...,
        whole_bucket=True)`` does that)."""
        if recursive and maxdepth is None:
            for p in self.expand_path(path):
                if self.client.delete(self._uri(p), recursive=True) == 0:
                    raise _errors.not_found(p)
            return
        paths = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        parents = {self._parent(p) for p in paths}
        for p in reversed(paths):
            if p not in parents:  # directories go with their objects
                self.rm_file(p)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: Optional[int] = None,
        autocommit: bool = True,
        cache_options: Optional[dict[str, Any]] = None,
        cache_type: Optional[str] = None,
        size: Optional[int] = None,
        **kwargs: Any,
    ) -> SluiceFile:
        path = self._strip_protocol(path)
        if mode == "ab":
            raise NotImplementedError("objects cannot be appended to: write them whole")
        details = None
        if mode == "rb" and size is None:
            details = self.info(path)
            if details["type"] != "file":
                raise _errors.is_a_directory(path)
            size = details["size"]
        elif mode == "xb" and self.exists(path):
            # Checked here, not by the daemon: a writer racing this one wins.
            raise _errors.exists(path)
        file = SluiceFile(
            self,
            path,
            mode,
            block_size=block_size or self.blocksize,
            autocommit=autocommit,
            cache_type=cache_type or self.cache_type,
            cache_options=cache_options,
            size=size,
            **kwargs,
        )
        if details is not None:
            file.details = details
        return file


_clients: dict[tuple[Optional[str], ...], Client] = {}
_clients_lock = threading.Lock()


def _shared_client(address: Optional[str], **credentials: Any) -> Client:
    """One client per daemon address and credentials in a process. fsspec
    keeps a filesystem per thread, and each client would open a session of
    its own (a connection, and a lease quota) on its first read."""
    address = address or default_address()
    key = (address, *(None if v is None else os.fspath(v) for v in credentials.values()))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = Client(address, **credentials)
    return client


def _per_path(
    value: Union[Optional[int], Sequence[Optional[int]]], count: int
) -> list[Optional[int]]:
    """One offset for every path, or the list given."""
    if value is None or isinstance(value, int):
        return [value] * count
    return list(value)
