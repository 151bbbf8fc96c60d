"""Epoch plans: submitted by the datasets, used by the daemon's cache and
prefetcher, refused cleanly when they are bad."""

from __future__ import annotations

import multiprocessing
import pathlib
from collections import Counter
from typing import Iterator

import pytest

import sluice
from conftest import Daemon, wait_for

torch = pytest.importorskip("torch")

from sluice.torch import SluiceIterableDataset, SluiceMapDataset, SluicePlanSampler  # noqa: E402
from torch_helpers import loader  # noqa: E402

#: Objects of exactly 64 arena pages, so that the cache holds a known count.
SIZE = 256 << 10
#: A cache of 32 such objects (the smallest budget holds a 5 MiB write
#: part); the dataset is twice that.
BUDGET = "8MiB"
CACHED = 32
COUNT = 2 * CACHED


def small_cache(base: pathlib.Path, **env: str) -> Daemon:
    settings = {
        "SLUICE_ENGINE__PART_SIZE": "256KiB",
        "SLUICE_CACHE__SEGMENT_SIZE": "8MiB",
        "SLUICE_CACHE__MAX_OBJECT_SIZE": "1MiB",
        "SLUICE_CACHE__PREFAULT": "false",
        "SLUICE_SESSION__LEASE_QUOTA": "2MiB",
    }
    settings.update(env)
    return Daemon(base, env=settings, memory_budget=BUDGET)


@pytest.fixture
def planned(tmp_path: pathlib.Path) -> Iterator[Daemon]:
    """A daemon whose cache holds half the dataset; no prefetch, so that
    what the cache keeps follows from the plans alone."""
    daemon = small_cache(tmp_path, SLUICE_PREFETCH__ENABLED="false")
    yield daemon
    daemon.stop()


