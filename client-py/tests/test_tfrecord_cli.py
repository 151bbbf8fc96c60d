"""`sluice tfrecord index` and `sluice gen` against the reference tools.

TFRecord files are written by the `tfrecord` package's ``TFRecordWriter``
(no TensorFlow) and indexed by the CLI through a real daemon; the index
must equal ``tfrecord.tools.tfrecord2idx``'s byte for byte. What ``sluice
gen`` writes must load in ``numpy.load`` and the `tfrecord` reader.

The CLI is ``sluice`` next to the daemon binary (``$SLUICED``'s directory,
else the workspace's ``target/debug``).
"""

from __future__ import annotations

import os
import pathlib
import random
import subprocess

import numpy as np
import pytest
from tfrecord.reader import tfrecord_loader
from tfrecord.tools.tfrecord2idx import create_index
from tfrecord.writer import TFRecordWriter

from conftest import MiB, Daemon, sluiced_binary


def sluice_cli() -> pathlib.Path:
    path = sluiced_binary().parent / "sluice"
    if not path.exists():
        pytest.fail(f"{path} not built: run `cargo build -p sluice-client --bins`")
    return path


def run(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    return subprocess.run(
        [str(sluice_cli()), "--address", daemon.address, *args],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )


def ok(daemon: Daemon, *args: str) -> bytes:
    done = run(daemon, *args)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


@pytest.fixture
def folder(daemon: Daemon, request: pytest.FixtureRequest) -> pathlib.Path:
    path = daemon.root / "tfrecord-cli" / request.node.name
    path.mkdir(parents=True)
    return path


def write_tfrecord(path: pathlib.Path, image_sizes: list[int], seed: int = 0) -> None:
    rng = random.Random(seed)
    writer = TFRecordWriter(str(path))
    for label, size in enumerate(image_sizes):
        writer.write({"image": (rng.randbytes(size), "byte"), "label": (label, "int")})
    writer.close()


def reference_index(path: pathlib.Path) -> bytes:
    index = path.with_suffix(".ref-idx")
    create_index(str(path), str(index))
    return index.read_bytes()


def uri(daemon: Daemon, path: pathlib.Path) -> str:
    return daemon.uri(str(path.relative_to(daemon.root)))


CASES = {
    # Many small records: several per 8 MiB window.
    "small": [random.Random(1).randrange(0, 5000) for _ in range(400)],
    # Records larger than a window: the CLI reads headers only.
    "large": [9 * MiB, 1, 17 * MiB, 100],
    "empty_image": [0, 0, 5],
    "no_records": [],
}


@pytest.mark.parametrize("case", CASES)
def test_index_equals_tfrecord2idx(
    daemon: Daemon, folder: pathlib.Path, case: str
) -> None:
    path = folder / f"{case}.tfrecord"
    write_tfrecord(path, CASES[case])
    expected = reference_index(path)
    assert expected.count(b"\n") == len(CASES[case])
    assert ok(daemon, "tfrecord", "index", uri(daemon, path)) == expected
    assert (
        ok(daemon, "tfrecord", "index", "--verify-crc", uri(daemon, path)) == expected
    )
    out = folder / f"{case}.idx"
    ok(daemon, "tfrecord", "index", uri(daemon, path), "--out", uri(daemon, out))
    assert out.read_bytes() == expected


def test_flipped_data_crc_fails_with_verify(
    daemon: Daemon, folder: pathlib.Path
) -> None:
    path = folder / "corrupt.tfrecord"
    write_tfrecord(path, [1000, 2000, 3000])
    expected = reference_index(path)
    second = int(expected.split(b"\n")[1].split()[0])
    data = bytearray(path.read_bytes())
    data[second + 12 + 500] ^= 0x40
    path.write_bytes(bytes(data))
    # Headers only: the index is still right.
    assert ok(daemon, "tfrecord", "index", uri(daemon, path)) == expected
    done = run(daemon, "tfrecord", "index", "--verify-crc", uri(daemon, path))
    assert done.returncode == 1
    stderr = done.stderr.decode()
    assert f"TFRecord record at offset {second}: data CRC mismatch" in stderr, stderr


def test_flipped_length_crc_fails_with_verify(
    daemon: Daemon, folder: pathlib.Path
) -> None:
    path = folder / "length.tfrecord"
    write_tfrecord(path, [10, 20])
    data = bytearray(path.read_bytes())
    data[9] ^= 0x01  # the first record's length CRC
    path.write_bytes(bytes(data))
    done = run(daemon, "tfrecord", "index", "--verify-crc", uri(daemon, path))
    assert done.returncode == 1
    assert "TFRecord record at offset 0: length CRC mismatch" in done.stderr.decode()


@pytest.mark.parametrize("verify", [False, True])
def test_truncated_file_fails_and_writes_no_index(
    daemon: Daemon, folder: pathlib.Path, verify: bool
) -> None:
    path = folder / "truncated.tfrecord"
    write_tfrecord(path, [1000, 2000, 3000])
    whole = path.read_bytes()
    third = int(reference_index(path).split(b"\n")[2].split()[0])
    path.write_bytes(whole[: third + 100])
    out = folder / "truncated.idx"
    flags = ["--verify-crc"] if verify else []
    done = run(
        daemon,
        "tfrecord",
        "index",
        *flags,
        uri(daemon, path),
        "--out",
        uri(daemon, out),
    )
    assert done.returncode == 1
    stderr = done.stderr.decode()
    record = len(whole) - third
    assert (
        f"TFRecord record at offset {third} is truncated: expected {record} bytes, found 100"
        in stderr
    ), stderr
    assert not out.exists()


def test_gen_npy_and_npz_load_in_numpy(daemon: Daemon, folder: pathlib.Path) -> None:
    sizes = [1000, 70_000, 4096]
    common = ["--count", "3", "--size", ",".join(map(str, sizes)), "--seed", "5"]
    for fmt in ("raw", "npy", "npz"):
        ok(daemon, "gen", uri(daemon, folder / fmt), "--format", fmt, *common)
    for i, size in enumerate(sizes):
        raw = (folder / "raw" / f"sample_{i:06}.bin").read_bytes()
        array = np.load(folder / "npy" / f"sample_{i:06}.npy")
        assert array.dtype == np.uint8 and array.shape == (size,)
        assert array.tobytes() == raw
        with np.load(folder / "npz" / f"sample_{i:06}.npz") as npz:
            assert sorted(npz.files) == ["x", "y"]
            assert npz["x"].dtype == np.uint8 and npz["x"].tobytes() == raw
            assert npz["y"].dtype == np.int64 and int(npz["y"]) == i


def test_gen_tfrecord_reads_in_the_tfrecord_package(
    daemon: Daemon, folder: pathlib.Path
) -> None:
    ok(
        daemon,
        "gen",
        uri(daemon, folder),
        "--format",
        "tfrecord",
        "--count",
        "2",
        "--records-per-file",
        "5",
        "--size",
        "3KiB",
        "--compress-ratio",
        "2",
    )
    for shard in range(2):
        path = folder / f"shard_{shard:06}.tfrecord"
        records = list(
            tfrecord_loader(str(path), None, {"image": "byte", "label": "int"})
        )
        assert [int(r["label"][0]) for r in records] == list(
            range(5 * shard, 5 * shard + 5)
        )
        assert all(len(r["image"]) == 3072 for r in records)
        assert ok(daemon, "tfrecord", "index", uri(daemon, path)) == reference_index(
            path
        )
