"""TFRecord files for the tests, written by the ``tfrecord`` package's
writer and read back by its reader and indexer (no TensorFlow)."""

from __future__ import annotations

import pathlib
import random
import struct

import pytest

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
