"""put, open_writer and delete."""

from __future__ import annotations

import gc
import io
import pickle

import numpy as np
import pytest

import sluice
from conftest import MiB, Daemon, Files, wait_for


def uploads_in_flight(daemon: Daemon) -> float:
    """Writes in progress: through shared memory (local) or on the stream."""
    return sum(
        daemon.metric(f'sluice_rpc_in_flight{{method="{method}"}}')
        for method in ("write", "upload")
    )


def write_idle(daemon: Daemon) -> bool:
    return uploads_in_flight(daemon) == 0


def test_put_round_trip(client: sluice.Client, files: Files) -> None:
    uri = files.uri("p.bin")
    meta = client.put(uri, b"hello sluice")
    assert (meta.uri, meta.size) == (uri, 12)
    with client.get(uri) as buf:
        assert bytes(buf) == b"hello sluice"
    array = np.arange(1000, dtype=np.float32)
    client.put(uri, array)  # any buffer, any item type
    with client.get(uri) as buf:
        assert np.array_equal(np.frombuffer(buf, dtype=np.float32), array)
    client.put(uri, memoryview(bytearray(b"abcdef"))[::2])  # not contiguous
    with client.get(uri) as buf:
        assert bytes(buf) == b"ace"
    client.put(uri, b"")
    assert client.stat(uri).size == 0


def test_writer_streams_a_multipart_upload(
    client: sluice.Client, files: Files
) -> None:
    uri = files.uri("ckpt.bin")
    data = files.rng.randbytes(12 * MiB + 7)
    with client.open_writer(uri) as writer:
        assert writer.writable() and not writer.seekable()
        # Small and large writes, unaligned to any chunk or part size.
        writer.write(data[:10])
        writer.write(memoryview(data)[10 : 3 * MiB])
        writer.flush()
        writer.write(bytearray(data[3 * MiB : 11 * MiB + 5]))
        writer.write(data[11 * MiB + 5 :])
        assert writer.tell() == len(data)
    assert writer.closed
    assert writer.meta is not None and writer.meta.size == len(data)
    assert writer._native._parts == 3  # 5 MiB parts on this daemon
    assert writer.close() == writer.meta  # closing again
    with client.get(uri) as buf:
        assert bytes(buf) == data
    with pytest.raises(ValueError):
        writer.write(b"late")


def test_pickle_dump_through_a_writer(client: sluice.Client, files: Files) -> None:
    uri = files.uri("state.pkl")
    state = {"weights": np.arange(300_000, dtype=np.float64), "epoch": 3}
    with client.open_writer(uri) as writer:
        pickle.dump(state, writer, protocol=5)
    with client.get(uri) as buf:
        loaded = pickle.loads(bytes(buf))
    assert loaded["epoch"] == 3 and np.array_equal(loaded["weights"], state["weights"])


def test_torch_save_through_a_writer(client: sluice.Client, files: Files) -> None:
    torch = pytest.importorskip("torch")
    uri = files.uri("model.pt")
    state = {"w": torch.arange(100_000, dtype=torch.float32)}
    with client.open_writer(uri) as writer:
        torch.save(state, writer)
    with client.get(uri) as buf:
        loaded = torch.load(io.BytesIO(bytes(buf)))
    assert torch.equal(loaded["w"], state["w"])


def test_an_exception_in_the_with_block_does_not_create_the_object(
    client: sluice.Client, files: Files, daemon: Daemon
) -> None:
    uri = files.uri("broken.bin")
    with pytest.raises(RuntimeError, match="boom"):
        with client.open_writer(uri) as writer:
            writer.write(b"x" * (6 * MiB))  # past one part
            raise RuntimeError("boom")
    assert writer.closed
    wait_for(lambda: write_idle(daemon), what="the upload to end")
    with pytest.raises(FileNotFoundError):
        client.stat(uri)


def test_an_aborted_writer_keeps_the_old_object(
    client: sluice.Client, files: Files, daemon: Daemon
) -> None:
    uri = files.uri("keep.bin")
    client.put(uri, b"old")
    writer = client.open_writer(uri)
    writer.write(b"new content")
    writer.abort()
    wait_for(lambda: write_idle(daemon), what="the upload to end")
    with client.get(uri) as buf:
        assert bytes(buf) == b"old"
    with pytest.raises(ValueError):
        writer.write(b"more")
    with pytest.raises(ValueError):
        writer.close()


def test_a_writer_collected_without_close_is_discarded(
    client: sluice.Client, files: Files, daemon: Daemon
) -> None:
    uri = files.uri("dropped.bin")
    writer = client.open_writer(uri)
    writer.write(b"y" * 1000)
    writer.flush()
    wait_for(
        lambda: uploads_in_flight(daemon) == 1,
        what="the upload to start",
    )
    del writer
    gc.collect()
    wait_for(lambda: write_idle(daemon), what="the upload to end")
    with pytest.raises(FileNotFoundError):
        client.stat(uri)


def test_a_failed_upload_raises(client: sluice.Client) -> None:
    with pytest.raises(PermissionError) as denied:
        with client.open_writer("file:///sluice-outside-the-root/x.bin") as writer:
            writer.write(b"z" * 100)
    assert isinstance(denied.value, sluice.SluiceError)
    assert denied.value.code == "PERMISSION_DENIED"
    with pytest.raises(PermissionError):
        client.put("file:///sluice-outside-the-root/x.bin", b"z")


def test_delete(client: sluice.Client, files: Files) -> None:
    for name in ("d/a", "d/b", "d/c/d"):
        client.put(files.uri(name), name.encode())
    assert client.delete(files.uri("d/a")) == 1
    with pytest.raises(FileNotFoundError):
        client.stat(files.uri("d/a"))
    assert client.delete(files.uri("d/"), recursive=True) == 2
    assert list(client.list(files.uri("d/"))) == []


def test_warm_then_evict(client: sluice.Client, files: Files, daemon: Daemon) -> None:
    made = [files.make(f"w{i}.bin", 5000 + i) for i in range(5)]
    done = client.warm(files.uri())
    assert (done["listed_objects"], done["warmed_objects"], done["failed_objects"]) == (5, 5, 0)
    assert done["warmed_bytes"] == sum(len(data) for _, data in made)
    assert not done["cache_full"]
    hits = daemon.metric("sluice_cache_hits_total")
    for uri, data in made:
        with client.get(uri) as buf:
            assert bytes(buf) == data
    assert daemon.metric("sluice_cache_hits_total") - hits == 5
    assert client.warm(files.uri())["cached_objects"] == 5
    assert client.evict(files.uri()) == 5  # the tests run as root: an admin
    with pytest.raises(PermissionError):
        client.warm("file:///sluice-not-a-root/")
