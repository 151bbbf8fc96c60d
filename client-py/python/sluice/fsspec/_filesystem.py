"""``SluiceFileSystem``: the fsspec filesystem of the ``sluice`` protocol.

Directories
-----------
The object-store model, as in s3fs: a directory exists while some object
lies below it, and is never stored. ``mkdir`` and ``makedirs`` do nothing,
``rmdir`` only checks that nothing lies below, and a path whose last object
is deleted stops being a directory. ``file://`` and ``direct://`` roots are
real directory trees where an emptied directory stays on disk (the daemon
deletes files, never directories) and the daemon lists it: listings there
leave out every directory with no object below it (one more one-page listing
per directory), so all backends look alike.

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

import datetime
import hashlib
import os
from collections.abc import Iterator
from typing import Any, Optional, Union

from fsspec.callbacks import DEFAULT_CALLBACK, Callback
from fsspec.spec import AbstractFileSystem
from fsspec.utils import isfilelike

from .. import Buffer, Client, NotFoundError, ObjectMeta, Writer
from . import _errors, _paths
from ._errors import translating
from ._file import SluiceFile
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

Info = dict[str, Any]


class SluiceFileSystem(AbstractFileSystem):  # type: ignore[misc]
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
        super().__init__(**kwargs)
        if client is None:
            client = Client(
                address,
                ca_file=ca_file,
                token=token,
                token_file=token_file,
                client_cert=client_cert,
                client_key=client_key,
            )
        elif address is not None:
            raise ValueError("give an address or a client, not both")
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

    # Metadata and listings.

    @staticmethod
    def _file_info(meta: ObjectMeta, name: str) -> Info:
        modified = meta.last_modified
        return {
            "name": name,
            "size": meta.size,
            "type": "file",
            "uri": meta.uri,
            "etag": meta.etag,
            "version": meta.version,
            "last_modified": modified,
            "mtime": modified.timestamp() if modified is not None else None,
        }

    @staticmethod
    def _dir_info(name: str) -> Info:
        return {"name": name, "size": 0, "type": "directory"}

    def _has_objects(self, prefix: str) -> bool:
        """Whether some object lies below the listing prefix ``prefix``."""
        return next(iter(self.client.list(prefix, recursive=True)), None) is not None

    @translating
    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        prefix = _paths.to_prefix(path)
        prune = _paths.scheme(path) in _paths.LOCAL_SCHEMES
        out = []
        for entry in self.client.list(prefix, recursive=False):
            if isinstance(entry, str):
                if not (prune and not self._has_objects(entry)):
                    out.append(self._dir_info(_paths.relative(prefix, entry, path)))
            else:
                name = _paths.relative(prefix, entry.uri, path)
                out.append(self._file_info(entry, name))
        if not out and not _paths.is_bucket(path):
            # A file lists as itself; anything else is missing.
            out = [self._file_info(self.client.stat(_paths.to_uri(path)), path)]
        return out if detail else [info["name"] for info in out]

    @translating
    def info(self, path: str, **kwargs: Any) -> Info:
        path = self._strip_protocol(path)
        if _paths.is_bucket(path):
            if path and _paths.scheme(path) not in _paths.LOCAL_SCHEMES:
                # Raises for a bucket that does not exist.
                next(iter(self.client.list(_paths.to_prefix(path), recursive=False)), None)
            return self._dir_info(path)
        try:
            return self._file_info(self.client.stat(_paths.to_uri(path)), path)
        except NotFoundError:
            if self._has_objects(_paths.to_prefix(path)):
                return self._dir_info(path)
            raise

    def exists(self, path: str, **kwargs: Any) -> bool:
        """Whether ``path`` is an object or a directory. Only "not found"
        is ``False``: a daemon that cannot be reached raises."""
        try:
            self.info(path)
        except FileNotFoundError:
            return False
        return True

    def isdir(self, path: str) -> bool:
        try:
            return bool(self.info(path)["type"] == "directory")
        except FileNotFoundError:
            return False

    def isfile(self, path: str) -> bool:
        try:
            return bool(self.info(path)["type"] == "file")
        except FileNotFoundError:
            return False

    @translating
    def find(
        self,
        path: str,
        maxdepth: Optional[int] = None,
        withdirs: bool = False,
        detail: bool = False,
        **kwargs: Any,
    ) -> Union[list[str], dict[str, Info]]:
        """Every object below ``path`` from one recursive listing (with
        ``maxdepth``: fsspec's walk, one listing per directory)."""
        if maxdepth is not None:
            return super().find(path, maxdepth, withdirs, detail, **kwargs)  # type: ignore[no-any-return]
        path = self._strip_protocol(path)
        prefix = _paths.to_prefix(path)
        out: dict[str, Info] = {}
        for meta in self.client.list(prefix, recursive=True):
            name = _paths.relative(prefix, meta.uri, path)
            out[name] = self._file_info(meta, name)
            if withdirs:
                self._add_parents(out, name, path)
        if out and withdirs and path:
            out[path] = self._dir_info(path)
        if not out:
            try:
                info = self.info(path)
            except FileNotFoundError:
                info = {}
            if info.get("type") == "file":
                out[path] = info
        names = sorted(out)
        return {name: out[name] for name in names} if detail else names

    def _add_parents(self, out: dict[str, Info], name: str, top: str) -> None:
        parent = self._parent(name)
        while len(parent) > len(top) and parent not in out:
            out[parent] = self._dir_info(parent)
            parent = self._parent(parent)

    def du(
        self,
        path: str,
        total: bool = True,
        maxdepth: Optional[int] = None,
        withdirs: bool = False,
        **kwargs: Any,
    ) -> Union[int, dict[str, int]]:
        found = self.find(path, maxdepth=maxdepth, withdirs=withdirs, detail=True)
        assert isinstance(found, dict)
        sizes = {name: int(info["size"]) for name, info in found.items()}
        return sum(sizes.values()) if total else sizes

    def modified(self, path: str) -> datetime.datetime:
        info = self.info(path)
        if info.get("last_modified") is None:
            raise NotImplementedError(f"{info.get('uri', path)}: the backend gives no time")
        return info["last_modified"]  # type: ignore[no-any-return]

    def ukey(self, path: str) -> str:
        """Changes when the object does: its URI with its ETag and version
        (size and time where the backend gives neither)."""
        info = self.info(path)
        if info["type"] != "file":
            raise _errors.is_a_directory(self._strip_protocol(path))
        identity = info["etag"] or info["version"] or f"{info['size']}-{info['mtime']}"
        key = f"{info['uri']}\0{identity}\0{info['version'] or ''}"
        return hashlib.sha256(key.encode()).hexdigest()

    def checksum(self, path: str) -> int:
        return int(self.ukey(path), 16)

    # Directories.

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Nothing to do: a directory appears with its first object."""

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        """Nothing to do: a directory appears with its first object."""

    @translating
    def rmdir(self, path: str) -> None:
        """Nothing to remove; raises ``OSError(ENOTEMPTY)`` when objects lie
        below ``path``."""
        path = self._strip_protocol(path)
        if self._has_objects(_paths.to_prefix(path)):
            raise _errors.not_empty(path)

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
        starts: Union[int, None, list[Optional[int]]],
        ends: Union[int, None, list[Optional[int]]],
        max_gap: Optional[int] = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> list[Union[bytes, BaseException]]:
        """All ranges through one ``get_many`` call. ``max_gap`` is taken
        and not needed: nothing is merged, the daemon reads each range."""
        if not isinstance(paths, list):
            raise TypeError("paths must be a list")
        count = len(paths)
        starts = starts if isinstance(starts, list) else [starts] * count
        ends = ends if isinstance(ends, list) else [ends] * count
        if len(starts) != count or len(ends) != count:
            raise ValueError("paths, starts and ends differ in length")
        ranges = [self._range(p, s, e) for p, s, e in zip(paths, starts, ends)]
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
        for p, value in zip(paths, data):
            if isinstance(value, BaseException):
                if on_error == "raise":
                    raise value
                if on_error == "omit":
                    continue
            out[p] = value
        return out

    def _pieces(self, uri: str, size: int) -> Iterator[Buffer]:
        """The object ``uri`` of ``size`` bytes: whole when it may be
        cached, else in ``blocksize`` ranges, ``window`` in flight."""
        if size <= self.whole_read_limit:
            with self.client.get(uri) as buf:
                yield buf
            return
        step = self.blocksize
        items = [(uri, at, min(step, size - at)) for at in range(0, size, step)]
        for _, buf in self.client.get_many(items, ordered=True, window=self.window):
            with buf:
                yield buf

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
        if outfile is None:
            os.makedirs(os.path.dirname(os.path.abspath(lpath)), exist_ok=True)
            with open(lpath, "wb") as local:
                self._copy_out(info, local, callback)
        else:
            self._copy_out(info, outfile, callback)

    def _copy_out(self, info: Info, out: Any, callback: Callback) -> None:
        callback.set_size(info["size"])
        for buf in self._pieces(info["uri"], info["size"]):
            out.write(buf)
            callback.relative_update(len(buf))

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
            with self.client.get(info["uri"]) as buf:
                self.client.put(self._uri(path2), buf)
            return
        with self._sink(path2) as writer:
            for buf in self._pieces(info["uri"], info["size"]):
                writer.write(buf)

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