def make(daemon: Daemon) -> dict[str, bytes]:
    data = {}
    for i in range(COUNT):
        body = i.to_bytes(2, "big") * (SIZE // 2)
        (daemon.root / f"p{i:03}").write_bytes(body)
        data[daemon.uri(f"p{i:03}")] = body
    return data


class StartTogether:
    """A transform that holds each worker at its first sample until the
    other worker has reached its own. Each epoch's workers are new processes
    whose plans start with their first read: a worker started much later
    than the other would find its objects unplanned (so evictable) for as
    long as it has not submitted its plan. On a loaded machine that skew is
    real; the barrier takes it out of the count this test checks."""

    def __init__(self, parties: int) -> None:
        self.barrier = multiprocessing.get_context("fork").Barrier(parties)
        self.started = False  # per worker process (each gets its own copy)

    def __call__(self, buffer: sluice.Buffer) -> bytes:
        if not self.started:
            self.started = True
            self.barrier.wait(timeout=60)
        return bytes(buffer)


def test_two_workers_two_epochs_hit_what_the_plans_kept(planned: Daemon) -> None:
    """A DataLoader with 2 workers reads a dataset twice the cache for 2
    epochs. Without plans (LRU) the second epoch finds nothing; with them
    the cache keeps, at the end of epoch 1, objects epoch 2 reads, and
    never evicts one of those before its read (what epoch 2 has read
    already is not needed again). So epoch 2 hits exactly as many objects as
    the cache holds."""
    data = make(planned)
    by_content = {body: uri for uri, body in data.items()}
    client = sluice.Client(planned.address)
    dataset = SluiceIterableDataset(
        list(data),
        shuffle=True,
        seed=3,
        client=client,
        prefetch=1,
        epochs=2,
        transform=StartTogether(2),
    )
    seen: Counter[str] = Counter()
    for epoch in range(2):
        dataset.set_epoch(epoch)
        for batch in loader(dataset, 2, "fork", batch_size=4):
            for sample in batch:
                seen[by_content[sample]] += 1
    assert seen == Counter({uri: 2 for uri in data}), "every sample, byte-exact, once per epoch"
    metrics = planned.metrics()
    assert metrics["sluice_cache_hits_total"] == CACHED
    assert metrics["sluice_cache_misses_total"] == 2 * COUNT - CACHED
    # The plans end with the workers' sessions.
    wait_for(lambda: planned.metric("sluice_prefetch_plans") == 0, what="plans to end")


def test_prefetch_reads_ahead_of_the_plan(tmp_path: pathlib.Path) -> None:
    """With prefetch on, an epoch is byte-exact and its reads find the
    prefetched objects; nothing is left planned afterwards."""
    daemon = small_cache(tmp_path)
    try:
        data = make(daemon)
        client = sluice.Client(daemon.address)
        dataset = SluiceIterableDataset(list(data), shuffle=True, seed=1, client=client, prefetch=1)
        samples = [bytes(s) for batch in loader(dataset, 2, "fork", batch_size=4) for s in batch]
        assert sorted(samples) == sorted(data.values())
        metrics = daemon.metrics()
        assert metrics["sluice_prefetch_objects_total"] > 0
        # Each read found its object prefetched, joined a prefetch in
        # flight, or (had it outrun the prefetcher) fetched it itself.
        found = metrics["sluice_prefetch_hits_total"] + metrics["sluice_cache_coalesced_total"]
        assert found > 0
        assert metrics["sluice_cache_hits_total"] >= metrics["sluice_prefetch_hits_total"]
        wait_for(lambda: daemon.metric("sluice_prefetch_plans") == 0, what="plans to end")
    finally:
        daemon.stop()


def test_a_sampler_wrapper_plans_a_map_dataset(planned: Daemon) -> None:
    """The wrapper yields the sampler's order unchanged, and the daemon
    holds a plan of the whole epoch while the loader runs."""
    data = make(planned)
    client = sluice.Client(planned.address)
    dataset = SluiceMapDataset(list(data), client=client)
    order = torch.randperm(COUNT, generator=torch.Generator().manual_seed(5)).tolist()
    sampler = SluicePlanSampler(dataset, order, in_flight=8)
    got = []
    for i, index in enumerate(sampler):
        if i == 0:
            assert planned.metric("sluice_prefetch_plan_items") == COUNT
        got.append(index)
        assert bytes(dataset[index]) == data[dataset.uris[index]]
    assert got == order
    assert len(sampler) == COUNT


def test_bad_plans_are_refused_and_name_the_uri(planned: Daemon) -> None:
    client = sluice.Client(planned.address)
    with pytest.raises(sluice.InvalidArgumentError, match="nosuch"):
        client.submit_plan(["nosuch://bucket/key"])
    assert client.submit_plan([planned.uri("a"), planned.uri("b")], plan_id=9) == 2
    assert planned.metric("sluice_prefetch_plan_items") == 2
    # Replacing a plan of the same id, then dropping it.
    assert client.submit_plan([planned.uri("c")], plan_id=9) == 1
    assert planned.metric("sluice_prefetch_plan_items") == 1
    client.drop_plan(9)
    wait_for(lambda: planned.metric("sluice_prefetch_plan_items") == 0, what="the plan to go")
    # Large plans go in pages.
    many = [planned.uri(f"x{i}") for i in range(10_000)]
    assert client.submit_plan(many, plan_id=1) == 10_000


def test_plan_limits_refuse_without_keeping_anything(tmp_path: pathlib.Path) -> None:
    daemon = small_cache(tmp_path, SLUICE_PREFETCH__MAX_PLAN_ITEMS="100")
    try:
        client = sluice.Client(daemon.address)
        with pytest.raises(sluice.SluiceError, match="more than 100 items"):
            client.submit_plan([daemon.uri(f"x{i}") for i in range(101)])
        assert daemon.metric("sluice_prefetch_plan_items") == 0
        assert client.submit_plan([daemon.uri(f"x{i}") for i in range(100)]) == 100
    finally:
        daemon.stop()


def test_warm_of_uris_fills_the_cache_in_order(planned: Daemon) -> None:
    data = make(planned)
    client = sluice.Client(planned.address)
    first = list(data)[:8]
    counts = client.warm(uris=first, concurrency=2)
    assert (counts["listed_objects"], counts["warmed_objects"]) == (8, 8)
    assert counts["warmed_bytes"] == 8 * SIZE and not counts["cache_full"]
    before = planned.metric("sluice_cache_hits_total")
    for uri in first:
        assert bytes(client.get(uri)) == data[uri]
    assert planned.metric("sluice_cache_hits_total") - before == 8
    with pytest.raises(ValueError, match="not both"):
        client.warm(planned.uri(""), uris=first)


def test_get_many_plans_beyond_its_window(planned: Daemon) -> None:
    """More items than its window: get_many gives the daemon the rest as a
    plan while it runs, and takes it back when done."""
    data = make(planned)
    client = sluice.Client(planned.address)
    uris = list(data)
    results = client.get_many(uris, window=4)
    index, buffer = next(results)
    assert bytes(buffer) == data[uris[index]]
    del buffer
    wait_for(lambda: planned.metric("sluice_prefetch_plan_items") == COUNT, what="the plan")
    got = {uris[i]: bytes(b) for i, b in results}
    assert len(got) == COUNT - 1 and all(got[u] == data[u] for u in got)
    del results
    wait_for(lambda: planned.metric("sluice_prefetch_plan_items") == 0, what="the plan to go")
    # No plan when asked for none, or when the window holds everything.
    for _, b in client.get_many(uris, window=4, plan=False):
        b.close()
    for _, b in client.get_many(uris[:4], window=4):
        b.close()
    assert planned.metric("sluice_prefetch_plan_items") == 0
