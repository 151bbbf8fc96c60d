"""Reads: content, zero copy over shared memory, and lease lifetime."""

from __future__ import annotations

import ctypes
import gc
import warnings

import numpy as np
import pytest

import sluice
from conftest import MiB, Daemon, Files, wait_for


def test_get_whole_range_and_empty_are_byte_exact(client: sluice.Client, files: Files) -> None:
    uri, data = files.make("a.bin", 300_000)
    with client.get(uri) as buf:
        assert len(buf) == len(data)
        assert bytes(buf) == data
        assert buf.meta.uri == uri and buf.meta.size == len(data)
    with client.get(uri, offset=1000, length=5000) as buf:
        assert bytes(buf) == data[1000:6000]
    with client.get(uri, offset=299_990) as buf:
        assert bytes(buf) == data[299_990:]
    with client.get(uri, length=10) as buf:
        assert bytes(buf) == data[:10]
    with client.get(uri, offset=299_995, length=10) as buf:
        assert bytes(buf) == data[299_995:]  # clipped to the object
    with pytest.raises(ValueError) as past_end:
        client.get(uri, offset=len(data) + 5, length=10)
    assert isinstance(past_end.value, sluice.SluiceError)

    empty, _ = files.make("empty.bin", 0)
    with client.get(empty) as buf:
        assert len(buf) == 0 and bytes(buf) == b""
        assert memoryview(buf).nbytes == 0
        assert buf.meta.size == 0


def test_stat_and_list(client: sluice.Client, files: Files) -> None:
    a, data = files.make("a.bin", 1234)
    (files.dir / "sub").mkdir()
    (files.dir / "sub" / "b.bin").write_bytes(b"b")
    meta = client.stat(a)
    assert isinstance(meta, sluice.ObjectMeta)
    assert (meta.uri, meta.size) == (a, 1234)
    assert meta.etag and meta.last_modified is not None
    assert meta.last_modified.tzinfo is not None

    recursive = list(client.list(files.uri()))
    assert [m.uri for m in recursive] == [a, files.uri("sub/b.bin")]
    assert all(isinstance(m, sluice.ObjectMeta) for m in recursive)
    one_level = list(client.list(files.uri(), recursive=False))
    assert one_level == [meta, files.uri("sub/")]


def test_zero_copy_into_the_mapped_arena(client: sluice.Client, files: Files) -> None:
    uri, data = files.make("z.bin", 256 * 1024)
    buf = client.get(uri)
    assert client._session_info()["shared_memory"] is True
    assert buf.shared_memory and buf.zero_copy
    address = buf._address
    assert client._is_mapped(address)
    ranges = client._mapped_ranges()
    assert ranges, "no arena segment mapped"
    assert any(start <= address and address + len(buf) <= end for start, end in ranges)

    view = memoryview(buf)
    assert view.readonly and view.nbytes == len(data) and view.format == "B"
    array = np.frombuffer(buf, dtype=np.uint8)
    assert array.__array_interface__["data"][0] == address
    assert not array.flags.writeable
    assert np.shares_memory(array, np.frombuffer(view, dtype=np.uint8))
    assert array.tobytes() == data
    words = np.frombuffer(buf, dtype=np.uint32, count=4, offset=8)
    assert words.__array_interface__["data"][0] == address + 8
    with pytest.raises((BufferError, TypeError)):
        view[0] = 1  # read-only
    assert buf._exports == 3
    del view, array, words
    assert buf._exports == 0
    buf.close()


def test_torch_frombuffer_sees_the_leased_bytes(client: sluice.Client, files: Files) -> None:
    torch = pytest.importorskip("torch")
    uri, data = files.make("t.bin", 4096)
    with client.get(uri) as buf:
        with warnings.catch_warnings():
            # The tensor aliases read-only memory, which torch warns about.
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.frombuffer(buf, dtype=torch.uint8)
        assert tensor.data_ptr() == buf._address
        assert bytes(tensor.numpy().tobytes()) == data
        del tensor


