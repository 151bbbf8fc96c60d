"""sluice.fsspec on a real daemon: paths, options, listings, reads (batched
ranges, read-ahead, the node cache), streamed writes, errors, and pandas and
pyarrow reading and writing through it."""

from __future__ import annotations

import errno
import math
import os
import pickle
import threading
from collections import Counter
from typing import Any

import pytest

pytest.importorskip("fsspec", reason="sluice.fsspec needs fsspec (pip install 'sluice[fsspec]')")

import fsspec  # noqa: E402

import sluice  # noqa: E402
from conftest import MiB, Daemon, Files  # noqa: E402
from sluice.fsspec import SluiceFileSystem  # noqa: E402
from sluice.fsspec._errors import as_os_error  # noqa: E402
from sluice.fsspec._paths import to_uri  # noqa: E402


class CountingClient(sluice.Client):
    """A client that counts its calls by method."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.calls: Counter[str] = Counter()

    def get(self, *args: Any, **kwargs: Any) -> sluice.Buffer:
        self.calls["get"] += 1
        return super().get(*args, **kwargs)

    def get_many(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["get_many"] += 1
        return super().get_many(*args, **kwargs)

    def put(self, *args: Any, **kwargs: Any) -> sluice.ObjectMeta:
        self.calls["put"] += 1
        return super().put(*args, **kwargs)

    def open_writer(self, uri: str) -> sluice.Writer:
        self.calls["open_writer"] += 1
        return super().open_writer(uri)


@pytest.fixture
def counting(daemon: Daemon) -> CountingClient:
    return CountingClient(daemon.address)


@pytest.fixture
def fs(daemon: Daemon) -> SluiceFileSystem:
    return SluiceFileSystem(daemon.address, skip_instance_cache=True)


def fs_dir(files: Files) -> str:
    """The fsspec path of the test's directory."""
    return f"file{files.dir}"


def backend_read_bytes(daemon: Daemon) -> float:
    return daemon.metric('sluice_backend_transferred_bytes_total{backend="file",direction="read"}')


# Paths and options.


@pytest.mark.parametrize(
    ("given", "path", "uri"),
    [
        ("sluice://s3/bucket/a/key", "s3/bucket/a/key", "s3://bucket/a/key"),
        ("s3://bucket/a/key", "s3/bucket/a/key", "s3://bucket/a/key"),
        ("sluice://s3://bucket/a/", "s3/bucket/a", "s3://bucket/a"),
        ("s3/host:9000/bucket/k", "s3/host:9000/bucket/k", "s3://host:9000/bucket/k"),
        ("sluice://file/data/x/", "file/data/x", "file:///data/x"),
        ("file:///data/x", "file/data/x", "file:///data/x"),
        ("sluice://direct/nvme/set", "direct/nvme/set", "direct:///nvme/set"),
        ("sluice://gs/bucket/o", "gs/bucket/o", "gs://bucket/o"),
        ("az://acct/container/blob", "az/acct/container/blob", "az://acct/container/blob"),
    ],
)
def test_path_mapping(given: str, path: str, uri: str) -> None:
    assert SluiceFileSystem._strip_protocol(given) == path
    assert to_uri(path) == uri
    assert SluiceFileSystem._strip_protocol(uri) == path  # and back


def test_protocol_helpers_agree() -> None:
    fs = SluiceFileSystem("unix:///nowhere.sock", skip_instance_cache=True)
    assert fs.unstrip_protocol("s3/b/k") == "sluice://s3/b/k"
    assert fs.unstrip_protocol("sluice://s3/b/k") == "sluice://s3/b/k"
    assert fs.unstrip_protocol("file:///data/x") == "sluice://file/data/x"
    assert fs._parent("sluice://s3/b/dir/k") == "s3/b/dir"
    assert fs._parent("file:///data/x") == "file/data"
    assert fs._parent("s3/b") == "s3" and fs._parent("s3") == ""
    with pytest.raises(ValueError, match="names a backend"):
        to_uri("")


