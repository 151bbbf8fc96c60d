"""Listings and metadata of :class:`~sluice.fsspec.SluiceFileSystem`, in the
object-store model (as s3fs has it).

A directory exists while some object lies below it, and is never stored:
``mkdir`` and ``makedirs`` do nothing, ``rmdir`` only checks that nothing
lies below, and a directory whose last object is deleted is gone. The
roots of ``file://`` and ``direct://`` are real directory trees, where an
emptied directory stays on disk (the daemon deletes files, never
directories) and the daemon lists it; listings there leave out each
directory with no object below it, at the cost of one one-page listing per
directory, so that every backend looks alike.

``ls`` is one listing of one level; ``find`` without ``maxdepth`` one
recursive listing, its directories derived from the objects' names; ``info``
one ``stat``, and for a path that is no object one listing more (is it a
directory?). Bucket-level paths are directories without a ``stat``. Nothing
is cached: each call asks the daemon.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Any, Optional, Union, cast

from fsspec.spec import AbstractFileSystem

from .. import Client, NotFoundError, ObjectMeta
from . import _errors, _paths
from ._errors import translating

Info = dict[str, Any]


class ObjectStoreListing(AbstractFileSystem):  # type: ignore[misc]
    """The listing half of :class:`~sluice.fsspec.SluiceFileSystem`."""

    client: Client

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
                if prune and not self._has_objects(entry):
                    continue  # an empty directory on disk
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
            if isinstance(meta, str):
                continue  # recursive listings have no prefixes
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
        found = cast(dict[str, Info], self.find(path, maxdepth, withdirs, detail=True))
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
        if info["etag"] or info["version"]:
            identity = (info["etag"], info["version"] or "")
        else:
            identity = (str(info["size"]), str(info["mtime"]))
        return hashlib.sha256("\0".join((info["uri"], *identity)).encode()).hexdigest()

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
