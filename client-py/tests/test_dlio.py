"""sluice.dlio: a DLIO workload (dlio-benchmark, MLPerf Storage's engine)
reads its samples through the daemon.

DLIO generates a small unet3d-like dataset (npz) into the daemon's
``file://`` root and trains on it for two epochs with the sluice reader, as
its own entry point runs (``python -m sluice.dlio``, one process): DLIO must
report the expected steps, and the daemon must have delivered every file
once per epoch, from the backend in the first and from its cache in the
second. The decoders are checked against numpy and PIL on the formats the
reader takes.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import dlio_benchmark  # noqa: F401  (required, not skipped: a missing DLIO fails here)
import numpy as np
import pytest
from PIL import Image

import sluice
from conftest import Daemon, Files
from sluice.dlio import decode, settings

FILES = 6
BATCH = 2
EPOCHS = 2
#: Each run starts Python, torch, Hydra and MPI (about 10 s on 2 cores).
RUN_TIMEOUT = 100
DELIVERED = 'sluice_session_delivered_bytes_total{transport="shm"}'


def dlio_run(workdir: Path, overrides: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SLUICE_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "sluice.dlio", "workload=unet3d_h100", *overrides],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_unet3d_trains_through_the_daemon(
    daemon: Daemon, files: Files, tmp_path: Path
) -> None:
    data, output = files.dir / "unet3d", tmp_path / "output"
    before = daemon.metrics()
    run = dlio_run(
        tmp_path,
        [
            "++workload.workflow.generate_data=True",
            "++workload.workflow.train=True",
            "++workload.workflow.checkpoint=False",
            f"++workload.dataset.data_folder={data}",
            f"++workload.dataset.num_files_train={FILES}",
            # 256 KiB samples of varied size: each below the test daemon's
            # cache.max_object_size (8 MiB), so the second epoch is cached.
            "++workload.dataset.record_length=262144",
            "++workload.dataset.record_length_stdev=65536",
            "++workload.dataset.record_length_resize=65536",
            f"++workload.reader.batch_size={BATCH}",
            "++workload.reader.read_threads=2",
            f"++workload.train.epochs={EPOCHS}",
            "++workload.train.computation_time=0",
            f"++workload.output.folder={output}",
            "++workload.reader.reader_classname=sluice.dlio.SluiceReader",
            f"++workload.sluice.address={daemon.address}",
        ],
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    after = daemon.metrics()

    generated = sorted((data / "train").glob("*.npz"))
    assert len(generated) == FILES
    size = sum(path.stat().st_size for path in generated)
    assert len({path.stat().st_size for path in generated}) > 1

    # DLIO's own accounting: every epoch took all its steps.
    steps = FILES // BATCH
    per_rank = json.loads((output / "0_output.json").read_text())
    for epoch in range(1, EPOCHS + 1):
        assert len(per_rank[str(epoch)]["proc"]["block1"]) == steps
    summary = json.loads((output / "summary.json").read_text())
    assert summary["epochs"] == EPOCHS
    throughput = summary["metric"]["train_throughput_samples_per_second"]
    assert len(throughput) == EPOCHS and min(throughput) > 0

    # The daemon's: each file read whole once per epoch, through it.
    def delta(series: str) -> float:
        return after.get(series, 0.0) - before.get(series, 0.0)

    assert delta(DELIVERED) == EPOCHS * size
    assert delta("sluice_cache_misses_total") == FILES
    assert delta("sluice_cache_hits_total") == (EPOCHS - 1) * FILES


def put(files: Files, name: str, data: bytes) -> str:
    (files.dir / name).write_bytes(data)
    return files.uri(name)


def test_stored_npz_is_a_view_of_the_leased_bytes(client: sluice.Client, files: Files) -> None:
    x = np.random.default_rng(1).integers(0, 255, size=(37, 41, 3), dtype=np.uint8)
    stream = io.BytesIO()
    np.savez(stream, x=x, y=[0, 0, 0])
    with client.get(put(files, "s.npz", stream.getvalue())) as buf:
        array = decode.npz(buf)
        assert np.array_equal(array, x)
        assert not array.flags.writeable
        assert np.shares_memory(array, np.frombuffer(memoryview(buf), dtype=np.uint8))
        del array


def test_fortran_npy_and_compressed_npz_decode_like_numpy(
    client: sluice.Client, files: Files
) -> None:
    x = np.asfortranarray(np.arange(6 * 7 * 2, dtype=np.float32).reshape(6, 7, 2))
    stream = io.BytesIO()
    np.save(stream, x)
    with client.get(put(files, "f.npy", stream.getvalue())) as buf:
        array = decode.npy(buf)
        assert array.flags.f_contiguous and np.array_equal(array, x)
        del array
    stream = io.BytesIO()
    np.savez_compressed(stream, x=x)
    with client.get(put(files, "c.npz", stream.getvalue())) as buf:
        array = decode.npz(buf)
        assert array.flags.writeable and np.array_equal(array, x)  # inflated: a copy


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_images_decode_like_pil(client: sluice.Client, files: Files, fmt: str) -> None:
    pixels = np.random.default_rng(2).integers(0, 255, size=(48, 64), dtype=np.uint8)
    stream = io.BytesIO()
    Image.fromarray(pixels).save(stream, format=fmt)
    expected = np.asarray(Image.open(io.BytesIO(stream.getvalue())))
    with client.get(put(files, f"i.{fmt.lower()}", stream.getvalue())) as buf:
        assert np.array_equal(decode.image(buf), expected)


def test_sample_release_ends_the_lease(client: sluice.Client, files: Files) -> None:
    stream = io.BytesIO()
    np.savez(stream, x=np.zeros((8, 8, 1), dtype=np.uint8))
    buf = client.get(put(files, "r.npz", stream.getvalue()))
    sample = decode.Sample(buf, decode.npz(buf))
    sample.release()
    assert buf.closed and sample.array is None


def test_paths_map_to_uris_under_the_root() -> None:
    plain = settings.Settings()
    assert plain.uri("/data/dlio/train/img_1.npz", "/data/dlio") == "file:///data/dlio/train/img_1.npz"
    rooted = settings.from_mapping({"root": "s3://bucket/unet3d/", "address": "unix:///s.sock"})
    assert rooted.address == "unix:///s.sock"
    assert rooted.uri("/data/dlio/train/img_1.npz", "/data/dlio/") == "s3://bucket/unet3d/train/img_1.npz"
    with pytest.raises(ValueError, match="not a file under"):
        rooted.uri("/elsewhere/img_1.npz", "/data/dlio")
    with pytest.raises(ValueError, match="unknown keys"):
        settings.from_mapping({"rot": "s3://bucket"})
