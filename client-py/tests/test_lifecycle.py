"""The daemon killed (SIGKILL) and restarted on the same socket under a
Python client: calls made while it is down fail with ``UnavailableError``
naming its address (never a hang or a crash), buffers already held stay
readable, the next call after the restart works, and a PyTorch DataLoader
epoch goes on across the restart, every sample exactly once."""

from __future__ import annotations

import logging
import multiprocessing
import pathlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import sluice
from conftest import Daemon

torch = pytest.importorskip("torch")
from sluice.torch import SluiceIterableDataset, SluiceMapDataset  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

MiB = 1 << 20

#: Guards against a hang only: a call to a dead daemon fails at once (the
#: socket refuses), so no loaded machine comes near this.
NO_HANG = 30.0


@pytest.fixture
def daemon(tmp_path: pathlib.Path) -> Iterator[Daemon]:
    """A daemon of this test alone: it is killed and restarted."""
    d = Daemon(tmp_path)
    yield d
    d.stop()


def make(daemon: Daemon, n: int, size: int) -> list[tuple[str, bytes]]:
    rng = random.Random(n * size)
    objects = []
    for i in range(n):
        data = rng.randbytes(size + i)
        (daemon.root / f"o{i:03}").write_bytes(data)
        objects.append((daemon.uri(f"o{i:03}"), data))
    return objects


def fails_clearly(daemon: Daemon, call: Callable[[], Any]) -> sluice.UnavailableError:
    """Runs ``call`` against the dead daemon: it must raise
    ``UnavailableError`` naming the daemon, promptly."""
    started = time.monotonic()
    with pytest.raises(sluice.UnavailableError) as raised:
        call()
    assert time.monotonic() - started < NO_HANG
    assert str(daemon.socket) in str(raised.value), raised.value
    assert isinstance(raised.value, ConnectionError)
    return raised.value


def test_calls_fail_clearly_while_the_daemon_is_down_and_work_after_it_returns(
    daemon: Daemon,
) -> None:
    [(uri, data), (other, other_data)] = make(daemon, 2, 300_000)
    client = sluice.Client(daemon.address)
    held = client.get(uri)
    assert client._is_mapped(held._address)

    daemon.kill()
    # A buffer from the dead daemon's shared memory is still readable.
    assert bytes(held) == data
    fails_clearly(daemon, lambda: client.get(other))
    fails_clearly(daemon, lambda: client.stat(uri))
    fails_clearly(daemon, lambda: list(client.list(daemon.uri(""))))
    fails_clearly(daemon, lambda: next(iter(client.get_many([uri, other]))))
    fails_clearly(daemon, lambda: client.put(daemon.uri("new"), b"x"))
    fresh = sluice.Client(daemon.address)
    fails_clearly(daemon, lambda: fresh.get(uri))

    daemon.start()
    with client.get(other) as buf:
        assert bytes(buf) == other_data
        assert client._is_mapped(buf._address), "a new session, on the new arena"
    with fresh.get(uri) as buf:
        assert bytes(buf) == data
    assert bytes(held) == data
    held.close()


def test_get_many_cut_by_the_daemons_death(daemon: Daemon) -> None:
    objects = make(daemon, 40, MiB)
    client = sluice.Client(daemon.address)
    results = client.get_many([uri for uri, _ in objects], window=4)
    held = [next(results) for _ in range(2)]
    for index, buf in held:
        assert bytes(buf) == objects[index][1]

    daemon.kill()
    # Results fetched before the death may still come, byte-exact; then
    # the first owed item fails clearly, and the iteration does not hang.
    delivered = 2
    with pytest.raises(sluice.UnavailableError) as raised:
        for index, buf in results:
            assert index == delivered
            assert bytes(buf) == objects[index][1]
            delivered += 1
    assert delivered < len(objects)
    assert str(daemon.socket) in str(raised.value)
    for index, buf in held:
        assert bytes(buf) == objects[index][1]
    del results

    daemon.start()
    for index, buf in client.get_many([uri for uri, _ in objects], window=4):
        with buf:
            assert bytes(buf) == objects[index][1]


class _Retries(logging.Handler):
    """Sets an event (shared with forked workers) when the dataset logs a
    retry."""

    def __init__(self, event: Any) -> None:
        super().__init__(logging.WARNING)
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying" in record.getMessage():
            self.event.set()


def restart_when_retried(daemon: Daemon, retried: Any) -> threading.Thread:
    """Brings the daemon back once a reader has seen it gone and retries."""

    def run() -> None:
        retried.wait(timeout=60)
        daemon.start()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("workers", [0, 2])
def test_a_dataloader_epoch_continues_across_a_daemon_restart(
    daemon: Daemon, workers: int
) -> None:
    objects = make(daemon, 48, 64 << 10)
    by_content = {data: uri for uri, data in objects}
    dataset = SluiceIterableDataset(
        [uri for uri, _ in objects], shuffle=True, seed=3, prefetch=4,
        client=sluice.Client(daemon.address), reconnect_timeout=60,
    )
    context = multiprocessing.get_context("fork")
    retried = context.Event()
    handler = _Retries(retried)
    logger = logging.getLogger("sluice.torch")
    logger.addHandler(handler)
    try:
        loader = DataLoader(
            dataset, batch_size=4, num_workers=workers,
            multiprocessing_context=context if workers else None,
        )
        batches = iter(loader)
        seen = [sample for _ in range(3) for sample in next(batches)]
        daemon.kill()
        restarter = restart_when_retried(daemon, retried)
        seen += [sample for batch in batches for sample in batch]
        restarter.join(timeout=NO_HANG)
    finally:
        logger.removeHandler(handler)
    assert retried.is_set(), "the epoch met the daemon gone and retried"
    assert sorted(by_content[s] for s in seen) == sorted(by_content.values()), (
        "every sample exactly once"
    )


def test_a_map_dataset_batch_is_retried_across_a_restart(daemon: Daemon) -> None:
    objects = make(daemon, 12, 32 << 10)
    dataset = SluiceMapDataset(
        [uri for uri, _ in objects], client=sluice.Client(daemon.address),
        reconnect_timeout=60,
    )
    assert dataset[0] == objects[0][1]
    retried = threading.Event()
    handler = _Retries(retried)
    logger = logging.getLogger("sluice.torch")
    logger.addHandler(handler)
    try:
        daemon.kill()
        restarter = restart_when_retried(daemon, retried)
        batch = dataset.__getitems__(list(range(12)))
        restarter.join(timeout=NO_HANG)
    finally:
        logger.removeHandler(handler)
    assert retried.is_set()
    assert batch == [data for _, data in objects]
    assert dataset[5] == objects[5][1]


def test_retries_give_up_after_the_reconnect_timeout(daemon: Daemon) -> None:
    [(uri, _)] = make(daemon, 1, 1000)
    dataset = SluiceMapDataset([uri], client=sluice.Client(daemon.address), reconnect_timeout=0.3)
    daemon.kill()
    started = time.monotonic()
    with pytest.raises(sluice.UnavailableError) as raised:
        dataset[0]
    # At least the timeout (it retried), and not much more than it.
    assert 0.3 <= time.monotonic() - started < NO_HANG
    assert str(daemon.socket) in str(raised.value)
    with pytest.raises(ValueError, match="reconnect_timeout"):
        SluiceMapDataset([uri], reconnect_timeout=-1)