def test_the_protocol_is_registered(daemon: Daemon, files: Files) -> None:
    """Through the package's entry point: no import of sluice.fsspec needed."""
    assert fsspec.get_filesystem_class("sluice") is SluiceFileSystem
    uri, data = files.make("r.bin", 100)
    fs, path = fsspec.core.url_to_fs(f"sluice://{fs_dir(files)}/r.bin", address=daemon.address)
    assert isinstance(fs, SluiceFileSystem) and path == f"{fs_dir(files)}/r.bin"
    assert fs.info(path)["uri"] == uri
    with fsspec.open(f"sluice://{path}", "rb", address=daemon.address) as f:
        assert f.read() == data


def test_address_from_the_environment(
    daemon: Daemon, files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sluice.ADDRESS_ENV, daemon.address)
    fs = SluiceFileSystem(skip_instance_cache=True)
    assert fs.client.address == daemon.address
    files.make("e.bin", 3)
    assert fs.size(f"{fs_dir(files)}/e.bin") == 3


def test_filesystems_of_one_daemon_share_a_client(daemon: Daemon) -> None:
    """fsspec keeps a filesystem per thread; one client (one session) serves
    them all."""
    made: list[SluiceFileSystem] = []
    thread = threading.Thread(target=lambda: made.append(SluiceFileSystem(daemon.address)))
    thread.start()
    thread.join()
    here = SluiceFileSystem(daemon.address)
    assert made[0] is not here and made[0].client is here.client
    assert SluiceFileSystem(daemon.tcp_address).client is not here.client


def test_options_and_pickling(daemon: Daemon, files: Files) -> None:
    client = sluice.Client(daemon.address)
    fs = SluiceFileSystem(client=client, block_size=MiB, window=4, skip_instance_cache=True)
    assert fs.client is client and fs.blocksize == MiB and fs.window == 4
    clashes: list[dict[str, Any]] = [{"address": daemon.address}, {"token_file": "/run/x"}]
    for clash in clashes:
        with pytest.raises(ValueError, match="not both"):
            SluiceFileSystem(client=client, skip_instance_cache=True, **clash)
    # Options of other layers pass (Hugging Face datasets adds {"hf": ...}).
    SluiceFileSystem(daemon.address, hf={"token": None}, skip_instance_cache=True)
    tcp = SluiceFileSystem(daemon.tcp_address, skip_instance_cache=True)
    _, data = files.make("p.bin", 2000)
    again = pickle.loads(pickle.dumps(tcp))
    assert again.client.address == daemon.tcp_address and again.window == tcp.window
    assert again.cat_file(f"{fs_dir(files)}/p.bin", 10, 20) == data[10:20]
    tcp.pipe_file(f"{fs_dir(files)}/q.bin", b"over tcp")
    assert (files.dir / "q.bin").read_bytes() == b"over tcp"


# Listings.


def make_tree(files: Files) -> str:
    for name in ("a.txt", "d/b.txt", "d/e/c.txt", "d-x.txt"):
        (files.dir / name).parent.mkdir(parents=True, exist_ok=True)
        (files.dir / name).write_bytes(name.encode())
    (files.dir / "empty" / "deeper").mkdir(parents=True)  # no object below
    return fs_dir(files)


def test_ls_info_and_directories(fs: SluiceFileSystem, files: Files) -> None:
    top = make_tree(files)
    # In the daemon's order, S3's: "d-x.txt" < "d/".
    assert fs.ls(top, detail=False) == [f"{top}/a.txt", f"{top}/d-x.txt", f"{top}/d"]
    listing = {info["name"]: info for info in fs.ls(f"sluice://{top}/")}
    assert listing[f"{top}/d"] == {"name": f"{top}/d", "size": 0, "type": "directory"}
    a = listing[f"{top}/a.txt"]
    assert (a["type"], a["size"], a["uri"]) == ("file", 5, files.uri("a.txt"))
    assert a["etag"] and a["last_modified"].timestamp() == a["mtime"]
    assert fs.info(f"{top}/a.txt") == a
    assert fs.ls(f"{top}/a.txt") == [a]  # a file lists as itself
    assert fs.info(f"{top}/d")["type"] == "directory"
    assert fs.isdir(f"{top}/d") and not fs.isfile(f"{top}/d")
    assert fs.isfile(f"{top}/d/b.txt") and not fs.isdir(f"{top}/d/b.txt")
    # A directory tree with no object in it does not exist.
    for missing in (f"{top}/empty", f"{top}/empty/deeper", f"{top}/nothing"):
        assert not fs.exists(missing) and not fs.isdir(missing)
        with pytest.raises(FileNotFoundError):
            fs.ls(missing)
    assert fs.modified(f"{top}/a.txt") == a["last_modified"]