def test_bytes_copies(client: sluice.Client, files: Files) -> None:
    uri, data = files.make("c.bin", 10_000)
    with client.get(uri) as buf:
        copy = bytes(buf)
        assert copy == data == buf.tobytes()
        assert np.frombuffer(copy, dtype=np.uint8).__array_interface__["data"][0] != buf._address
    assert copy == data  # still there after the lease is gone


def test_multi_part_results_are_one_contiguous_buffer(
    client: sluice.Client, files: Files
) -> None:
    # Above the daemon's cache limit (8 MiB here): streamed in 1 MiB extents.
    uri, data = files.make("big.bin", 9 * MiB + 123)
    with client.get(uri) as buf:
        assert not buf.zero_copy
        assert len(buf) == len(data)
        assert memoryview(buf).c_contiguous
        assert bytes(buf) == data
    with client.get(uri, offset=MiB - 10, length=20) as buf:
        assert bytes(buf) == data[MiB - 10 : MiB + 10]


def test_close_releases_the_lease(client: sluice.Client, files: Files, no_leases: Daemon) -> None:
    uri, data = files.make("l.bin", 100_000)
    buf = client.get(uri)
    wait_for(lambda: no_leases.leased_bytes() >= len(data), what="the lease")
    buf.close()
    assert buf.closed
    wait_for(lambda: no_leases.leased_bytes() == 0, what="the release on close()")
    buf.close()  # twice is fine
    with pytest.raises(ValueError):
        memoryview(buf)
    with pytest.raises(ValueError):
        bytes(buf)


def test_with_releases_the_lease(client: sluice.Client, files: Files, no_leases: Daemon) -> None:
    uri, data = files.make("w.bin", 100_000)
    with client.get(uri) as buf:
        wait_for(lambda: no_leases.leased_bytes() >= len(data), what="the lease")
    assert buf.closed
    wait_for(lambda: no_leases.leased_bytes() == 0, what="the release on exit")


def test_collection_releases_the_lease(
    client: sluice.Client, files: Files, no_leases: Daemon
) -> None:
    uri, data = files.make("g.bin", 100_000)
    buf = client.get(uri)
    array = np.frombuffer(buf, dtype=np.uint8)
    del buf  # the array keeps it alive
    gc.collect()
    wait_for(lambda: no_leases.leased_bytes() >= len(data), what="the lease")
    assert array.tobytes() == data
    del array
    gc.collect()
    wait_for(lambda: no_leases.leased_bytes() == 0, what="the release on collection")


def test_close_with_a_live_export_raises(client: sluice.Client, files: Files) -> None:
    uri, data = files.make("e.bin", 1000)
    buf = client.get(uri)
    view = memoryview(buf)
    with pytest.raises(BufferError):
        buf.close()
    with pytest.raises(BufferError):
        with buf:
            pass
    assert not buf.closed
    assert bytes(view) == data  # still valid
    view.release()
    buf.close()
    assert buf.closed


def test_writable_export_is_refused(client: sluice.Client, files: Files) -> None:
    uri, _ = files.make("r.bin", 100)
    with client.get(uri) as buf:
        with pytest.raises((BufferError, TypeError)):
            (ctypes.c_char * 100).from_buffer(buf)
        with pytest.raises(ValueError):
            np.frombuffer(buf, dtype=np.uint8).setflags(write=True)
        # bytearray() copies; it must not need a writable export.
        assert len(bytearray(buf)) == 100


def test_over_tcp_the_buffer_owns_the_bytes(daemon: Daemon, files: Files) -> None:
    client = sluice.Client(daemon.tcp_address)
    assert client._session_info()["shared_memory"] is False
    uri, data = files.make("tcp.bin", 3 * MiB + 5)
    with client.get(uri) as buf:
        assert not buf.shared_memory and buf.zero_copy
        assert not client._is_mapped(buf._address)
        array = np.frombuffer(buf, dtype=np.uint8)
        assert array.__array_interface__["data"][0] == buf._address
        assert array.tobytes() == data
        del array
    with client.get(uri, offset=10, length=10) as buf:
        assert bytes(buf) == data[10:20]
