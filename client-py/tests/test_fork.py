"""A Client made before fork works in the child; spawn workers get one by
pickling."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
import traceback
import warnings

import _workers
import sluice
from conftest import Files


def test_client_used_before_fork_reads_in_the_child(
    client: sluice.Client, files: Files
) -> None:
    uri, data = files.make("f.bin", 200_000)
    other, other_data = files.make("g.bin", 3000)
    parent_buf = client.get(uri)  # connected, session open, a lease held
    assert bytes(parent_buf) == data
    # An upload before the fork: the parent holds upload memory registered
    # with the daemon. Parent and child then upload at the same time; each
    # must use memory of its own (the child's bytes differ from the parent's).
    big = os.urandom(40 << 20)
    client.put(files.uri("before-fork.bin"), big[: 20 << 20])
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a multi-threaded process.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            # A buffer from before the fork is not the child's.
            assert parent_buf.closed
            with client.get(uri) as buf:
                assert bytes(buf) == data
                assert client._is_mapped(buf._address)
            with client.get(other) as buf:
                assert bytes(buf) == other_data
            assert client.stat(uri).size == len(data)
            client.put(files.uri("from-child.bin"), b"child")
            client.put(files.uri("child-big.bin"), big[::-1])
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    client.put(files.uri("parent-big.bin"), big)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (files.dir / "parent-big.bin").read_bytes() == big
    assert (files.dir / "child-big.bin").read_bytes() == big[::-1]
    # The parent's connection, session and lease are untouched.
    assert bytes(parent_buf) == data
    parent_buf.close()
    with client.get(files.uri("from-child.bin")) as buf:
        assert bytes(buf) == b"child"


def test_multiprocessing_fork_workers_use_the_inherited_client(
    client: sluice.Client, files: Files
) -> None:
    uri, data = files.make("m.bin", 50_000)
    assert _workers.digest(client, uri)[1]  # used in the parent first
    _workers.INHERITED = client
    try:
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            workers = [
                ctx.Process(target=_workers.read_with_inherited, args=(uri, out))
                for _ in range(2)
            ]
            for worker in workers:
                worker.start()
        results = [out.get(timeout=30) for _ in workers]
        for worker in workers:
            worker.join(timeout=30)
            assert worker.exitcode == 0
    finally:
        _workers.INHERITED = None
    assert results == [(hashlib.sha256(data).hexdigest(), True)] * 2


def test_spawn_workers_get_the_client_by_pickling(
    client: sluice.Client, files: Files
) -> None:
    uri, data = files.make("s.bin", 50_000)
    copy = pickle.loads(pickle.dumps(client))
    assert isinstance(copy, sluice.Client) and copy.address == client.address
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    worker = ctx.Process(target=_workers.read_with_given, args=(client, uri, out))
    worker.start()
    result = out.get(timeout=60)
    worker.join(timeout=30)
    assert worker.exitcode == 0
    assert result == (hashlib.sha256(data).hexdigest(), True)