def test_find_glob_du(fs: SluiceFileSystem, files: Files) -> None:
    top = make_tree(files)
    assert fs.find(top) == [f"{top}/{n}" for n in ("a.txt", "d-x.txt", "d/b.txt", "d/e/c.txt")]
    assert fs.find(top, withdirs=True) == sorted(
        [top, f"{top}/d", f"{top}/d/e"]
        + [f"{top}/{n}" for n in ("a.txt", "d-x.txt", "d/b.txt", "d/e/c.txt")]
    )
    assert fs.find(top, maxdepth=1) == [f"{top}/a.txt", f"{top}/d-x.txt"]
    assert fs.find(f"{top}/a.txt") == [f"{top}/a.txt"]
    assert fs.find(f"{top}/nothing") == []
    assert fs.glob(f"{top}/d*") == [f"{top}/d", f"{top}/d-x.txt"]
    assert fs.glob(f"sluice://{top}/**/*.txt") == fs.find(top)
    assert fs.du(top) == sum(len(n) for n in ("a.txt", "d/b.txt", "d/e/c.txt", "d-x.txt"))
    assert fs.du(f"{top}/d", total=False) == {f"{top}/d/b.txt": 7, f"{top}/d/e/c.txt": 9}


def test_rm_leaves_no_directory_behind(fs: SluiceFileSystem, files: Files) -> None:
    top = make_tree(files)
    with pytest.raises(IsADirectoryError):
        fs.rm_file(f"{top}/d")
    with pytest.raises(OSError) as caught:
        fs.rmdir(f"{top}/d")
    assert caught.value.errno == errno.ENOTEMPTY
    fs.rm(f"{top}/d", recursive=True)
    assert (files.dir / "d").is_dir()  # still on disk, empty
    assert not fs.exists(f"{top}/d")
    assert fs.ls(top, detail=False) == [f"{top}/a.txt", f"{top}/d-x.txt"]
    fs.rmdir(f"{top}/d")  # nothing below: fine
    fs.rm([f"{top}/a.txt", f"{top}/d-x.txt"])
    assert fs.find(top) == []
    with pytest.raises(FileNotFoundError):
        fs.rm(f"{top}/gone", recursive=True)
    with pytest.raises(FileNotFoundError):
        fs.rm_file(f"{top}/gone")
    fs.makedirs(f"{top}/new/dir", exist_ok=False)  # object-store: nothing to make
    fs.mkdir(f"{top}/new")
    assert not fs.exists(f"{top}/new")


def test_an_s3_bucket(s3_daemon: Daemon, s3: Any) -> None:
    """The same model on an object store (the test's S3-compatible server):
    a bucket is a directory without a stat, prefixes are directories."""
    fs = SluiceFileSystem(s3_daemon.address, skip_instance_cache=True)
    top = fs._strip_protocol(s3.bucket("fsspec-bucket"))
    assert top == "s3/fsspec-bucket" and fs.ls(top) == []  # empty, but there
    fs.pipe({f"{top}/a.bin": b"a", f"{top}/d/b.bin": b"bb", f"{top}/d/e/c.bin": b"ccc"})
    assert fs.info(f"sluice://{top}") == {"name": top, "size": 0, "type": "directory"}
    assert fs.ls(top, detail=False) == [f"{top}/a.bin", f"{top}/d"]
    assert fs.find(top, withdirs=True) == [
        top, f"{top}/a.bin", f"{top}/d", f"{top}/d/b.bin", f"{top}/d/e", f"{top}/d/e/c.bin"
    ]
    assert fs.info(f"{top}/a.bin")["uri"] == "s3://fsspec-bucket/a.bin"
    assert fs.cat_ranges([f"{top}/a.bin", f"{top}/d/e/c.bin"], [0, 1], [None, -1]) == [b"a", b"c"]
    fs.rm(f"{top}/d", recursive=True)
    assert fs.ls(top, detail=False) == fs.find(top) == [f"{top}/a.bin"]
    for missing in ("s3/no-such-bucket", f"{top}/nothing"):
        assert not fs.exists(missing)
    with pytest.raises(FileNotFoundError, match="no-such-bucket"):
        fs.ls("s3/no-such-bucket")


