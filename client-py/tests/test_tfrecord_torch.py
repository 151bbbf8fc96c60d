"""sluice.torch.SluiceTFRecordDataset: records as samples under real
DataLoaders (fork and spawn workers, two ranks), shuffling by seed and
epoch, resume, indexes given or built, and batched ranged reads."""

from __future__ import annotations

import pickle
import random
from collections import Counter
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import sluice  # noqa: E402
from conftest import Daemon, Files  # noqa: E402
from sluice import tfrecord  # noqa: E402
from sluice.torch import SluiceTFRecordDataset  # noqa: E402
from tfrecords import CountingClient, records_of, write_examples  # noqa: E402
from torch_helpers import loader  # noqa: E402

START_METHODS = ["fork", "spawn"]


class Shards:
    """Four TFRecord files of unique records (one empty) under a prefix,
    the first with its index beside it."""

    def __init__(self, files: Files, client: sluice.Client) -> None:
        rng = random.Random(3)
        self.prefix = files.uri()
        self.uris = []
        self.records: list[bytes] = []
        for n, ids in enumerate((range(0, 17), range(17, 17), range(17, 30), range(30, 41))):
            path = files.dir / f"shard-{n}.tfrecord"
            if ids:
                write_examples(path, ids, rng)
            else:
                path.write_bytes(b"")
            self.uris.append(files.uri(path.name))
            self.records += records_of(path)
        tfrecord.write_index(client, self.uris[0], tfrecord.build_index(client, self.uris[0]))
        assert len(set(self.records)) < len(self.records)  # empty records repeat
        self.count = len(self.records)


@pytest.fixture
def shards(files: Files, client: sluice.Client) -> Shards:
    return Shards(files, client)


def flat(batches: Any) -> list[bytes]:
    return [sample for batch in batches for sample in batch]


def record_id(view: memoryview) -> int:
    """A transform: the ``id`` of the record's Example, decoded in place;
    -1 for the records without one (empty ones)."""
    from tfrecord import example_pb2

    values = example_pb2.Example.FromString(view).features.feature["id"].int64_list.value
    return values[0] if values else -1


def test_reads_every_record_in_file_order_without_shuffle(
    client: sluice.Client, shards: Shards
) -> None:
    dataset = SluiceTFRecordDataset(shards.prefix, shuffle=False, client=client)
    assert dataset.uris == shards.uris  # the .idx object is not a file
    assert dataset.num_records == len(dataset) == shards.count
    assert list(dataset) == shards.records
    given = SluiceTFRecordDataset(list(shards.uris), shuffle=False, client=client)
    assert list(given) == shards.records


@pytest.mark.parametrize("start_method", START_METHODS)
def test_every_record_once_across_two_ranks_of_two_workers(
    client: sluice.Client, shards: Shards, start_method: str
) -> None:
    per_rank = []
    for rank in range(2):
        dataset = SluiceTFRecordDataset(
            shards.prefix, seed=3, client=client, rank=rank, world_size=2
        )
        assert len(dataset) == len(range(rank, shards.count, 2))
        per_rank.append(flat(loader(dataset, 2, start_method)))
    assert [len(got) for got in per_rank] == [len(range(r, shards.count, 2)) for r in range(2)]
    assert Counter(per_rank[0] + per_rank[1]) == Counter(shards.records)


def test_shuffling_is_deterministic_per_seed_and_epoch(
    client: sluice.Client, shards: Shards
) -> None:
    dataset = SluiceTFRecordDataset(shards.prefix, seed=5, client=client)
    first = list(dataset)
    assert list(dataset) == first and Counter(first) == Counter(shards.records)
    assert first != shards.records
    dataset.set_epoch(1)
    second = list(dataset)
    assert second != first and Counter(second) == Counter(shards.records)
    other = SluiceTFRecordDataset(shards.uris, seed=5, client=client)
    other.set_epoch(1)
    assert list(other) == second
    assert list(SluiceTFRecordDataset(shards.prefix, seed=6, client=client)) not in (first, second)


