"""sluice.tfrecord against files of the ``tfrecord`` package's writer:
indexes byte for byte as its tfrecord2idx writes them, records as its reader
decodes them, truncated and corrupt files, and CRC-32C in pure Python."""

from __future__ import annotations

import os
import pathlib
import random
from collections import Counter

import pytest

import sluice
from conftest import Daemon, Files
from sluice import _crc32c, tfrecord
from sluice.tfrecord import TFRecordError
from tfrecords import (
    CountingClient,
    MiB,
    TFRecordWriter,
    records_of,
    reference_index,
    write_examples,
    write_raw,
)

#: Smaller than most records: every header and record crosses windows.
TINY_WINDOW = 100


class TFRecordFiles:
    """Three files: assorted Examples with empty records among them, an
    empty file, and one with a record larger than the default window."""

    def __init__(self, files: Files) -> None:
        rng = random.Random(7)
        self.files = files
        self.paths = [files.dir / name for name in ("a.tfrecord", "b.tfrecord", "c.tfrecord")]
        write_examples(self.paths[0], range(0, 60), rng)
        self.paths[1].write_bytes(b"")
        write_examples(self.paths[2], range(60, 66), rng, big=tfrecord.DEFAULT_WINDOW + MiB)
        self.uris = [files.uri(path.name) for path in self.paths]
        self.records = [records_of(path) for path in self.paths]


@pytest.fixture
def tfrecords(files: Files) -> TFRecordFiles:
    return TFRecordFiles(files)


def test_build_index_equals_tfrecord2idx_byte_for_byte(
    client: sluice.Client, tfrecords: TFRecordFiles
) -> None:
    big = max(len(r) for r in tfrecords.records[2])
    assert big > tfrecord.DEFAULT_WINDOW
    assert b"" in tfrecords.records[0] and b"\n\x00" in tfrecords.records[0]
    for path, uri in zip(tfrecords.paths, tfrecords.uris):
        expected = reference_index(path)
        for window in (tfrecord.DEFAULT_WINDOW, TINY_WINDOW, MiB):
            for verify in (False, True):
                if verify and window == TINY_WINDOW and path.stat().st_size > MiB:
                    continue  # 100 000 reads
                index = tfrecord.build_index(client, uri, verify_crc=verify, window=window)
                assert tfrecord.format_index(index) == expected, (path.name, window, verify)
    assert reference_index(tfrecords.paths[1]) == b""


def test_an_index_round_trips_through_an_object(
    client: sluice.Client, tfrecords: TFRecordFiles
) -> None:
    uri = tfrecords.uris[0]
    index = tfrecord.build_index(client, uri)
    meta = tfrecord.write_index(client, uri, index)
    assert meta.uri == uri + ".idx"
    assert (tfrecords.files.dir / "a.tfrecord.idx").read_bytes() == reference_index(
        tfrecords.paths[0]
    )
    assert tfrecord.load_index(client, uri + ".idx") == index
    elsewhere = tfrecords.files.uri("indexes/a.idx")
    tfrecord.write_index(client, uri, index, elsewhere)
    assert tfrecord.load_index(client, elsewhere) == index

    # One index given beside its file, the others built.
    assert tfrecord.load_indexes(client, tfrecords.uris) == [
        tfrecord.build_index(client, uri) for uri in tfrecords.uris
    ]
    with pytest.raises(sluice.NotFoundError):
        tfrecord.load_indexes(client, tfrecords.uris, build=False)

    (tfrecords.files.dir / "bad.idx").write_bytes(b"0 44\n12 x\n")
    with pytest.raises(TFRecordError, match="line 2") as bad:
        tfrecord.load_index(client, tfrecords.files.uri("bad.idx"))
    assert bad.value.uri == tfrecords.files.uri("bad.idx")