# Errors.


def test_errors_name_what_failed(fs: SluiceFileSystem, files: Files, tmp_path: Any) -> None:
    top = make_tree(files)
    with pytest.raises(FileNotFoundError) as caught:
        fs.info(f"{top}/none.bin")
    assert files.uri("none.bin") in str(caught.value)
    with pytest.raises(FileNotFoundError, match="none.bin"):
        fs.open(f"{top}/none.bin")
    with pytest.raises(FileNotFoundError, match="none.bin"):
        fs.cat_file(f"{top}/none.bin")
    with pytest.raises(IsADirectoryError) as directory:
        fs.open(f"{top}/d")
    assert directory.value.filename == f"sluice://{top}/d"
    with pytest.raises(NotImplementedError, match="appended"):
        fs.open(f"{top}/a.txt", "ab")
    with pytest.raises(PermissionError, match="outside"):
        fs.ls("file/etc")
    with pytest.raises(PermissionError):
        fs.pipe_file("sluice://file/etc/sluice-test", b"x")
    with pytest.raises(ValueError):
        fs.info("nope/bucket/key")  # a scheme the daemon does not serve
    down = SluiceFileSystem(f"unix://{tmp_path}/nobody.sock", skip_instance_cache=True)
    with pytest.raises(ConnectionError):
        down.exists(f"{top}/a.txt")  # not False: the daemon is not there
    with pytest.raises(ConnectionError):
        down.isdir(top)


def test_errors_without_a_builtin_base_become_os_errors() -> None:
    limit = as_os_error(sluice.ResourceExhaustedError("piece larger than the lease quota"))
    assert isinstance(limit, OSError) and limit.errno == errno.EAGAIN
    changed = as_os_error(sluice.AbortedError("file:///x changed"))
    assert isinstance(changed, OSError) and changed.errno == errno.ESTALE
    assert "file:///x changed" in str(changed)
    missing = sluice.NotFoundError("file:///x")
    assert as_os_error(missing) is missing  # already a FileNotFoundError


# Reads.


def test_cat_file_slices(fs: SluiceFileSystem, files: Files) -> None:
    _, data = files.make("c.bin", 1000)
    path = f"{fs_dir(files)}/c.bin"
    for start, end in [
        (None, None), (0, None), (10, 20), (None, 5), (990, 2000), (1000, None),
        (1000, 1010), (2000, 3000), (-10, None), (-10, -2), (5, -990), (-5000, 3), (7, 7),
    ]:
        assert fs.cat_file(path, start, end) == data[start:end], (start, end)
    assert fs.head(path, 7) == data[:7] and fs.tail(path, 7) == data[-7:]
    assert fs.read_block(path, 100, 50) == data[100:150]


def test_cat_ranges_is_one_get_many(counting: CountingClient, files: Files) -> None:
    fs = SluiceFileSystem(client=counting, skip_instance_cache=True)
    made = [files.make(f"r{i}.bin", 3000 + i) for i in range(20)]
    paths = [f"{fs_dir(files)}/r{i}.bin" for i in range(20)]
    starts = [i * 10 for i in range(20)]
    ends = [i * 10 + 100 + i for i in range(20)]
    out = fs.cat_ranges(paths, starts, ends)
    assert out == [data[s:e] for (_, data), s, e in zip(made, starts, ends)]
    assert counting.calls == Counter(get_many=1)
    # Errors take their item's place, the others still read.
    mixed = [paths[0], f"{fs_dir(files)}/missing.bin", paths[1], paths[2]]
    out = fs.cat_ranges(mixed, [0, 0, 5000, -4], [4, 4, 6000, None])
    assert out[0] == made[0][1][:4] and out[2] == b"" and out[3] == made[2][1][-4:]
    assert isinstance(out[1], FileNotFoundError) and "missing.bin" in str(out[1])
    with pytest.raises(FileNotFoundError):
        fs.cat_ranges(mixed, 0, 4, on_error="raise")
    counting.calls.clear()
    assert fs.cat([paths[3], paths[4]]) == {paths[3]: made[3][1], paths[4]: made[4][1]}
    assert fs.cat(f"{fs_dir(files)}/r1?.bin") == {p: d for p, (_, d) in zip(paths[10:], made[10:])}
    assert counting.calls == Counter(get_many=2)


