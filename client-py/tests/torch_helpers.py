"""Transforms and DataLoader plumbing for test_torch, importable by spawned
DataLoader workers."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable
from typing import Any

import sluice
import torch
from sluice.torch import SluiceIterableDataset, as_tensor
from torch.utils.data import DataLoader, Dataset


def name_and_digest(buf: sluice.Buffer) -> tuple[str, str]:
    """The object's file name and the SHA-256 of its bytes, read in place."""
    return buf.meta.uri.rsplit("/", 1)[1], hashlib.sha256(buf).hexdigest()


def uint8_view(buf: sluice.Buffer) -> torch.Tensor:
    """A zero-copy tensor over the leased bytes."""
    return as_tensor(buf)


def plain_frombuffer(buf: sluice.Buffer) -> torch.Tensor:
    """What a user might write: torch.frombuffer on the buffer itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # not writable
        return torch.frombuffer(buf, dtype=torch.uint8)


#: Buffers kept by `hoard`, as a worker holding on to its samples would.
HOARD: list[sluice.Buffer] = []


def hoard(buf: sluice.Buffer) -> bytes:
    """The bytes, keeping the buffer (and its lease) for the process's life."""
    HOARD.append(buf)
    return bytes(buf)


def names(batches: Iterable[Any], by_content: dict[bytes, str]) -> list[str]:
    """The objects' names, in the order a loader yielded them (batches of
    ``bytes``, collated into lists)."""
    return [by_content[sample] for batch in batches for sample in batch]


def loader(
    dataset: Dataset[Any],
    workers: int,
    start_method: str,
    batch_size: int | None = 3,
    **kwargs: Any,
) -> DataLoader[Any]:
    context = start_method if workers else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        multiprocessing_context=context,
        **kwargs,
    )


def ddp_rank(
    rank: int, world_size: int, init_file: str, prefix: str, address: str, out: Any
) -> None:
    """One DDP rank (a gloo process group): reads its share of ``prefix``
    through a DataLoader with 2 spawned workers; puts ``(rank, len, samples)``."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        dataset = SluiceIterableDataset(prefix, seed=4, client=sluice.Client(address))
        samples = [s for batch in loader(dataset, 2, "spawn") for s in batch]
        out.put((rank, len(dataset), samples))
    finally:
        dist.destroy_process_group()