def test_read_records_returns_what_the_tfrecord_reader_decodes(
    daemon: Daemon, tfrecords: TFRecordFiles
) -> None:
    client = CountingClient(daemon.address)
    for uri, expected in zip(tfrecords.uris, tfrecords.records):
        index = tfrecord.build_index(client, uri)
        assert len(index) == len(expected)
        client.calls.clear()
        got = tfrecord.read_records(client, uri, index, range(len(index)), verify_crc=True)
        assert got == expected
        # One batched call, one range per record.
        assert client.calls == Counter(get_many=1) and client.batches[-1] == len(index)
    index = tfrecord.build_index(client, tfrecords.uris[0])
    picked = [5, 0, 5, len(index) - 1]
    assert tfrecord.read_records(client, tfrecords.uris[0], index, picked) == [
        tfrecords.records[0][i] for i in picked
    ]


def test_records_decode_as_examples(client: sluice.Client, tfrecords: TFRecordFiles) -> None:
    from tfrecord import example_pb2

    index = tfrecord.build_index(client, tfrecords.uris[2])
    first = tfrecord.read_records(client, tfrecords.uris[2], index, [0])[0]
    assert example_pb2.Example.FromString(first).features.feature["id"].int64_list.value == [60]


def truncated(tfrecords: TFRecordFiles, name: str, cut: int) -> str:
    data = tfrecords.paths[0].read_bytes()
    (tfrecords.files.dir / name).write_bytes(data[:cut])
    return tfrecords.files.uri(name)


def test_truncated_files_raise_naming_the_uri_and_offset(
    client: sluice.Client, tfrecords: TFRecordFiles
) -> None:
    index = tfrecord.build_index(client, tfrecords.uris[0])
    offset, size = index[10]
    for name, cut, what in (
        ("mid-header.tfrecord", offset + 5, "truncated record header"),
        ("mid-data.tfrecord", offset + size - 6, "truncated record"),
        ("mid-footer.tfrecord", offset + size - 2, "truncated record"),
    ):
        uri = truncated(tfrecords, name, cut)
        for window in (tfrecord.DEFAULT_WINDOW, TINY_WINDOW):
            with pytest.raises(TFRecordError, match=what) as error:
                tfrecord.build_index(client, uri, window=window)
            assert (error.value.uri, error.value.offset) == (uri, offset)
            assert uri in str(error.value) and f"offset {offset}" in str(error.value)
    # The index of the whole file over a truncated one: the cut record.
    uri = truncated(tfrecords, "short.tfrecord", offset + 20)
    with pytest.raises(TFRecordError, match=f"offset {offset}") as error:
        tfrecord.read_records(client, uri, index, [9, 10])
    assert error.value.uri == uri


def flipped(tfrecords: TFRecordFiles, name: str, at: int) -> str:
    data = bytearray(tfrecords.paths[0].read_bytes())
    data[at] ^= 0x10
    (tfrecords.files.dir / name).write_bytes(bytes(data))
    return tfrecords.files.uri(name)


def test_a_flipped_crc_is_caught(client: sluice.Client, tfrecords: TFRecordFiles) -> None:
    index = tfrecord.build_index(client, tfrecords.uris[0])
    offset, size = index[20]
    # The data's CRC: only verify_crc reads it.
    uri = flipped(tfrecords, "data-crc.tfrecord", offset + size - 1)
    assert tfrecord.build_index(client, uri) == index
    assert len(tfrecord.read_records(client, uri, index, [20])) == 1
    for window in (tfrecord.DEFAULT_WINDOW, TINY_WINDOW):
        with pytest.raises(TFRecordError, match="data CRC") as error:
            tfrecord.build_index(client, uri, verify_crc=True, window=window)
        assert (error.value.uri, error.value.offset) == (uri, offset)
    with pytest.raises(TFRecordError, match=f"{uri}: corrupt record at offset {offset}"):
        tfrecord.read_records(client, uri, index, [19, 20], verify_crc=True)
    # The length's CRC: always checked.
    uri = flipped(tfrecords, "length-crc.tfrecord", offset + 9)
    with pytest.raises(TFRecordError, match=f"corrupt record header at offset {offset}"):
        tfrecord.build_index(client, uri)
    with pytest.raises(TFRecordError, match=f"{uri}: corrupt record header"):
        tfrecord.read_records(client, uri, index, [20])