def test_cat_recursive_reads_objects_only(fs: SluiceFileSystem, files: Files) -> None:
    top = make_tree(files)
    got = fs.cat(f"{top}/d", recursive=True)
    assert got == {f"{top}/d/b.txt": b"d/b.txt", f"{top}/d/e/c.txt": b"d/e/c.txt"}
    got = fs.cat([f"{top}/a.txt", f"{top}/none"], on_error="omit")
    assert got == {f"{top}/a.txt": b"a.txt"}


def test_open_reads_ahead_in_blocks(counting: CountingClient, files: Files) -> None:
    fs = SluiceFileSystem(
        client=counting, block_size=MiB, whole_read_limit=0, skip_instance_cache=True
    )
    _, data = files.make("big.bin", 5 * MiB + 3)
    with fs.open(f"{fs_dir(files)}/big.bin") as f:
        assert f.blocksize == MiB and f.cache.name == "readahead"
        chunks = []
        while chunk := f.read(64 * 1024):
            chunks.append(chunk)
        f.seek(-10, os.SEEK_END)
        tail = f.read()
    assert b"".join(chunks) == data and tail == data[-10:]
    # One ranged read per miss, each for the 64 KiB asked and a block
    # more; the tail lies in the last one.
    assert counting.calls["get"] == math.ceil(len(data) / (MiB + 64 * 1024)) == 5


def test_second_read_of_a_file_is_a_cache_hit(
    counting: CountingClient, files: Files, daemon: Daemon
) -> None:
    fs = SluiceFileSystem(client=counting, block_size=64 * 1024, skip_instance_cache=True)
    _, data = files.make("hot.bin", 300_000)
    path = f"{fs_dir(files)}/hot.bin"
    with fs.open(path) as f:
        assert f.read(100) == data[:100]  # the first fetch reads it whole
        f.seek(200_000)
        assert f.read(50) == data[200_000:200_050]  # a ranged read
    backend, hits = backend_read_bytes(daemon), daemon.metric("sluice_cache_hits_total")
    with fs.open(path) as f:
        assert f.read() == data
    assert backend_read_bytes(daemon) == backend  # nothing from the file root
    assert daemon.metric("sluice_cache_hits_total") - hits == counting.calls["get"] - 2


def test_an_object_read_whole_but_not_cached_is_kept(
    counting: CountingClient, files: Files, daemon: Daemon
) -> None:
    """10 MiB is past this daemon's cache.max_object_size (8 MiB): the whole
    read arrives in this process's memory, not as a lease, and the file
    serves every fetch from it instead of going to the backend again."""
    fs = SluiceFileSystem(client=counting, block_size=MiB, skip_instance_cache=True)
    _, data = files.make("streamed.bin", 10 * MiB)
    backend = backend_read_bytes(daemon)
    with fs.open(f"{fs_dir(files)}/streamed.bin") as f:
        f.seek(len(data) - 100)
        assert f.read() == data[-100:]
        f.seek(0)
        assert f.read() == data
        assert f._whole is not None and not f._whole.shared_memory
        whole = f._whole
    assert whole.closed and f._whole is None
    assert counting.calls == Counter(get=1)
    assert backend_read_bytes(daemon) - backend == len(data)


def test_reads_over_tcp_keep_the_whole_object(daemon: Daemon, files: Files) -> None:
    client = CountingClient(daemon.tcp_address)
    fs = SluiceFileSystem(client=client, block_size=64 * 1024, skip_instance_cache=True)
    _, data = files.make("tcp.bin", 300_000)
    with fs.open(f"{fs_dir(files)}/tcp.bin") as f:
        pieces = [f.read(100_000) for _ in range(3)]
    assert pieces == [data[at : at + 100_000] for at in (0, 100_000, 200_000)]
    assert client.calls == Counter(get=1)


