"""The Python client on gs:// (the GCS emulator) and az:// (Azurite) through
real daemons, the same tests on each: content, ranges, uploads in parts
(resumable uploads, staged blocks), an upload that fails commits nothing,
listings, and the dataset reading a cloud prefix."""

from __future__ import annotations

import random
from collections import Counter

import pytest

import sluice
from conftest import MiB


@pytest.fixture(params=["gcs", "azure"])
def cloud(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def cloud_client(cloud: str, request: pytest.FixtureRequest) -> sluice.Client:
    daemon = request.getfixturevalue(f"{cloud}_daemon")
    return sluice.Client(daemon.address)


@pytest.fixture
def bucket(cloud: str, request: pytest.FixtureRequest) -> str:
    """A fresh bucket (gs://) or container (az://) named after the test."""
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50]
    name = name.strip("-")[:63].rstrip("-")
    if cloud == "gcs":
        return request.getfixturevalue("gcs").bucket(name)
    return request.getfixturevalue("azurite").container(name)


def test_put_get_is_byte_exact_whole_and_ranged(cloud_client: sluice.Client, bucket: str) -> None:
    rng = random.Random(1)
    for size in (0, 1, 1000, 3 * MiB + 17):
        data = rng.randbytes(size)
        uri = f"{bucket}obj-{size}"
        meta = cloud_client.put(uri, data)
        assert meta.size == size
        stat = cloud_client.stat(uri)
        assert stat.size == size
        assert stat.etag == meta.etag and stat.etag, "stat and put agree on the etag"
        if bucket.startswith("gs://"):
            assert stat.etag.isdigit(), "a gs:// etag is the generation"
        with cloud_client.get(uri) as buf:
            assert bytes(buf) == data
        if size > 100:
            with cloud_client.get(uri, offset=7, length=size - 50) as buf:
                assert bytes(buf) == data[7 : size - 43]
    listed = sorted(m.uri for m in cloud_client.list(bucket) if isinstance(m, sluice.ObjectMeta))
    assert listed == sorted(f"{bucket}obj-{n}" for n in (0, 1, 1000, 3 * MiB + 17))


def test_writer_uploads_in_parts_and_an_error_commits_nothing(
    cloud_client: sluice.Client, bucket: str
) -> None:
    data = random.Random(3).randbytes(12 * MiB + 5)
    uri = f"{bucket}ckpt"
    with cloud_client.open_writer(uri) as writer:
        for i in range(0, len(data), MiB - 3):
            writer.write(data[i : i + MiB - 3])
    assert writer.meta is not None and writer.meta.size == len(data)
    with cloud_client.get(uri) as buf:
        assert bytes(buf) == data
    broken = f"{bucket}broken"
    with pytest.raises(RuntimeError, match="boom"):
        with cloud_client.open_writer(broken) as writer:
            writer.write(data[: 11 * MiB])
            raise RuntimeError("boom")
    with pytest.raises(sluice.NotFoundError):
        cloud_client.stat(broken)
    names = [m.uri for m in cloud_client.list(bucket) if isinstance(m, sluice.ObjectMeta)]
    assert names == [uri]


def test_get_many_and_the_dataset(cloud_client: sluice.Client, bucket: str) -> None:
    rng = random.Random(4)
    objects = {f"{bucket}train/{i:03d}": rng.randbytes(rng.randrange(1, 200_000)) for i in range(20)}
    for uri, data in objects.items():
        cloud_client.put(uri, data)
    uris = list(objects)
    got = {}
    for index, buf in cloud_client.get_many(uris, ordered=False, window=8):
        with buf:
            got[uris[index]] = bytes(buf)
    assert got == objects
    with pytest.raises(sluice.NotFoundError):
        cloud_client.get(f"{bucket}missing")
    torch = pytest.importorskip("torch")
    from sluice.torch import SluiceIterableDataset

    by_content = {data: uri for uri, data in objects.items()}
    dataset = SluiceIterableDataset(f"{bucket}train/", seed=7, client=cloud_client)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=0)
    seen = [by_content[sample] for batch in loader for sample in batch]
    assert Counter(seen) == Counter(uris), "every object exactly once"
