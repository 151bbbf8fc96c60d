"""TFRecord files through the daemon: indexes and batched record reads.

A TFRecord file is a sequence of records, each framed as::

    uint64 length        little-endian
    uint32 masked CRC-32C of the 8 length bytes
    byte   data[length]
    uint32 masked CRC-32C of data

so a record takes ``length + 16`` bytes and nothing but a scan finds where
each one starts. An *index* lists every record's ``(offset, size)``, size
being the whole frame; as text it is one ``"offset size"`` line per record,
the format of DALI's ``tfrecord2idx`` and of the ``tfrecord`` package's
``tfrecord.tools.tfrecord2idx`` (:func:`format_index`, :func:`load_index`).
With an index, any set of records is one :meth:`Client.get_many` of ranged
items, one per record (:func:`read_records`), which is how
:class:`sluice.torch.SluiceTFRecordDataset` reads.

Building an index
-----------------
:func:`build_index` reads the object through the daemon in ranged windows
of at most ``window`` bytes (8 MiB by default), so memory stays bounded
whatever the size of the file. It reads each record's 12-byte header and
skips the data by its length: after a record larger than the window, the
next read is a 64 KiB probe rather than a whole window, so files of records
larger than a window are not read whole just to find their headers.
With ``verify_crc=True`` it reads everything and checks each record's data.

Checks
------
The length's CRC is always checked (8 bytes: cheap, and a corrupt length
would send the scan astray); the data's CRC with ``verify_crc=True``. A
file that ends inside a record, a header whose CRC does not match, or a
record that does not match its index raises :class:`TFRecordError` (a
``ValueError``) naming the URI and the record's offset. CRC-32C comes from
the ``crc32c`` or ``google-crc32c`` package when one is installed, else
from pure Python at a few MB/s (see ``sluice._crc32c``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from . import Buffer, Client, NotFoundError, ObjectMeta
from ._crc32c import crc32c, masked

__all__ = [
    "DEFAULT_WINDOW",
    "INDEX_SUFFIX",
    "Index",
    "TFRecordError",
    "build_index",
    "format_index",
    "load_index",
    "load_indexes",
    "parse_index",
    "read_records",
    "write_index",
]

#: Bytes per ranged read of :func:`build_index`: large enough that the
#: per-read overhead is amortized over thousands of small records, small
#: enough to bound memory.
DEFAULT_WINDOW = 8 << 20

#: A read after a record larger than the window: room for the next header
#: and, when records are small again, a few of them.
_PROBE = 64 << 10

#: Where an index is looked for, beside its file: ``<uri>.idx``.
INDEX_SUFFIX = ".idx"

#: Length and its masked CRC.
_HEADER = 12
#: Header plus the data's masked CRC.
_FRAMING = 16

#: ``(offset, size)`` of each record, in file order.
Index = list[tuple[int, int]]


class TFRecordError(ValueError):
    """A TFRecord file or index that is truncated, corrupt, or does not
    match: ``uri`` names the object and ``offset`` where the problem lies
    (a byte offset in a file; a line number in an index)."""

    def __init__(
        self, message: str, uri: Optional[str] = None, offset: Optional[int] = None
    ) -> None:
        super().__init__(message)
        self.uri = uri
        self.offset = offset

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (type(self), (str(self), self.uri, self.offset))


TFRecordError.__module__ = "sluice.tfrecord"


def _check_header(header: bytes, uri: str, offset: int) -> int:
    """The record length of the header at ``offset``, its CRC checked."""
    length: int
    stored: int
    length, stored = struct.unpack_from("<QI", header)
    if masked(crc32c(header[:8])) != stored:
        raise TFRecordError(
            f"{uri}: corrupt record header at offset {offset} (length CRC mismatch)", uri, offset
        )
    return length


class _Windows:
    """Ranged reads of one object, one window held at a time."""

    def __init__(self, client: Client, uri: str, size: int, window: int) -> None:
        self.client, self.uri, self.size, self.window = client, uri, size, window
        self._start = self._end = 0
        self._buffer: Optional[Buffer] = None
        self._view = memoryview(b"")

    def _fetch(self, offset: int, length: int) -> None:
        self.close()
        length = min(max(length, 1), self.size - offset)
        self._buffer = self.client.get(self.uri, offset, length)
        self._view = memoryview(self._buffer)
        if len(self._view) != length:
            raise TFRecordError(
                f"{self.uri}: {len(self._view)} bytes at offset {offset}, expected {length} "
                "(the object changed while it was read)",
                self.uri,
                offset,
            )
        self._start, self._end = offset, offset + length

    def read(self, offset: int, length: int, ahead: int) -> bytes:
        """``length`` bytes at ``offset`` (at most a window's); fetches
        ``ahead`` bytes from ``offset`` when they are not in the window."""
        if not (self._start <= offset and offset + length <= self._end):
            self._fetch(offset, max(ahead, length))
        return bytes(self._view[offset - self._start : offset + length - self._start])

    def crc(self, offset: int, length: int) -> int:
        """CRC-32C of ``length`` bytes at ``offset``, a window at a time."""
        crc, end = 0, offset + length
        while offset < end:
            if not (self._start <= offset < self._end):
                self._fetch(offset, self.window)
            piece = self._view[offset - self._start : min(end, self._end) - self._start]
            crc = crc32c(piece, crc)
            offset += len(piece)
            piece.release()
        return crc

    @property
    def end(self) -> int:
        """The end of the window held."""
        return self._end

    def close(self) -> None:
        self._view.release()
        if self._buffer is not None:
            buffer, self._buffer = self._buffer, None
            try:
                buffer.close()
            except BufferError:
                pass  # a piece of it is still viewed: the lease ends when it is collected


def build_index(
    client: Client, uri: str, *, verify_crc: bool = False, window: int = DEFAULT_WINDOW
) -> Index:
    """The index of the TFRecord file ``uri``, read through the daemon in
    ranged windows of at most ``window`` bytes (see the module
    documentation). Raises :class:`TFRecordError` for a truncated or
    corrupt file (every record's data checked with ``verify_crc``)."""
    if window < _HEADER + 4:
        raise ValueError(f"window must be at least {_HEADER + 4} bytes")
    size = client.stat(uri).size
    windows = _Windows(client, uri, size, window)
    index: Index = []
    offset, ahead = 0, window
    try:
        while offset < size:
            if size - offset < _HEADER:
                raise TFRecordError(
                    f"{uri}: truncated record header at offset {offset}: "
                    f"{size - offset} of {_HEADER} bytes",
                    uri,
                    offset,
                )
            length = _check_header(windows.read(offset, _HEADER, ahead), uri, offset)
            end = offset + length + _FRAMING
            if end > size:
                raise TFRecordError(
                    f"{uri}: truncated record at offset {offset}: {length + _FRAMING} bytes "
                    f"framed, {size - offset} left in the object",
                    uri,
                    offset,
                )
            if verify_crc:
                data_crc = windows.crc(offset + _HEADER, length)
                footer = windows.read(end - 4, 4, window)
                _check_data(data_crc, footer, uri, offset)
            index.append((offset, end - offset))
            # Records as large as the last one would leave a window unread.
            ahead = window if end - offset <= window else min(_PROBE, window)
            offset = end
    finally:
        windows.close()
    return index


def _check_data(crc: int, footer: bytes, uri: str, offset: int) -> None:
    if masked(crc) != struct.unpack("<I", footer)[0]:
        raise TFRecordError(
            f"{uri}: corrupt record at offset {offset} (data CRC mismatch)", uri, offset
        )


def format_index(index: Iterable[tuple[int, int]]) -> bytes:
    """The text form of an index: ``"offset size\\n"`` per record."""
    return "".join(f"{offset} {size}\n" for offset, size in index).encode()


def parse_index(text: bytes, uri: str = "<index>") -> Index:
    """An index from its text form; a malformed line raises
    :class:`TFRecordError` with its (1-based) number as ``offset``."""
    index: Index = []
    for number, line in enumerate(text.decode("ascii", "replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            offset, size = (int(field) for field in fields)
        except ValueError:
            raise TFRecordError(f"{uri}: line {number} is not 'offset size'", uri, number) from None
        if offset < 0 or size < _FRAMING:
            raise TFRecordError(f"{uri}: line {number} is not a record's frame", uri, number)
        index.append((offset, size))
    return index


def load_index(client: Client, idx_uri: str) -> Index:
    """Reads and parses the index object ``idx_uri``."""
    with client.get(idx_uri) as buffer:
        text = bytes(buffer)
    return parse_index(text, idx_uri)


def write_index(
    client: Client, uri: str, index: Iterable[tuple[int, int]], out_uri: Optional[str] = None
) -> ObjectMeta:
    """Writes the index of file ``uri`` as ``out_uri`` (default: beside it,
    ``uri + INDEX_SUFFIX``)."""
    return client.put(out_uri or uri + INDEX_SUFFIX, format_index(index))


def load_indexes(
    client: Client,
    uris: Sequence[str],
    *,
    suffix: str = INDEX_SUFFIX,
    build: bool = True,
    window: int = 16,
) -> list[Index]:
    """The indexes of files ``uris``: the objects ``uri + suffix`` read in
    one ``get_many``, and with ``build`` those that do not exist built by
    :func:`build_index` (not written); ``window`` reads or scans at a time."""
    indexes: list[Optional[Index]] = [None] * len(uris)
    results = client.get_many(
        [uri + suffix for uri in uris], ordered=True, window=window, plan=False
    )
    for at, uri in enumerate(uris):
        try:
            _, buffer = next(results)
        except NotFoundError:
            if not build:
                raise
            continue
        with buffer:
            indexes[at] = parse_index(bytes(buffer), uri + suffix)
    missing = [uri for uri, index in zip(uris, indexes) if index is None]
    # The client releases the GIL while it waits: scans overlap.
    with ThreadPoolExecutor(max_workers=max(1, min(window, len(missing)))) as pool:
        built = iter(pool.map(lambda uri: build_index(client, uri), missing))
        return [next(built) if index is None else index for index in indexes]


def record_data(
    buffer: Buffer | memoryview, uri: str, offset: int, size: int, verify_crc: bool
) -> memoryview:
    """The data of the record read as ``buffer`` (``size`` bytes at
    ``offset`` of ``uri``): a view without its framing, checked against the
    index and, with ``verify_crc``, its CRC."""
    view = memoryview(buffer)
    # Released on the way out (the slice returned keeps the bytes mapped),
    # so that an error leaves nothing that keeps the buffer from closing.
    try:
        if len(view) != size:
            raise TFRecordError(
                f"{uri}: the index has a record of {size} bytes at offset {offset}, "
                f"the object has {len(view)} bytes there",
                uri,
                offset,
            )
        length = _check_header(bytes(view[:_HEADER]), uri, offset)
        if length + _FRAMING != size:
            raise TFRecordError(
                f"{uri}: the record at offset {offset} has {length + _FRAMING} bytes, "
                f"the index says {size}",
                uri,
                offset,
            )
        if verify_crc:
            with view[_HEADER : _HEADER + length] as data:
                _check_data(crc32c(data), bytes(view[size - 4 :]), uri, offset)
        return view[_HEADER : _HEADER + length]
    finally:
        view.release()


def read_records(
    client: Client,
    uri: str,
    index: Sequence[tuple[int, int]],
    indices: Iterable[int],
    *,
    verify_crc: bool = False,
    window: int = 16,
) -> list[bytes]:
    """The data of records ``indices`` (positions in ``index``) of file
    ``uri``, in that order: one ``get_many`` of one range per record,
    ``window`` in flight."""
    frames = [index[i] for i in indices]
    records = []
    results = client.get_many(
        [(uri, offset, size) for offset, size in frames], ordered=True, window=window, plan=False
    )
    for (offset, size), (_, buffer) in zip(frames, results):
        with buffer:
            data = record_data(buffer, uri, offset, size, verify_crc)
            records.append(bytes(data))
            data.release()
    return records