def test_get_file_small_and_large(
    counting: CountingClient, files: Files, tmp_path: Any
) -> None:
    fs = SluiceFileSystem(
        client=counting, block_size=MiB, whole_read_limit=2 * MiB, skip_instance_cache=True
    )
    _, small = files.make("s.bin", MiB + 1)
    _, large = files.make("l.bin", 5 * MiB + 1)
    fs.get_file(f"{fs_dir(files)}/s.bin", str(tmp_path / "s.bin"))
    assert counting.calls == Counter(get=1)  # whole: the daemon caches it
    sizes = []

    class Progress(fsspec.callbacks.Callback):  # type: ignore[misc]
        def set_size(self, size: int) -> None:
            sizes.append(size)

    fs.get_file(f"{fs_dir(files)}/l.bin", str(tmp_path / "sub" / "l.bin"), callback=Progress())
    assert counting.calls == Counter(get=1, get_many=1)  # 6 ranges, one call
    assert (tmp_path / "s.bin").read_bytes() == small
    assert (tmp_path / "sub" / "l.bin").read_bytes() == large and sizes == [len(large)]

    class Failing(fsspec.callbacks.Callback):  # type: ignore[misc]
        def relative_update(self, inc: int = 1) -> None:
            raise KeyboardInterrupt  # stopped after the first block

    with pytest.raises(KeyboardInterrupt):
        fs.get_file(f"{fs_dir(files)}/l.bin", str(tmp_path / "half.bin"), callback=Failing())
    assert not (tmp_path / "half.bin").exists()


# Writes.


def test_streamed_write_larger_than_a_part(
    counting: CountingClient, files: Files
) -> None:
    """The daemon uploads in 5 MiB parts: 12 MiB go up as three, streamed
    while written (one block buffered, never the whole file)."""
    fs = SluiceFileSystem(client=counting, block_size=2 * MiB, skip_instance_cache=True)
    path = f"{fs_dir(files)}/w.bin"
    data = files.rng.randbytes(12 * MiB + 5)
    with fs.open(path, "wb") as f:
        for at in range(0, len(data), 700_000):
            f.write(data[at : at + 700_000])
            assert f.buffer.tell() < 2 * MiB  # one block at most
        assert f._writer is not None and f._writer.tell() >= 10 * MiB
        assert not (files.dir / "w.bin").exists()  # nothing until close
    assert f._writer.closed and f._writer._native._parts == 3
    assert (files.dir / "w.bin").read_bytes() == data
    assert counting.calls == Counter(open_writer=1)


def test_small_writes_are_one_put(counting: CountingClient, files: Files) -> None:
    fs = SluiceFileSystem(client=counting, skip_instance_cache=True)
    top = fs_dir(files)
    with fs.open(f"{top}/s.txt", "w") as f:
        f.write("hello sluice\n")
    fs.touch(f"{top}/empty")
    fs.pipe(f"{top}/p.bin", b"\x00\x01")
    assert counting.calls == Counter(put=3)
    assert fs.cat(f"{top}/s.txt") == b"hello sluice\n" and fs.size(f"{top}/empty") == 0
    assert fs.read_text(f"{top}/s.txt") == "hello sluice\n"
    with pytest.raises(FileExistsError):
        fs.pipe_file(f"{top}/p.bin", b"again", mode="create")
    with pytest.raises(FileExistsError):
        fs.open(f"{top}/p.bin", "xb")


def test_a_failed_write_keeps_the_old_object(fs: SluiceFileSystem, files: Files) -> None:
    top = fs_dir(files)
    fs.pipe_file(f"{top}/keep.bin", b"old")
    for size in (10, 3 * MiB):  # one block, and a writer already streaming
        with pytest.raises(RuntimeError):
            with fs.open(f"{top}/keep.bin", "wb", block_size=MiB) as f:
                f.write(b"n" * size)
                raise RuntimeError("failed mid-write")
        assert f.closed and fs.cat_file(f"{top}/keep.bin") == b"old"
        with pytest.raises(RuntimeError):
            with fs.open(f"{top}/new.bin", "wb", block_size=MiB) as f:
                f.write(b"n" * size)
                raise RuntimeError("failed mid-write")
        assert not fs.exists(f"{top}/new.bin")


