"""get_many: order, completion order, errors, and the bounded window."""

from __future__ import annotations

import gc

import pytest

import sluice
from conftest import MiB, Daemon, Files, wait_for

#: Session fetches the daemon has served (each counted once its data is ready).
FETCHES = "sluice_session_fetch_wait_seconds_count"


def test_ordered_results_come_in_request_order(client: sluice.Client, files: Files) -> None:
    objects = [files.make(f"o{i}.bin", 1000 + 997 * i) for i in range(20)]
    items = [uri for uri, _ in objects]
    seen = []
    for index, buf in client.get_many(items, ordered=True, window=4):
        with buf:
            assert bytes(buf) == objects[index][1]
            assert buf.meta.uri == items[index]
        seen.append(index)
    assert seen == list(range(20))


def test_unordered_results_cover_every_item_once(client: sluice.Client, files: Files) -> None:
    objects = [files.make(f"u{i}.bin", 5000 + i) for i in range(20)]
    seen = []
    for index, buf in client.get_many((uri for uri, _ in objects), ordered=False, window=8):
        with buf:
            assert bytes(buf) == objects[index][1]
        seen.append(index)
    assert sorted(seen) == list(range(20))


def test_ranges_and_empty_input(client: sluice.Client, files: Files) -> None:
    uri, data = files.make("r.bin", 10_000)
    items = [(uri, 0, 10), uri, (uri, 9_990, None), (uri, None, 3)]
    got = [(i, bytes(b)) for i, b in client.get_many(items)]
    assert got == [(0, data[:10]), (1, data), (2, data[9_990:]), (3, data[:3])]
    assert list(client.get_many([])) == []
    with pytest.raises(ValueError):
        client.get_many([uri], window=0)


def test_a_failed_item_raises_at_its_turn_and_the_rest_follow(
    client: sluice.Client, files: Files
) -> None:
    a, data = files.make("a.bin", 100)
    results = client.get_many([a, files.uri("missing.bin"), a], ordered=True)
    index, buf = next(results)
    assert (index, bytes(buf)) == (0, data)
    with pytest.raises(sluice.NotFoundError) as missing:
        next(results)
    assert "missing.bin" in str(missing.value)
    index, buf = next(results)
    assert (index, bytes(buf)) == (2, data)
    with pytest.raises(StopIteration):
        next(results)


def test_results_ahead_of_the_consumer_stay_within_the_window(
    client: sluice.Client, files: Files, no_leases: Daemon
) -> None:
    size, count, window = MiB, 24, 4
    items = [files.make(f"w{i}.bin", size)[0] for i in range(count)]
    fetched = no_leases.metric(FETCHES)
    results = client.get_many(items, ordered=True, window=window)
    index, first = next(results)
    assert index == 0
    # The window keeps filling while the consumer holds `first`, but never
    # more than `window` results ahead of it: `first` plus the window leased.
    # Wait for the window to fill, however long a loaded machine takes; a
    # fetcher that ignored the window would by then have asked for more.
    wait_for(
        lambda: no_leases.leased_bytes() >= window * size,
        timeout=60,
        what=f"{window} results fetched ahead",
    )
    peak = no_leases.leased_bytes()
    assert peak <= (window + 1) * size, f"{peak / MiB} MiB leased"
    asked = no_leases.metric(FETCHES) - fetched
    assert asked <= window + 1, f"{asked} fetches served ahead of the consumer"
    first.close()
    for _, buf in results:
        assert no_leases.leased_bytes() <= (window + 1) * size
        buf.close()
    del results
    gc.collect()
    wait_for(lambda: no_leases.leased_bytes() == 0, what="every lease released")
