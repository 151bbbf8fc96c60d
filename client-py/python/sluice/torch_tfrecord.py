"""A PyTorch dataset of the records of TFRecord files, read through the
sluice daemon. Also importable as ``sluice.torch.SluiceTFRecordDataset``.

:class:`SluiceTFRecordDataset` is :class:`sluice.torch.SluiceIterableDataset`
with records instead of objects as samples: it overrides what a sample is
(how many there are, what ``get_many`` reads for one, how a read becomes a
sample) and inherits everything else — the epoch's order from ``seed`` and
the epoch, the split across ranks and DataLoader workers, epoch plans,
riding out daemon restarts, ``state_dict`` / ``load_state_dict`` /
``state_after`` and ``set_epoch``.

Records
-------
Record ``i`` of the dataset is found through the files' indexes in file
order: the records of the first file, then of the second, and so on (an
empty file has none). A record is read as one ranged item of
``get_many``, its frame (``offset``, ``size``) as the index gives it, and its
framing checked against the index (and, with ``verify_crc``, its data's
CRC; see :mod:`sluice.tfrecord`). A sample is the record's ``bytes``, or
``transform(view)``: ``view`` is a read-only memoryview of the record's data
in the daemon's shared memory, without a copy (``Example.FromString(view)``
copies out of it); a result that still refers to it keeps its lease until
collected, as with the other datasets.

Indexes
-------
The index of file ``uri`` is the object ``uri + index_suffix`` (``.idx``),
DALI's text format; a listed prefix leaves such objects out of the files.
The indexes are read on first use, in one ``get_many``, and those missing
are built by scanning their files (``build_index=False`` makes a missing one
an error instead). They are loaded once per process, like a prefix's
listing: a pickled copy (a ``spawn`` worker) carries them, and a ``fork``
worker inherits them if the parent loaded them first, so call
``len(dataset)`` before creating a DataLoader with fork workers.
"""

from __future__ import annotations

import bisect
import hashlib
from array import array
from collections.abc import Callable, Sequence
from typing import Any, Optional, cast

from . import Buffer, Client, Item
from .tfrecord import INDEX_SUFFIX, Index, load_indexes, record_data
from .torch import (
    DEFAULT_PREFETCH,
    DEFAULT_RECONNECT_TIMEOUT,
    SluiceIterableDataset,
    Source,
    _Objects,
    _release,
    _sample,
)

__all__ = ["RecordTransform", "SluiceTFRecordDataset"]

#: A transform of a record's data, a memoryview over the daemon's shared memory.
RecordTransform = Callable[[memoryview], Any]


class _Records:
    """The frames of every record of the files, in dataset order, as flat
    arrays (16 bytes a record, where tuples would take ten times that)."""

    def __init__(self, indexes: Sequence[Index]) -> None:
        self.offsets = array("q")
        self.sizes = array("q")
        # Record number of each file's first record, and the total last.
        self.starts = [0]
        for index in indexes:
            self.offsets.extend(offset for offset, _ in index)
            self.sizes.extend(size for _, size in index)
            self.starts.append(len(self.offsets))

    def __len__(self) -> int:
        return len(self.offsets)

    def items(self, indices: list[int], uris: list[str]) -> list[Item]:
        """The ranged reads of records ``indices``."""
        starts = self.starts
        return [
            (uris[bisect.bisect_right(starts, i) - 1], self.offsets[i], self.sizes[i])
            for i in indices
        ]

    def digest(self) -> str:
        """A digest of the number of records of each file."""
        return hashlib.sha256(" ".join(map(str, self.starts)).encode()).hexdigest()[:16]


class _TFRecordFiles(_Objects):
    """The files of a dataset and, loaded once on first use, their records."""

    def __init__(self, source: Source, client: Optional[Client], suffix: str, build: bool) -> None:
        super().__init__(source, client, exclude=(suffix,))
        self.suffix = suffix
        self.build = build
        self._records: Optional[_Records] = None

    def records(self) -> _Records:
        if self._records is None:
            uris = self.uris()
            with self._locked():
                if self._records is None:
                    indexes = load_indexes(self.client, uris, suffix=self.suffix, build=self.build)
                    self._records = _Records(indexes)
        return self._records

    def __getstate__(self) -> dict[str, Any]:
        self.records()
        return super().__getstate__()


class SluiceTFRecordDataset(SluiceIterableDataset):
    """Streams the records of the TFRecord files of ``source`` (a list of
    URIs, or a prefix listed once on first use) once per epoch, in an order
    shuffled by ``seed`` and the epoch, split across DDP ranks and
    DataLoader workers exactly as :class:`SluiceIterableDataset` splits
    objects (see the module documentations). Each sample is the record's
    ``bytes``, or ``transform(view)`` over its data in place.

    ``index_suffix``: the index of file ``uri`` is the object ``uri +
    index_suffix``; those missing are built on first use, or with
    ``build_index=False`` raise :class:`sluice.NotFoundError`.
    ``verify_crc``: check every record's data CRC (the length's always is).
    The other arguments are :class:`SluiceIterableDataset`'s. ``len()`` is
    the number of records of this rank per epoch.
    """

    def __init__(
        self,
        source: Source,
        shuffle: bool = True,
        seed: int = 0,
        transform: Optional[RecordTransform] = None,
        client: Optional[Client] = None,
        prefetch: int = DEFAULT_PREFETCH,
        *,
        index_suffix: str = INDEX_SUFFIX,
        build_index: bool = True,
        verify_crc: bool = False,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        drop_last: bool = False,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
        plan: bool = True,
        epochs: Optional[int] = None,
    ) -> None:
        super().__init__(
            source,
            shuffle,
            seed,
            cast(Any, transform),  # called with a memoryview: see _make_sample
            client,
            prefetch,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
            reconnect_timeout=reconnect_timeout,
            plan=plan,
            epochs=epochs,
        )
        self._objects: _TFRecordFiles = _TFRecordFiles(source, client, index_suffix, build_index)
        self.verify_crc = verify_crc

    @property
    def uris(self) -> list[str]:
        """The TFRecord files, in listing order."""
        return self._objects.uris()

    @property
    def num_records(self) -> int:
        """Records in all the files (every rank's)."""
        return len(self._objects.records())

    def _count(self) -> int:
        return len(self._objects.records())

    def _fingerprint(self) -> str:
        return f"{self._objects.fingerprint()}-{self._objects.records().digest()}"

    def _items(self, indices: list[int]) -> list[Item]:
        return self._objects.records().items(indices, self._objects.uris())

    def _make_sample(self, item: Item, buffer: Buffer) -> Any:
        assert isinstance(item, tuple)  # from _items: (uri, offset, size)
        uri, offset, size = item
        assert offset is not None and size is not None
        verify = self.verify_crc
        if self.transform is None:
            try:
                with record_data(buffer, uri, offset, size, verify) as data:
                    return bytes(data)
            finally:
                _release(buffer)
        transform = cast(RecordTransform, self.transform)
        return _sample(buffer, lambda b: transform(record_data(b, uri, offset, size, verify)))