def test_transaction_commits_at_its_end(fs: SluiceFileSystem, files: Files) -> None:
    top = fs_dir(files)
    with fs.transaction:
        with fs.open(f"{top}/t1.bin", "wb") as f:
            f.write(b"one")
        with fs.open(f"{top}/t2.bin", "wb", block_size=MiB) as f:
            f.write(b"2" * (3 * MiB))
        assert not fs.exists(f"{top}/t1.bin") and not fs.exists(f"{top}/t2.bin")
    assert fs.cat_file(f"{top}/t1.bin") == b"one" and fs.size(f"{top}/t2.bin") == 3 * MiB
    with fs.transaction:
        fs.pipe_file(f"{top}/t3.bin", b"three")
        fs.cp_file(f"{top}/t2.bin", f"{top}/t4.bin")
        assert not fs.exists(f"{top}/t3.bin") and not fs.exists(f"{top}/t4.bin")
    assert fs.cat_file(f"{top}/t3.bin") == b"three" and fs.size(f"{top}/t4.bin") == 3 * MiB
    with pytest.raises(RuntimeError):
        with fs.transaction:
            fs.pipe_file(f"{top}/t5.bin", b"five")
            with fs.open(f"{top}/t1.bin", "wb") as f:
                f.write(b"not one")
            raise RuntimeError("discard")
    assert not fs.exists(f"{top}/t5.bin") and fs.cat_file(f"{top}/t1.bin") == b"one"


def test_put_cp_and_keys(
    counting: CountingClient, files: Files, tmp_path: Any
) -> None:
    fs = SluiceFileSystem(
        client=counting, block_size=MiB, whole_read_limit=MiB, skip_instance_cache=True
    )
    top = fs_dir(files)
    local = tmp_path / "up.bin"
    local.write_bytes(data := files.rng.randbytes(3 * MiB + 11))
    fs.put_file(str(local), f"{top}/up.bin")
    assert counting.calls == Counter(open_writer=1)
    fs.put_file(str(tmp_path), f"{top}/a-dir")  # a directory: nothing to do
    fs.cp_file(f"{top}/up.bin", f"{top}/copy.bin")
    assert counting.calls == Counter(open_writer=2, get_many=1)
    assert (files.dir / "copy.bin").read_bytes() == data
    key, checksum = fs.ukey(f"{top}/copy.bin"), fs.checksum(f"{top}/copy.bin")
    assert key == fs.ukey(f"{top}/copy.bin") and key != fs.ukey(f"{top}/up.bin")
    fs.pipe_file(f"{top}/copy.bin", b"rewritten")
    assert fs.ukey(f"{top}/copy.bin") != key and fs.checksum(f"{top}/copy.bin") != checksum
    fs.mv(f"{top}/copy.bin", f"{top}/moved.bin")
    assert fs.cat_file(f"{top}/moved.bin") == b"rewritten" and not fs.exists(f"{top}/copy.bin")


# pandas and pyarrow, unchanged, on sluice:// URLs.


@pytest.fixture
def frame() -> Any:
    pd = pytest.importorskip("pandas", reason="drives pandas: pip install pandas pyarrow")
    pytest.importorskip("pyarrow", reason="pandas reads Parquet with it: pip install pyarrow")
    rows = 20_000
    return pd.DataFrame(
        {
            "i": range(rows),
            "x": [i * 0.25 for i in range(rows)],
            "s": [f"sample {i:05}" for i in range(rows)],
        }
    )


