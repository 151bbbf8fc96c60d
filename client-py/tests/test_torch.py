"""sluice.torch: map and iterable datasets under real DataLoaders (fork and
spawn workers, simulated DDP ranks), epochs, resume, read-ahead, and leases
of a killed worker."""

from __future__ import annotations

import gc
import hashlib
import multiprocessing
import os
import pathlib
import pickle
import signal
from collections import Counter
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import sluice  # noqa: E402
import torch_helpers  # noqa: E402
from conftest import Daemon, Files, wait_for  # noqa: E402
from sluice.torch import SluiceIterableDataset, SluiceMapDataset, as_tensor  # noqa: E402
from torch_helpers import loader, names  # noqa: E402

START_METHODS = ["fork", "spawn"]


class Objects:
    """``count`` objects of distinct random content under one prefix."""

    def __init__(self, files: Files, count: int, size: int = 1000, step: int = 37) -> None:
        self.prefix = files.uri()
        self.data: dict[str, bytes] = {}
        for i in range(count):
            _, data = files.make(f"s{i:03}.bin", size + step * i)
            self.data[f"s{i:03}.bin"] = data
        self.names = sorted(self.data)
        self.uris = [files.uri(name) for name in self.names]
        self.by_content = {data: name for name, data in self.data.items()}


@pytest.fixture
def objects(files: Files) -> Objects:
    return Objects(files, 23)


def read_names(dataset: SluiceIterableDataset, objects: Objects) -> list[str]:
    return [objects.by_content[sample] for sample in dataset]


# Map-style.


def test_map_dataset_is_byte_exact_from_a_prefix_or_uris(
    client: sluice.Client, objects: Objects, no_leases: Daemon
) -> None:
    listed = SluiceMapDataset(objects.prefix, client=client)
    given = SluiceMapDataset(list(reversed(objects.uris)), client=client)
    assert len(listed) == len(given) == 23
    assert listed.uris == objects.uris  # URI order
    for i, name in enumerate(objects.names):
        assert listed[i] == objects.data[name]
        assert given[22 - i] == objects.data[name]
    assert listed[-1] == objects.data[objects.names[-1]]
    with pytest.raises(IndexError):
        listed[23]
    batch = listed.__getitems__([5, 0, 5, 17])
    assert batch == [objects.data[objects.names[i]] for i in (5, 0, 5, 17)]
    assert listed.__getitems__([]) == []
    del batch
    wait_for(lambda: no_leases.leased_bytes() == 0, what="the reads' leases to end")


def test_map_dataset_applies_the_transform_and_releases_leases(
    client: sluice.Client, objects: Objects, no_leases: Daemon
) -> None:
    digests = SluiceMapDataset(objects.prefix, torch_helpers.name_and_digest, client)
    for i, name in enumerate(objects.names):
        assert digests[i] == (name, hashlib.sha256(objects.data[name]).hexdigest())
    # A result that does not view the buffer: its lease was released at
    # once (the daemon applies the release asynchronously).
    wait_for(lambda: no_leases.leased_bytes() == 0, what="the leases of plain results to end")

    for transform in (as_tensor, torch_helpers.plain_frombuffer):
        tensor = SluiceMapDataset(objects.uris, transform, client)[3]
        assert tensor.dtype == torch.uint8
        assert bytes(tensor.numpy()) == objects.data[objects.names[3]]
        assert client._is_mapped(tensor.data_ptr())  # zero copy
        # A result viewing the buffer keeps its lease until it is collected.
        assert no_leases.leased_bytes() == len(objects.data[objects.names[3]])
        del tensor
        gc.collect()
        wait_for(lambda: no_leases.leased_bytes() == 0, what="the tensor's lease to end")


def test_map_dataset_lists_once_and_lazily(
    client: sluice.Client, objects: Objects, files: Files
) -> None:
    unreachable = SluiceMapDataset(files.uri(), client=sluice.Client("unix:///nonexistent.sock"))
    with pytest.raises(ConnectionError):
        len(unreachable)  # nothing was contacted before first use

    dataset = SluiceMapDataset(objects.prefix, client=client)
    assert len(dataset) == 23
    files.make("late.bin", 10)  # after the listing: not a sample
    copy = pickle.loads(pickle.dumps(dataset))
    assert len(dataset) == len(copy) == 23
    assert copy.uris == dataset.uris

    with pytest.raises(ValueError, match="no objects"):
        len(SluiceMapDataset(files.uri("nothing-here/"), client=client))


@pytest.mark.parametrize("start_method", START_METHODS)
def test_map_dataset_in_dataloader_workers(
    client: sluice.Client, objects: Objects, start_method: str
) -> None:
    dataset = SluiceMapDataset(objects.prefix, client=client)
    got = names(loader(dataset, 2, start_method, batch_size=4, shuffle=True), objects.by_content)
    assert sorted(got) == objects.names


# Iterable: sharding and epochs.