def test_resume_continues_without_repeats_or_losses(client: sluice.Client, shards: Shards) -> None:
    def make() -> SluiceTFRecordDataset:
        dataset = SluiceTFRecordDataset(shards.prefix, seed=11, client=client)
        dataset.set_epoch(2)
        return dataset

    expected = list(make())
    for n in (0, 1, 17, shards.count):
        dataset = make()
        records = iter(dataset)
        consumed = [next(records) for _ in range(n)]
        state = pickle.loads(pickle.dumps(dataset.state_dict()))
        del records
        resumed = make()
        resumed.load_state_dict(state)
        assert consumed + list(resumed) == expected, f"resumed after {n} records"
    # A plain DataLoader with two workers, resumed after 3 batches.
    whole = flat(loader(make(), 2, "fork", batch_size=4))
    resumed = make()
    resumed.load_state_dict(resumed.state_after(3, batch_size=4, num_workers=2))
    assert flat(loader(resumed, 2, "fork", batch_size=4)) == whole[12:]
    # Another set of files: refused.
    with pytest.raises(ValueError, match="another dataset"):
        SluiceTFRecordDataset(shards.uris[:3], seed=11, client=client).load_state_dict(state)


def test_records_are_read_in_batched_ranged_get_many(daemon: Daemon, shards: Shards) -> None:
    client = CountingClient(daemon.address)
    dataset = SluiceTFRecordDataset(shards.prefix, seed=1, client=client, plan=False)
    assert len(dataset) == shards.count  # loads the indexes: one get_many of them
    # Three files have no index: built by scanning (one window each, and
    # none for the empty file).
    assert client.batches == [4] and client.calls == Counter(get_many=1, get=2)
    client.calls.clear()
    fetches = daemon.metric("sluice_session_fetch_wait_seconds_count")
    assert Counter(dataset) == Counter(shards.records)
    assert client.calls == Counter(get_many=1) and client.batches[-1] == shards.count
    # One ranged fetch per record.
    assert daemon.metric("sluice_session_fetch_wait_seconds_count") - fetches == shards.count


def test_an_index_beside_the_file_is_used_or_required(
    client: sluice.Client, shards: Shards, files: Files
) -> None:
    # A shorter index: the dataset has what it lists, not what a scan finds.
    index = tfrecord.build_index(client, shards.uris[2])
    tfrecord.write_index(client, shards.uris[2], index[:3])
    dataset = SluiceTFRecordDataset(shards.uris[2:], shuffle=False, client=client)
    assert dataset.num_records == 3 + len(records_of(files.dir / "shard-3.tfrecord"))
    with pytest.raises(sluice.NotFoundError, match="shard-3.tfrecord.idx"):
        len(SluiceTFRecordDataset(shards.uris[2:], client=client, build_index=False))


def test_transform_gets_the_record_in_place(client: sluice.Client, shards: Shards) -> None:
    dataset = SluiceTFRecordDataset(
        shards.uris, shuffle=False, client=client, transform=record_id, verify_crc=True
    )
    ids = list(dataset)
    assert [i for i in ids if i >= 0] == list(range(41))
    assert len(ids) == shards.count
    views = list(SluiceTFRecordDataset(shards.uris, shuffle=False, client=client, transform=bytes))
    assert views == shards.records


def test_a_corrupt_record_raises_from_the_dataset(
    client: sluice.Client, shards: Shards, files: Files
) -> None:
    path = files.dir / "shard-2.tfrecord"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last record's data CRC
    path.write_bytes(bytes(data))
    offset = tfrecord.build_index(client, shards.uris[2])[-1][0]
    assert len(list(SluiceTFRecordDataset(shards.uris, client=client))) == shards.count
    checked = SluiceTFRecordDataset(shards.uris, client=client, verify_crc=True)
    with pytest.raises(tfrecord.TFRecordError, match=f"offset {offset}") as error:
        list(checked)
    assert error.value.uri == shards.uris[2]
    assert pickle.loads(pickle.dumps(error.value)).offset == offset