def test_pandas_parquet_through_the_cache(
    frame: Any, daemon: Daemon, files: Files, tmp_path: Any
) -> None:
    import pandas as pd

    url = f"sluice://{fs_dir(files)}/frame.parquet"
    options = {"address": daemon.address}
    frame.to_parquet(url, storage_options=options)
    frame.to_parquet(tmp_path / "local.parquet")
    assert (files.dir / "frame.parquet").read_bytes() == (tmp_path / "local.parquet").read_bytes()
    cold = backend_read_bytes(daemon)
    pd.testing.assert_frame_equal(pd.read_parquet(url, storage_options=options), frame)
    backend, hits = backend_read_bytes(daemon), daemon.metric("sluice_cache_hits_total")
    assert backend - cold == len((files.dir / "frame.parquet").read_bytes())  # read once, whole
    again = pd.read_parquet(url, columns=["s", "i"], storage_options=options)
    pd.testing.assert_frame_equal(again, frame[["s", "i"]])
    assert backend_read_bytes(daemon) == backend  # served by the node's cache
    assert daemon.metric("sluice_cache_hits_total") > hits


def test_pandas_csv_text_mode(frame: Any, daemon: Daemon, files: Files) -> None:
    import pandas as pd

    url = f"sluice://{fs_dir(files)}/frame.csv.gz"
    options = {"address": daemon.address}
    frame.to_csv(url, index=False, storage_options=options)
    pd.testing.assert_frame_equal(pd.read_csv(url, storage_options=options), frame)


def test_pyarrow_dataset_and_parquet(frame: Any, counting: CountingClient, files: Files) -> None:
    import fsspec.parquet
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs = SluiceFileSystem(client=counting, skip_instance_cache=True)
    top = f"{fs_dir(files)}/ds"
    table = pa.Table.from_pandas(frame, preserve_index=False)
    parts = [table.slice(at, 7000) for at in range(0, table.num_rows, 7000)]
    for n, part in enumerate(parts):
        pq.write_table(part, f"{top}/part-{n}.parquet", filesystem=fs, row_group_size=2000)
    dataset = ds.dataset(top, format="parquet", filesystem=PyFileSystem(FSSpecHandler(fs)))
    assert sorted(dataset.files) == [f"{top}/part-{n}.parquet" for n in range(len(parts))]
    assert dataset.to_table().sort_by("i").equals(table)
    assert dataset.count_rows(filter=ds.field("i") >= 19_990) == 10
    direct = ds.dataset(top, format="parquet", filesystem=fs)  # pyarrow wraps it itself
    assert direct.to_table(columns=["s"]).num_rows == table.num_rows
    assert pq.read_table(f"{top}/part-1.parquet", filesystem=fs).equals(parts[1])
    with fs.open(f"{top}/part-2.parquet") as f:
        parquet = pq.ParquetFile(f)
        assert parquet.metadata.num_row_groups == 3
        assert parquet.read_row_group(2).equals(parts[2].slice(4000))
    # fsspec's Parquet helper fetches the footer, then the column chunks it
    # needs, each as one batch of ranges.
    counting.calls.clear()
    with fsspec.parquet.open_parquet_file(
        f"{top}/part-0.parquet", fs=fs, columns=["i"], engine="pyarrow"
    ) as f:
        assert pq.read_table(f, columns=["i"]).equals(parts[0].select(["i"]))
    assert counting.calls == Counter(get_many=2)


def test_hugging_face_datasets(frame: Any, daemon: Daemon, files: Files, tmp_path: Any) -> None:
    datasets = pytest.importorskip("datasets", reason="drives HF datasets: pip install datasets")
    top = f"sluice://{fs_dir(files)}"
    options = {"address": daemon.address}
    for n in range(2):
        frame[n::2].to_parquet(f"{top}/train-{n}.parquet", storage_options=options)
    source = {"data_files": f"{top}/train-*.parquet", "storage_options": options}
    loaded = datasets.load_dataset("parquet", split="train", cache_dir=str(tmp_path), **source)
    assert sorted(loaded["i"]) == list(frame["i"])
    streamed = datasets.load_dataset("parquet", split="train", streaming=True, **source)
    assert sorted(row["i"] for row in streamed) == list(frame["i"])
    loaded.to_parquet(f"{top}/out.parquet", storage_options=options)
    written = datasets.Dataset.from_parquet(str(files.dir / "out.parquet"), cache_dir=str(tmp_path))
    assert written["s"] == loaded["s"]
