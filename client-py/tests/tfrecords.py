"""TFRecord files for the tests, written by the ``tfrecord`` package's
writer and read back by its reader and indexer (no TensorFlow), and a client
that counts its reads."""

from __future__ import annotations

import pathlib
import random
import struct
import threading
from collections import Counter
from typing import Any

import pytest

import sluice

tfrecord = pytest.importorskip("tfrecord")

from tfrecord.reader import tfrecord_iterator  # noqa: E402
from tfrecord.tools.tfrecord2idx import create_index  # noqa: E402
from tfrecord.writer import TFRecordWriter  # noqa: E402

MiB = 1 << 20


def write_raw(writer: TFRecordWriter, data: bytes) -> None:
    """One record of raw ``data`` (the writer itself only writes Examples),
    framed as ``TFRecordWriter.write`` frames, with its CRC."""
    length = struct.pack("<Q", len(data))
    writer.file.write(length + TFRecordWriter.masked_crc(length))
    writer.file.write(data + TFRecordWriter.masked_crc(data))


def write_examples(path: pathlib.Path, ids: range, rng: random.Random, big: int = 0) -> None:
    """Examples numbered ``ids`` of assorted sizes, each unique by its
    ``id``; with ``big``, record ``ids[1]`` carries ``big`` bytes more.
    Every 7th is followed by an empty raw record, every 11th by an Example
    without features."""
    writer = TFRecordWriter(str(path))
    try:
        for n, i in enumerate(ids):
            size = rng.randrange(0, 3000) + (big if n == 1 else 0)
            writer.write(
                {
                    "id": (i, "int"),
                    "data": (rng.randbytes(size), "byte"),
                    "floats": ([rng.random() for _ in range(n % 5)], "float"),
                }
            )
            if i % 7 == 3:
                write_raw(writer, b"")
            if i % 11 == 5:
                writer.write({})
    finally:
        writer.close()


def records_of(path: pathlib.Path) -> list[bytes]:
    """The records as the ``tfrecord`` package's reader decodes them."""
    return [bytes(record) for record in tfrecord_iterator(str(path))]


def reference_index(path: pathlib.Path) -> bytes:
    """The index ``tfrecord.tools.tfrecord2idx`` writes for ``path``."""
    out = path.with_name(path.name + ".reference-index")
    create_index(str(path), str(out))
    try:
        return out.read_bytes()
    finally:
        out.unlink()


class CountingClient(sluice.Client):
    """A client that counts its calls of ``get`` and ``get_many``, the
    length of each ``get`` and the items of each ``get_many``."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.calls: Counter[str] = Counter()
        self.batches: list[int] = []
        self.lengths: list[int] = []
        self._lock = threading.Lock()  # indexes are built on threads

    def get(self, uri: str, offset: Any = None, length: Any = None) -> sluice.Buffer:
        with self._lock:
            self.calls["get"] += 1
            self.lengths.append(length)
        return super().get(uri, offset, length)

    def get_many(self, items: Any, *args: Any, **kwargs: Any) -> Any:
        items = list(items)
        with self._lock:
            self.calls["get_many"] += 1
            self.batches.append(len(items))
        return super().get_many(items, *args, **kwargs)
