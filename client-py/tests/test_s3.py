"""The Python client on the S3-compatible test server (s3s-fs) through a
real daemon: content, ranges, multipart uploads, zero copy once cached, and
the PyTorch dataset reading an S3 prefix."""

from __future__ import annotations

import random
from collections import Counter

import pytest

import sluice
from conftest import MiB, Daemon
from s3server import S3Server


@pytest.fixture
def s3_client(s3_daemon: Daemon) -> sluice.Client:
    return sluice.Client(s3_daemon.address)


@pytest.fixture
def bucket(s3: S3Server, request: pytest.FixtureRequest) -> str:
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50]
    return s3.bucket(name.strip("-"))


def test_put_get_is_byte_exact_whole_and_ranged(s3_client: sluice.Client, bucket: str) -> None:
    rng = random.Random(1)
    for size in (0, 1, 1000, 3 * MiB + 17):
        data = rng.randbytes(size)
        uri = f"{bucket}obj-{size}"
        meta = s3_client.put(uri, data)
        assert meta.size == size
        assert s3_client.stat(uri).size == size
        with s3_client.get(uri) as buf:
            assert bytes(buf) == data
        if size > 100:
            with s3_client.get(uri, offset=7, length=size - 50) as buf:
                assert bytes(buf) == data[7 : size - 43]
    listed = sorted(m.uri for m in s3_client.list(bucket) if isinstance(m, sluice.ObjectMeta))
    assert listed == sorted(f"{bucket}obj-{n}" for n in (0, 1, 1000, 3 * MiB + 17))


def test_cached_reads_are_zero_copy(s3_client: sluice.Client, bucket: str) -> None:
    data = random.Random(2).randbytes(2 * MiB)
    uri = f"{bucket}cached"
    s3_client.put(uri, data)
    with s3_client.get(uri) as buf:
        assert buf.zero_copy and buf.shared_memory
        assert s3_client._is_mapped(buf._address)
        view = memoryview(buf)
        assert view.tobytes() == data
        view.release()


def test_writer_uploads_in_parts_and_an_error_commits_nothing(
    s3_client: sluice.Client, bucket: str
) -> None:
    data = random.Random(3).randbytes(12 * MiB + 5)
    uri = f"{bucket}ckpt"
    with s3_client.open_writer(uri) as writer:
        for i in range(0, len(data), MiB):
            writer.write(data[i : i + MiB])
    assert writer.meta is not None and writer.meta.size == len(data)
    with s3_client.get(uri) as buf:
        assert bytes(buf) == data
    broken = f"{bucket}broken"
    with pytest.raises(RuntimeError, match="boom"):
        with s3_client.open_writer(broken) as writer:
            writer.write(data[: 6 * MiB])
            raise RuntimeError("boom")
    with pytest.raises(sluice.NotFoundError):
        s3_client.stat(broken)


def test_get_many_and_errors_on_s3(s3_client: sluice.Client, bucket: str) -> None:
    rng = random.Random(4)
    objects = {f"{bucket}s{i}": rng.randbytes(rng.randrange(1, 200_000)) for i in range(20)}
    for uri, data in objects.items():
        s3_client.put(uri, data)
    uris = list(objects)
    got = {}
    for index, buf in s3_client.get_many(uris, ordered=False, window=8):
        with buf:
            got[uris[index]] = bytes(buf)
    assert got == objects
    with pytest.raises(FileNotFoundError) as missing:
        s3_client.get(f"{bucket}missing")
    assert isinstance(missing.value, sluice.SluiceError)
    assert "missing" in str(missing.value)


def test_iterable_dataset_reads_an_s3_prefix_once_per_epoch(
    s3_client: sluice.Client, bucket: str
) -> None:
    torch = pytest.importorskip("torch")
    from sluice.torch import SluiceIterableDataset

    rng = random.Random(5)
    contents = {f"{bucket}train/{i:03d}": rng.randbytes(4096 + i) for i in range(30)}
    for uri, data in contents.items():
        s3_client.put(uri, data)
    by_content = {data: uri for uri, data in contents.items()}
    seen: list[str] = []
    for rank in range(2):
        dataset = SluiceIterableDataset(
            f"{bucket}train/", seed=7, client=s3_client, rank=rank, world_size=2
        )
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=4, num_workers=2, multiprocessing_context="fork"
        )
        for batch in loader:
            seen.extend(by_content[sample] for sample in batch)
    assert Counter(seen) == Counter(list(contents)), "every object exactly once"
