"""The file object of :class:`~sluice.fsspec.SluiceFileSystem`.

Reading
-------
Bytes come through fsspec's block cache ("readahead" unless the caller picks
another), whose misses call :meth:`SluiceFile._fetch_range`. The daemon
caches a ranged read's object whole only up to its ``cache.widen_range_max``
(a larger one's ranges go to the backend and are not kept). So the first
fetch of an object up to ``whole_read_limit`` reads it whole — one request,
which leaves it in the node's cache whatever that setting — and hands on the
range asked for. What happens to
the whole object then depends on where its bytes are:

- in the daemon's shared memory (a cached object, on the node): the buffer
  is a lease, released at once so that an open file holds none of the
  session's lease quota; later fetches are ranged reads, served from the
  cache while the object stays there;
- in this process (a daemon reached over TCP, or an object too large for
  the daemon's cache, which it streams and does not keep): nothing would
  serve a later read but the backend, and the buffer holds no lease, so the
  file keeps it until closed and serves every later fetch from it.

Larger objects are read in ranges only.

Writing
-------
Nothing is written before the first ``block_size`` bytes (or ``close``). A
file that ends within one block goes up as one ``put``. A longer one opens a
:class:`sluice.Writer` at the first full block and hands it each block as it
fills, so memory stays at one block plus the writer's few MiB whatever the
file's size; the daemon uploads in parts as the bytes come. The object
appears when the file is closed (with ``autocommit=False``, in a
transaction: when the transaction commits), never before. A ``with`` block
that raises discards the upload instead: the object keeps its old content,
or stays absent.
"""

from __future__ import annotations

import contextlib
import io
from types import TracebackType
from typing import TYPE_CHECKING, Any, Optional

from fsspec.spec import AbstractBufferedFile

from .._types import SluiceError
from ._errors import translating
from ._paths import to_uri

if TYPE_CHECKING:
    from .. import Buffer, Writer
    from ._filesystem import SluiceFileSystem


class SluiceFile(AbstractBufferedFile):  # type: ignore[misc]
    """A file of a :class:`~sluice.fsspec.SluiceFileSystem`, opened for
    reading (``rb``) or writing (``wb``, ``xb``). Obtain one from
    ``fs.open``."""

    fs: SluiceFileSystem

    def __init__(self, fs: SluiceFileSystem, path: str, mode: str = "rb", **kwargs: Any) -> None:
        self.uri = to_uri(path)
        self._read_whole = False  # the first fetch has read the object whole
        self._whole: Optional[Buffer] = None  # ...and kept it (no lease)
        self._writer: Optional[Writer] = None
        self._pending: Optional[io.BytesIO] = None  # the one block, until commit
        super().__init__(fs, path, mode, **kwargs)

    @translating
    def _fetch_range(self, start: int, end: int) -> bytes:
        if self._whole is not None:
            return _slice(self._whole, start, end)
        client = self.fs.client
        if not self._read_whole and self.size <= self.fs.whole_read_limit:
            self._read_whole = True
            whole = client.get(self.uri)
            if not whole.shared_memory:
                self._whole = whole
                return _slice(whole, start, end)
            with whole:
                data = _slice(whole, start, end)
            return data
        with client.get(self.uri, start, end - start) as buf:
            data = bytes(buf)
        return data

    def close(self) -> None:
        if self._whole is not None:
            self._whole.close()
            self._whole = None
        super().close()

    @translating
    def _upload_chunk(self, final: bool = False) -> bool:
        block = self.buffer.getbuffer()
        try:
            if self._writer is None and final:
                # The whole file is this block: one put, now or on commit
                # (flush starts a new buffer, this one stays as it is).
                self._pending = self.buffer
                if self.autocommit:
                    self.commit()
                return True
            if self._writer is None:
                self._writer = self.fs.client.open_writer(self.uri)
            self._writer.write(block)
        finally:
            block.release()
        if final and self.autocommit:
            self.commit()
        return True

    @translating
    def commit(self) -> None:
        """Makes the object appear with what was written."""
        if self._pending is not None:
            with self._pending.getbuffer() as block:
                self.fs.client.put(self.uri, block)
            self._pending = None
        elif self._writer is not None:
            self._writer.close()

    @translating
    def discard(self) -> None:
        """Abandons what was written: the object is not created."""
        self._drop()

    def _drop(self) -> None:
        self._pending = None
        if self._writer is not None:
            self._writer.abort()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc_type is not None and self.writable():
            self._abandon()
        else:
            self.close()

    def _abandon(self) -> None:
        """Closes a file being written without writing what it holds."""
        # The exception that ended the block is the one to see; a writer
        # that cannot even be aborted is dropped by the daemon with its
        # stream.
        with contextlib.suppress(SluiceError):
            self._drop()
        self.buffer = io.BytesIO()  # what it held is dropped
        self.closed = True


def _slice(buf: Buffer, start: int, end: int) -> bytes:
    with memoryview(buf) as view:
        return view[start:end].tobytes()