def test_an_index_of_another_file_is_refused(
    client: sluice.Client, tfrecords: TFRecordFiles
) -> None:
    index = tfrecord.build_index(client, tfrecords.uris[0])
    shifted = [(offset + 1, size) for offset, size in index]
    with pytest.raises(TFRecordError) as error:
        tfrecord.read_records(client, tfrecords.uris[0], shifted, [3])
    assert error.value.offset == index[3][0] + 1
    resized = [(offset, size + 1) for offset, size in index]
    with pytest.raises(TFRecordError, match="the index says"):
        tfrecord.read_records(client, tfrecords.uris[0], resized, [3])


def test_build_index_reads_headers_through_bounded_windows(daemon: Daemon, files: Files) -> None:
    """Records larger than the window: one window, then a probe for each
    header, never the data; verifying reads everything, window by window."""
    path = files.dir / "large.tfrecord"
    writer = TFRecordWriter(str(path))
    for _ in range(5):
        write_raw(writer, os.urandom(300_000))
    writer.close()
    uri = files.uri("large.tfrecord")
    client = CountingClient(daemon.address)
    window = 256 << 10
    index = tfrecord.build_index(client, uri, window=window)
    assert [offset for offset, _ in index] == [300_016 * i for i in range(5)]
    assert client.lengths == [window] + [64 << 10] * 4
    client.lengths.clear()
    assert tfrecord.build_index(client, uri, verify_crc=True, window=window) == index
    assert max(client.lengths) == window
    assert sum(client.lengths) >= path.stat().st_size
    assert len(client.lengths) <= path.stat().st_size // window + 2 * len(index)

    # Small records: whole windows, one after the other.
    path = files.dir / "small.tfrecord"
    writer = TFRecordWriter(str(path))
    rng = random.Random(5)
    for _ in range(400):
        write_raw(writer, rng.randbytes(rng.randrange(1000, 3000)))
    writer.close()
    size = path.stat().st_size
    client.lengths.clear()
    assert len(tfrecord.build_index(client, files.uri("small.tfrecord"), window=window)) == 400
    assert len(client.lengths) <= size // (window - 3016) + 1
    assert client.lengths[:-1] == [window] * (len(client.lengths) - 1)


def test_pure_python_crc32c_matches_the_packages() -> None:
    assert _crc32c.python_crc32c(b"123456789") == 0xE3069283  # the check value
    assert _crc32c.IMPLEMENTATION == "crc32c"  # installed with the tfrecord package
    data = os.urandom(10_000)
    whole = _crc32c.python_crc32c(data)
    assert whole == _crc32c.crc32c(data) == _crc32c.crc32c(data[4000:], _crc32c.crc32c(data[:4000]))
    assert (
        _crc32c.python_crc32c(memoryview(data)[4000:], _crc32c.python_crc32c(data[:4000])) == whole
    )
    for sample in (b"", data[:8], data):
        expected = TFRecordWriter.masked_crc(sample)
        assert _crc32c.masked(_crc32c.python_crc32c(sample)).to_bytes(4, "little") == expected


def test_a_raw_record_round_trips(client: sluice.Client, files: Files) -> None:
    path = files.dir / "raw.tfrecord"
    writer = TFRecordWriter(str(path))
    payloads = [b"", b"x", os.urandom(70_000), b""]
    for payload in payloads:
        write_raw(writer, payload)
    writer.close()
    uri = files.uri("raw.tfrecord")
    index = tfrecord.build_index(client, uri, verify_crc=True)
    assert [size for _, size in index] == [len(p) + 16 for p in payloads]
    assert tfrecord.read_records(client, uri, index, range(4), verify_crc=True) == payloads
    assert records_of(pathlib.Path(path)) == payloads