@pytest.mark.parametrize("start_method", START_METHODS)
@pytest.mark.parametrize("ranks_from", ["arguments", "environment"])
def test_iterable_reads_every_sample_once_across_ranks_and_workers(
    client: sluice.Client,
    objects: Objects,
    start_method: str,
    ranks_from: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    per_rank = []
    for rank in range(2):
        if ranks_from == "arguments":
            dataset = SluiceIterableDataset(
                objects.prefix, seed=3, client=client, rank=rank, world_size=2
            )
        else:
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", "2")
            dataset = SluiceIterableDataset(objects.prefix, seed=3, client=client)
        assert len(dataset) == (12, 11)[rank]
        per_rank.append(names(loader(dataset, 2, start_method), objects.by_content))
    assert [len(got) for got in per_rank] == [12, 11]
    assert Counter(per_rank[0] + per_rank[1]) == Counter(objects.names)


def test_ranks_come_from_torch_distributed(
    daemon: Daemon, objects: Objects, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two gloo ranks; the environment says otherwise, and the spawned
    DataLoader workers have no process group: the rank still holds."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    args = (str(tmp_path / "rendezvous"), objects.prefix, daemon.address, out)
    ranks = [context.Process(target=torch_helpers.ddp_rank, args=(r, 2, *args)) for r in range(2)]
    for process in ranks:
        process.start()
    results = sorted(out.get(timeout=90) for _ in ranks)
    for process in ranks:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert [(rank, length, len(got)) for rank, length, got in results] == [(0, 12, 12), (1, 11, 11)]
    everything = [objects.by_content[s] for _, _, got in results for s in got]
    assert sorted(everything) == objects.names


def test_iterable_split_follows_the_documented_order(
    client: sluice.Client, objects: Objects
) -> None:
    """Global order, then every 2nd from the rank, then the worker's every
    2nd; a 2-worker loader yields batches of worker 0, 1, 0, 1..."""
    whole = SluiceIterableDataset(objects.uris, seed=9, client=client)
    order = [objects.by_content[s] for s in whole]
    rank1 = SluiceIterableDataset(objects.uris, seed=9, client=client, rank=1, world_size=2)
    got = names(loader(rank1, 2, "fork", batch_size=2), objects.by_content)
    mine = order[1::2]
    w0, w1 = mine[0::2], mine[1::2]
    expected = []
    for turn in range(0, len(w0), 2):
        expected += w0[turn : turn + 2] + w1[turn : turn + 2]
    assert got == expected


def test_set_epoch_reshuffles_deterministically(client: sluice.Client, objects: Objects) -> None:
    dataset = SluiceIterableDataset(objects.prefix, seed=5, client=client)
    first = read_names(dataset, objects)
    assert read_names(dataset, objects) == first  # the same epoch again
    dataset.set_epoch(1)
    second = read_names(dataset, objects)
    assert second != first and sorted(second) == objects.names

    other = SluiceIterableDataset(objects.prefix, seed=5, client=client)
    other.set_epoch(1)
    assert read_names(other, objects) == second
    other.set_epoch(0)
    assert read_names(other, objects) == first

    reseeded = SluiceIterableDataset(objects.prefix, seed=6, client=client)
    assert read_names(reseeded, objects) not in (first, second)
    ordered = SluiceIterableDataset(objects.prefix, shuffle=False, client=client)
    ordered.set_epoch(4)
    assert read_names(ordered, objects) == objects.names


def test_drop_last_gives_every_rank_the_same_count(client: sluice.Client, objects: Objects) -> None:
    got = []
    for rank in range(2):
        dataset = SluiceIterableDataset(
            objects.prefix, client=client, rank=rank, world_size=2, drop_last=True
        )
        assert len(dataset) == 11
        got.append(read_names(dataset, objects))
    assert [len(g) for g in got] == [11, 11]
    assert len(set(got[0]) | set(got[1])) == 22


def test_iterable_transform_is_applied_in_workers(client: sluice.Client, objects: Objects) -> None:
    dataset = SluiceIterableDataset(
        objects.prefix, transform=torch_helpers.uint8_view, client=client
    )
    seen = {}
    for tensor in loader(dataset, 2, "spawn", batch_size=None):
        content = bytes(tensor.numpy())
        seen[objects.by_content[content]] = content
    assert seen == objects.data


def test_reads_run_ahead_within_the_window(
    client: sluice.Client, files: Files, no_leases: Daemon
) -> None:
    size = 64 * 1024
    uris = [files.make(f"w{i:02}.bin", size)[0] for i in range(12)]
    dataset = SluiceIterableDataset(
        uris, shuffle=False, transform=as_tensor, client=client, prefetch=4
    )
    samples = iter(dataset)
    held = []  # zero-copy samples: each holds its lease
    for _ in range(6):
        held.append(next(samples))
        assert no_leases.leased_bytes() <= (len(held) + 4) * size
    # Reads beyond what the consumer took, never more than the window.
    taken = len(held) * size
    wait_for(lambda: no_leases.leased_bytes() > taken, what="reads ahead")
    assert no_leases.leased_bytes() <= taken + 4 * size
    del held
    gc.collect()
    # Releases reach the daemon asynchronously: wait for them, then only
    # the read-ahead window stays leased, and the last sample taken, which
    # the generator's frame still refers to until the next one.
    wait_for(
        lambda: 0 < no_leases.leased_bytes() <= (4 + 1) * size,
        what="released samples to leave only the window",
    )
    del samples  # abandons the pass
    gc.collect()
    wait_for(lambda: no_leases.leased_bytes() == 0, what="read-ahead leases to end")


# Resume.


def reference(objects: Objects, client: sluice.Client, workers: int, batch_size: int) -> list[str]:
    dataset = SluiceIterableDataset(objects.prefix, seed=11, client=client)
    dataset.set_epoch(2)
    return names(loader(dataset, workers, "fork", batch_size), objects.by_content)


@pytest.mark.parametrize(("workers", "start_method"), [(0, None), (2, "fork"), (2, "spawn")])
# torchdata 0.11 calls an API that torch deprecated later.
@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")
def test_resume_with_stateful_dataloader(
    client: sluice.Client, objects: Objects, workers: int, start_method: str | None
) -> None:
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    expected = reference(objects, client, workers, 3)

    def make() -> Any:
        dataset = SluiceIterableDataset(objects.prefix, seed=11, client=client)
        dataset.set_epoch(2)
        return stateful.StatefulDataLoader(
            dataset, batch_size=3, num_workers=workers, multiprocessing_context=start_method
        )

    for k in (0, 3, 7, 8):  # 8 batches in all (3 + 1 per worker, or 7 + 1 partial)
        first = make()
        batches = iter(first)
        consumed = names((next(batches) for _ in range(k)), objects.by_content)
        state = pickle.loads(pickle.dumps(first.state_dict()))
        del batches
        assert consumed == expected[: len(consumed)]

        second = make()
        second.load_state_dict(state)
        rest = names(second, objects.by_content)
        assert consumed + rest == expected, f"resumed after {k} batches"


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_with_plain_dataloader(
    client: sluice.Client, objects: Objects, workers: int
) -> None:
    expected = reference(objects, client, workers, 4)
    for k in (1, 4):
        dataset = SluiceIterableDataset(objects.prefix, seed=11, client=client)
        dataset.set_epoch(2)
        state = dataset.state_after(k, batch_size=4, num_workers=workers)

        resumed = SluiceIterableDataset(objects.prefix, seed=11, client=client)
        resumed.load_state_dict(state)
        resumed.set_epoch(2)  # the state's epoch: the position holds
        assert resumed.epoch == 2
        rest = names(loader(resumed, workers, "fork", 4), objects.by_content)
        assert rest == expected[4 * k :]
        resumed.set_epoch(3)  # another epoch: whole again
        assert len(names(loader(resumed, workers, "fork", 4), objects.by_content)) == 23
    with pytest.raises(ValueError, match="batches"):
        dataset.state_after(100, batch_size=4, num_workers=workers)


def test_resume_in_order_with_plain_dataloader_workers(
    client: sluice.Client, objects: Objects
) -> None:
    expected = reference(objects, client, 2, 2)
    for k in range(0, len(expected) // 2 + 1, 3):
        resumed = SluiceIterableDataset(objects.prefix, seed=11, client=client)
        resumed.set_epoch(2)
        resumed.load_state_dict(resumed.state_after(k, batch_size=2, num_workers=2))
        assert names(loader(resumed, 2, "fork", 2), objects.by_content) == expected[2 * k :]


def test_a_state_of_another_split_or_dataset_is_refused(
    client: sluice.Client, objects: Objects
) -> None:
    dataset = SluiceIterableDataset(objects.prefix, seed=1, client=client)
    state = dataset.state_after(2, batch_size=2, num_workers=2)
    resumed = SluiceIterableDataset(objects.prefix, seed=1, client=client)
    resumed.load_state_dict(state)
    with pytest.raises(ValueError, match="2 DataLoader workers"):
        list(resumed)  # in this process: one "worker"
    for changed in (
        SluiceIterableDataset(objects.prefix, seed=2, client=client),
        SluiceIterableDataset(objects.uris[:-1], seed=1, client=client),
        SluiceIterableDataset(objects.uris, seed=1, client=client, rank=1, world_size=2),
    ):
        with pytest.raises(ValueError):
            changed.load_state_dict(state)


# A worker killed mid-epoch.


def test_a_killed_worker_leaves_no_leases(
    client: sluice.Client, files: Files, no_leases: Daemon
) -> None:
    size = 256 * 1024
    uris = [files.make(f"k{i:03}.bin", size)[0] for i in range(200)]
    # Workers keep every buffer they read: they die holding leases.
    dataset = SluiceIterableDataset(uris, transform=torch_helpers.hoard, client=client, prefetch=8)
    batches = iter(loader(dataset, 2, "fork", batch_size=2))
    next(batches)  # from worker 0, which holds at least these two
    victim = batches._workers[0].pid  # type: ignore[attr-defined]
    assert no_leases.leased_bytes() >= 2 * size
    with pytest.raises(RuntimeError, match=f"{victim}"):
        os.kill(victim, signal.SIGKILL)
        for _ in range(len(uris)):
            next(batches)
    del batches  # the other worker exits
    gc.collect()
    wait_for(
        lambda: no_leases.leased_bytes() == 0, timeout=20, what="the dead worker's leases to end"
    )
