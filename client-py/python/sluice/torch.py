"""PyTorch datasets that read their samples through the sluice daemon.

One object is one sample. :class:`SluiceMapDataset` is map-style (indexable,
for any sampler); :class:`SluiceIterableDataset` streams an epoch in a
shuffled order, split across DDP ranks and DataLoader workers, and can resume
mid-epoch. Both take their objects as a list of URIs or as a prefix, listed
once (recursively, in URI order) on first use. :class:`SluiceTFRecordDataset`
(in ``sluice.torch_tfrecord``) is the iterable dataset with the records of
TFRecord files as samples.

Samples
-------
A read is a :class:`sluice.Buffer` over the daemon's shared memory. With
``transform=None`` a sample is ``bytes(buffer)`` (one copy, and something
every DataLoader collates and pickles). Otherwise it is ``transform(buffer)``:
decode straight from the leased bytes (``numpy.frombuffer``, ``PIL.Image.open(
io.BytesIO(...))``, :func:`as_tensor`). ``buffer.meta.uri`` names the object.
The lease ends as soon as the transform returns, unless something still
refers to the buffer (a zero-copy array or tensor made from it, or the buffer
itself): then it ends when that is collected. A transform must be picklable for ``spawn`` workers.

Sharding (the iterable dataset)
-------------------------------
Every process computes the same order for an epoch, from ``seed`` and the
epoch alone: a permutation of ``range(n)`` (the identity without
``shuffle``). Rank ``r`` of ``R`` takes positions ``r, r + R, r + 2R, ...`` of
it; DataLoader worker ``w`` of ``W`` on that rank takes every ``W``-th of
those, from its ``w``-th. The slices are disjoint and cover the order, so each
object is read exactly once per epoch across all ranks and workers (ranks
differ by one sample at most; ``drop_last=True`` trims the order to a multiple
of ``R`` so that every rank takes as many steps). The rank comes from
explicit arguments, else ``torch.distributed`` when it is initialized, else
``RANK`` / ``WORLD_SIZE``; the worker from ``get_worker_info()``.

Read-ahead
----------
A worker reads its slice through ``Client.get_many(ordered=True,
window=prefetch)``: up to ``prefetch`` reads in flight ahead of the consumer,
and at most ``prefetch`` results (leases) held, so memory stays bounded while
the daemon works on the next samples. Leases not consumed are released when
the iteration ends or is abandoned, and by the daemon when a worker dies
(its session ends with the process).

Resume
------
The state of an iteration is, per worker, how many samples of its slice it
has handed out (its *position*), with the epoch, seed and shape of the split
(rank, world size, number of workers, number of objects). Since the order is
a function of these, resuming skips the first ``position`` items of each
slice without reading them, and continues in the same order.

- With torchdata's ``StatefulDataLoader`` nothing more is needed: it asks
  each worker's copy for :meth:`~SluiceIterableDataset.state_dict` and hands it
  back to the same worker on ``load_state_dict``.
- With a plain ``DataLoader``, the workers' progress follows from the number
  of batches consumed (workers deliver batches in turn):
  :meth:`~SluiceIterableDataset.state_after` computes the state after ``k``
  batches; load it into the dataset before creating the loader's iterator.

A loaded position holds for its epoch until :meth:`set_epoch` selects another
one. Use ``persistent_workers=False`` (the default): workers copy the dataset
when they start, so a persistent worker never sees a later ``set_epoch``.

Epoch plans
-----------
The iterable dataset knows the order it reads in, so it tells the daemon
(``plan=True``, the default): each worker submits its slice of the current
epoch followed by its slice of the next one. The daemon then reads ahead of
the worker (within its ``[prefetch]`` look-ahead bounds) and, when the
dataset is larger than its cache, keeps what the plans need soonest instead
of what was read last: an epoch twice the cache gets half its reads from
the cache rather than none. Each read of the plan's next item moves the
worker's position in it; the plan ends with the worker's session. Because
the next epoch is in the plan, read-ahead crosses the epoch boundary.

A map dataset's order is its sampler's: wrap the sampler in
:class:`SluicePlanSampler` to submit each epoch's order as a plan from the
main process. A run that must not give the storage its order (MLPerf
Storage CLOSED) passes ``plan=False`` or does not wrap its sampler.

When the daemon restarts
------------------------
A read that fails with :class:`sluice.UnavailableError` — the daemon was
killed, is restarting or draining, or its backend stayed down through the
daemon's own retries — is retried, so that an epoch rides out a daemon
restart. The waits between tries double from 50 ms up to 2 s; one outage is
given up on ``reconnect_timeout`` seconds (default 60) after it began, and the
last error is raised. Every retry logs a warning on the ``sluice.torch``
logger. The iterable dataset goes on at the first sample it has not handed
out yet: nothing is skipped or repeated. Samples already delivered stay valid
(their shared memory outlives the daemon); the client opens a new session on
the restarted daemon by itself. ``reconnect_timeout=0`` turns retries off.
"""

from __future__ import annotations

import hashlib
import logging
import math
import operator
import os
import secrets
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Optional, Union

import torch
from torch.utils.data import Dataset, IterableDataset, Sampler, get_worker_info

from . import Buffer, Client, Item, SluiceError, UnavailableError

__all__ = [
    "DEFAULT_PREFETCH",
    "DEFAULT_RECONNECT_TIMEOUT",
    "SluiceIterableDataset",
    "SluiceMapDataset",
    "SluicePlanSampler",
    "SluiceTFRecordDataset",
    "as_tensor",
]

#: Reads in flight per worker: at ~20 ms a cold object-store read, 16 sustain
#: ~800 samples/s per worker. The results held ahead count against the
#: session's lease quota (512 MiB by default): lower it for objects of tens
#: of MiB.
DEFAULT_PREFETCH = 16

#: Seconds one outage of the daemon (UNAVAILABLE) is ridden out before a
#: read gives up: a restart of the daemon takes well under a second, a
#: node's systemd restarts it within seconds.
DEFAULT_RECONNECT_TIMEOUT = 60.0

#: The first wait after an UNAVAILABLE read, and the longest; each retry
#: doubles it.
_FIRST_WAIT = 0.05
_LONGEST_WAIT = 2.0

_log = logging.getLogger(__name__)

#: A prefix to list, or the objects' URIs.
Source = Union[str, Iterable[str]]
Transform = Callable[[Buffer], Any]

_STATE_VERSION = 1


def as_tensor(buffer: Buffer, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """A 1-D tensor over the buffer's bytes, without a copy.

    The tensor is read-only memory (the daemon's cache): writing to it
    crashes the process. Copy it (``.clone()``) before modifying it in
    place. It keeps the buffer, and so the lease, alive until collected.
    """
    with warnings.catch_warnings():
        # "The given buffer is not writable": by design, see above.
        warnings.simplefilter("ignore", UserWarning)
        # torch.frombuffer keeps a reference to its argument but releases
        # the buffer export at once; over a memoryview, the export lasts as
        # long as the tensor, so the buffer refuses to close() under it.
        return torch.frombuffer(memoryview(buffer), dtype=dtype)


class _Outage:
    """The retries of one outage of the daemon: waits that double from
    ``_FIRST_WAIT`` to ``_LONGEST_WAIT``, for at most ``timeout`` seconds
    after the first failure. :meth:`reset` after a read succeeds."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._since: Optional[float] = None
        self._wait = _FIRST_WAIT

    def reset(self) -> None:
        self._since = None
        self._wait = _FIRST_WAIT

    def wait(self, error: UnavailableError) -> None:
        """Sleeps before the next try; re-raises ``error`` once the outage
        has lasted ``timeout`` seconds."""
        now = time.monotonic()
        if self._since is None:
            self._since = now
        left = self._since + self.timeout - now
        if left <= 0:
            raise error
        wait = min(self._wait, left)
        self._wait = min(self._wait * 2, _LONGEST_WAIT)
        _log.warning("sluice daemon unavailable, retrying in %.2fs: %s", wait, error)
        time.sleep(wait)


def _get(client: Client, uri: str, outage: _Outage) -> Buffer:
    """``client.get(uri)``, retried through an outage of the daemon."""
    while True:
        try:
            buffer = client.get(uri)
        except UnavailableError as error:
            outage.wait(error)
            continue
        outage.reset()
        return buffer


def _check_timeout(reconnect_timeout: float) -> float:
    if not reconnect_timeout >= 0:
        raise ValueError("reconnect_timeout must not be negative")
    return float(reconnect_timeout)


def _release(buffer: Buffer) -> None:
    try:
        buffer.close()
    except BufferError:
        pass  # a view of it is still alive; the lease ends when it is collected


def _sample(buffer: Buffer, transform: Optional[Transform]) -> Any:
    """``transform(buffer)``, or the buffer's bytes; the lease is released
    unless something (the result) still refers to the buffer."""
    if transform is None:
        try:
            return bytes(buffer)
        finally:
            buffer.close()
    held = sys.getrefcount(buffer)
    try:
        result = transform(buffer)
    except BaseException:
        _release(buffer)
        raise
    # More references than before: the result (a tensor from
    # torch.frombuffer, the buffer itself...) holds it, so it must stay open.
    if sys.getrefcount(buffer) == held:
        _release(buffer)
    return result


class _Objects:
    """The URIs of a dataset: given, or listed once under a prefix, on first
    use in whichever process comes first (a fork inherits the listing, a
    pickled copy carries it). A listing leaves out URIs ending in one of
    ``exclude``."""

    def __init__(
        self, source: Source, client: Optional[Client], exclude: tuple[str, ...] = ()
    ) -> None:
        self.prefix: Optional[str] = None
        self.exclude = exclude
        self._uris: Optional[list[str]] = None
        if isinstance(source, str):
            self.prefix = source
        else:
            self._uris = list(source)
            if not all(isinstance(uri, str) for uri in self._uris):
                raise TypeError("the objects must be a prefix or URI strings")
        self._client = client
        self._fingerprint: Optional[str] = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _locked(self) -> threading.Lock:
        if self._pid != os.getpid():  # a fork may have copied it held
            self._lock = threading.Lock()
            self._pid = os.getpid()
        return self._lock

    @property
    def client(self) -> Client:
        if self._client is None:
            with self._locked():
                if self._client is None:
                    self._client = Client()
        return self._client

    def uris(self) -> list[str]:
        if self._uris is None:
            with self._locked():
                if self._uris is None:
                    assert self.prefix is not None
                    listed = [
                        meta.uri
                        for meta in self.client.list(self.prefix, recursive=True)
                        if not isinstance(meta, str) and not meta.uri.endswith(self.exclude)
                    ]
                    if not listed:
                        raise ValueError(f"no objects under {self.prefix!r}")
                    self._uris = listed
        return self._uris

    def fingerprint(self) -> str:
        """A digest of the URI list, to tell a state of another listing."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for uri in self.uris():
                digest.update(uri.encode())
                digest.update(b"\n")
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def __getstate__(self) -> dict[str, Any]:
        self.uris()
        state = self.__dict__.copy()
        del state["_lock"], state["_pid"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._pid = os.getpid()


class SluiceMapDataset(Dataset[Any]):
    """Map-style: sample ``i`` is object ``i`` of ``source`` (a list of
    URIs, or a prefix listed once on first use), ``transform(buffer)`` or
    the object's ``bytes``.

    A DataLoader fetching batches calls :meth:`__getitems__`, which reads a
    batch's objects with up to ``prefetch`` in flight; ``client`` defaults
    to ``sluice.Client()`` in each process. Reads are retried for up to
    ``reconnect_timeout`` seconds while the daemon is unavailable (see the
    module documentation).
    """

    def __init__(
        self,
        source: Source,
        transform: Optional[Transform] = None,
        client: Optional[Client] = None,
        prefetch: int = DEFAULT_PREFETCH,
        *,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
    ) -> None:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self._objects = _Objects(source, client)
        self.transform = transform
        self.prefetch = prefetch
        self.reconnect_timeout = _check_timeout(reconnect_timeout)

    @property
    def uris(self) -> list[str]:
        """The objects, in sample order."""
        return self._objects.uris()

    def __len__(self) -> int:
        return len(self._objects.uris())

    def __getitem__(self, index: int) -> Any:
        uri = self._objects.uris()[operator.index(index)]
        buffer = _get(self._objects.client, uri, _Outage(self.reconnect_timeout))
        return _sample(buffer, self.transform)

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        uris = self._objects.uris()
        wanted = [uris[operator.index(i)] for i in indices]
        samples: list[Any] = []
        outage = _Outage(self.reconnect_timeout)
        while len(samples) < len(wanted):
            rest = wanted[len(samples) :]
            # A batch is read at once: no plan of it (SluicePlanSampler
            # gives the daemon the epoch's order).
            results = self._objects.client.get_many(
                rest, ordered=True, window=self.prefetch, plan=False
            )
            try:
                for _, buffer in results:
                    samples.append(_sample(buffer, self.transform))
                    outage.reset()
            except UnavailableError as error:
                outage.wait(error)  # then the rest, from the first sample not read
            finally:
                del results  # releases what was read ahead
        return samples


class _Shard(NamedTuple):
    rank: int
    world_size: int
    worker: int
    num_workers: int


def _rank_and_world_size() -> tuple[int, int]:
    """torch.distributed when initialized, else ``RANK`` / ``WORLD_SIZE``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed for (seed, epoch): distinct pairs never share
    one the way ``seed + epoch`` would."""
    digest = hashlib.sha256(f"sluice:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class SluiceIterableDataset(IterableDataset[Any]):
    """Streams the objects of ``source`` (a list of URIs, or a prefix listed
    once on first use) once per epoch, in an order shuffled by ``seed`` and
    the epoch, split across DDP ranks and DataLoader workers (see the module
    documentation). Each sample is ``transform(buffer)`` or the object's
    ``bytes``.

    ``rank`` and ``world_size`` override what torch.distributed or the
    environment say. ``prefetch``: reads in flight ahead of the consumer per
    worker. ``plan``: submit each worker's order to the daemon as an epoch
    plan (see the module documentation); ``epochs``, when the run's number
    of epochs is known, keeps the last epoch's plan from reaching into an
    epoch that never comes. ``reconnect_timeout``: how long reads are retried while the daemon
    is unavailable (see the module documentation). ``len()`` is the number of
    samples of this rank per epoch.
    """

    def __init__(
        self,
        source: Source,
        shuffle: bool = True,
        seed: int = 0,
        transform: Optional[Transform] = None,
        client: Optional[Client] = None,
        prefetch: int = DEFAULT_PREFETCH,
        *,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        drop_last: bool = False,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
        plan: bool = True,
        epochs: Optional[int] = None,
    ) -> None:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        self._objects = _Objects(source, client)
        self.shuffle = shuffle
        self.seed = seed
        self.transform = transform
        self.prefetch = prefetch
        self.drop_last = drop_last
        self.reconnect_timeout = _check_timeout(reconnect_timeout)
        self._topology = None if rank is None else _checked(rank, world_size)
        self.plan = plan
        self.epochs = epochs
        # Base of this dataset's plan ids (one per DataLoader worker).
        self._plan_id = secrets.randbits(63)
        self._epoch = 0
        # A position loaded for `_epoch`, for the next pass.
        self._resume: Optional[_Resume] = None
        # The current pass in this process: its rotation and the samples of
        # its slice handed out.
        self._rotation = 0
        self._position = 0

    @property
    def uris(self) -> list[str]:
        """The objects, in listing order (not the epoch's order)."""
        return self._objects.uris()

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order the next iteration follows. Call it
        before each epoch, on every rank, with the same value; selecting
        another epoch than a loaded state's drops that state."""
        if epoch != self._epoch:
            self._resume = None
            self._position = 0
        self._epoch = epoch

    def __len__(self) -> int:
        rank, world_size = self._rank_and_world_size()
        return len(range(rank, self._epoch_length(), world_size))

    def __iter__(self) -> Iterator[Any]:
        shard = self._shard()
        resume, self._resume = self._resume, None  # a later pass starts afresh
        self._rotation = 0 if resume is None else resume.check(shard.num_workers)
        slot = self._slot(shard)
        indices = self._slice(shard.rank, shard.world_size, slot, shard.num_workers)
        self._position = 0 if resume is None else resume.position(slot, len(indices))
        # The next epoch's pass starts afresh: this worker's own slice.
        following = (
            self._slice(shard.rank, shard.world_size, shard.worker, shard.num_workers, self._epoch + 1)
            if self.plan and (self.epochs is None or self._epoch + 1 < self.epochs)
            else []
        )
        # One plan id per worker, the same every epoch: the next epoch's
        # worker takes the place of the plan this worker's predecessor left
        # behind (the daemon keeps it until then; see ``plan_linger``).
        plan_id = (self._plan_id + shard.worker) % (1 << 63)
        return self._read(indices[self._position :], following, plan_id)

    def _read(self, indices: list[int], following: list[int], plan_id: int) -> Iterator[Any]:
        outage = _Outage(self.reconnect_timeout)
        done = 0
        while done < len(indices):
            if self.plan:
                # Again after an outage: a new session holds no plan.
                _submit_plan(self._objects.client, self._items(indices[done:] + following), plan_id)
            # The plan (this epoch and the next) was submitted above.
            items = self._items(indices[done:])
            results = self._objects.client.get_many(
                items, ordered=True, window=self.prefetch, plan=False
            )
            try:
                for at, buffer in results:
                    sample = self._make_sample(items[at], buffer)
                    done += 1
                    self._position += 1
                    outage.reset()
                    yield sample
            except UnavailableError as error:
                # The daemon went away: wait, then go on at the first sample
                # not handed out, on a new session.
                outage.wait(error)
            finally:
                del results  # releases the leases read ahead and not consumed

    # What a sample is: one object. A dataset of other units (the records
    # of TFRecord files) overrides these four.

    def _count(self) -> int:
        """Samples in the dataset."""
        return len(self._objects.uris())

    def _fingerprint(self) -> str:
        """A digest of what the samples are, to tell a state of another
        dataset."""
        return self._objects.fingerprint()

    def _items(self, indices: list[int]) -> list[Item]:
        """What ``get_many`` reads for samples ``indices``."""
        uris = self._objects.uris()
        return [uris[i] for i in indices]

    def _make_sample(self, item: Item, buffer: Buffer) -> Any:
        """The sample of ``buffer``, the read of ``item``."""
        return _sample(buffer, self.transform)

    # Resume.

    def state_dict(self) -> dict[str, Any]:
        """The position of this process's iteration (in a DataLoader worker:
        that worker's), with what it depends on."""
        shard = self._shard()
        return self._state(shard.num_workers, self._rotation, {self._slot(shard): self._position})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a position: the next iteration of the state's epoch
        skips what was consumed, without reading it. Raises ``ValueError``
        for a state of another dataset, seed, listing or split."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown state version {state.get('version')!r}")
        current = self._state(state["num_workers"], 0, {})
        for key in ("seed", "shuffle", "drop_last", "num_samples", "fingerprint"):
            if state[key] != current[key]:
                raise ValueError(
                    f"the state is of another dataset: {key} {state[key]!r}, here {current[key]!r}"
                )
        for key in ("rank", "world_size"):
            if state[key] != current[key]:
                raise ValueError(
                    f"the state is of {key} {state[key]}, this process is of {current[key]}"
                )
        positions = {int(slot): int(p) for slot, p in state["positions"].items()}
        self._epoch = int(state["epoch"])
        self._resume = _Resume(int(state["num_workers"]), int(state["rotation"]), positions)
        # What state_dict() reports until the pass begins.
        self._rotation = self._resume.rotation
        self._position = positions.get(self._slot(self._shard()), 0)

    def state_after(
        self, batches: int, batch_size: int, num_workers: int = 0, drop_last: bool = False
    ) -> dict[str, Any]:
        """The state after a plain ``DataLoader(self, batch_size,
        num_workers, drop_last)`` has yielded ``batches`` batches of the
        current epoch (counted from its start, across resumes).

        Such a loader's workers hand out their batches in turn (0, 1, ...,
        0, 1, ...), skipping those that have run out, and a new loader starts
        again at worker 0: so the state also rotates the workers' slices, to
        give worker 0 the slice whose turn is next.
        """
        if batch_size < 1 or batches < 0:
            raise ValueError("batch_size must be positive and batches not negative")
        rank, world_size = self._rank_and_world_size()
        workers = max(num_workers, 1)
        mine = len(range(rank, self._epoch_length(), world_size))
        counts = [len(range(w, mine, workers)) for w in range(workers)]
        per_worker = [c // batch_size if drop_last else math.ceil(c / batch_size) for c in counts]
        taken = [0] * workers
        left, last = batches, workers - 1
        for turn in range(max(per_worker, default=0)):
            for w in range(workers):
                if left and turn < per_worker[w]:
                    taken[w] += 1
                    left -= 1
                    last = w
        if left:
            raise ValueError(f"an epoch of this rank has {batches - left} batches, not {batches}")
        positions = {w: min(taken[w] * batch_size, counts[w]) for w in range(workers)}
        return self._state(workers, (last + 1) % workers, positions)

    # The split.

    def _state(self, num_workers: int, rotation: int, positions: dict[int, int]) -> dict[str, Any]:
        rank, world_size = self._rank_and_world_size()
        return {
            "version": _STATE_VERSION,
            "epoch": self._epoch,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "num_samples": self._count(),
            "fingerprint": self._fingerprint(),
            "rank": rank,
            "world_size": world_size,
            "num_workers": num_workers,
            # Worker w reads slice (w + rotation) % num_workers: positions
            # are by slice.
            "rotation": rotation,
            "positions": positions,
        }

    def _rank_and_world_size(self) -> tuple[int, int]:
        if self._topology is None:
            return _checked(*_rank_and_world_size())
        return self._topology

    def _shard(self) -> _Shard:
        rank, world_size = self._rank_and_world_size()
        info = get_worker_info()
        if info is None:
            return _Shard(rank, world_size, 0, 1)
        return _Shard(rank, world_size, info.id, info.num_workers)

    def _epoch_length(self) -> int:
        """Objects in an epoch's order: all, or with ``drop_last`` a
        multiple of the world size."""
        count = self._count()
        if self.drop_last:
            count -= count % self._rank_and_world_size()[1]
        return count

    def _order(self, epoch: Optional[int] = None) -> list[int]:
        """An epoch's order (the current one's by default): object
        indexes, the same in every process."""
        count = self._count()
        if not self.shuffle:
            order = list(range(count))
        else:
            seed = _epoch_seed(self.seed, self._epoch if epoch is None else epoch)
            generator = torch.Generator().manual_seed(seed)
            order = torch.randperm(count, generator=generator).tolist()
        return order[: self._epoch_length()]

    def _slot(self, shard: _Shard) -> int:
        """The slice of this worker: its own, unless a resumed state rotated
        them."""
        return (shard.worker + self._rotation) % shard.num_workers

    def _slice(
        self, rank: int, world_size: int, slot: int, num_workers: int, epoch: Optional[int] = None
    ) -> list[int]:
        """A worker's part of an epoch's order: the rank's every
        ``world_size``-th from ``rank``, then of those every
        ``num_workers``-th from ``slot``."""
        return self._order(epoch)[rank::world_size][slot::num_workers]

    def __getstate__(self) -> dict[str, Any]:
        # A copy for a spawned worker, where torch.distributed is not
        # initialized, carries this process's rank.
        state = self.__dict__.copy()
        state["_topology"] = self._rank_and_world_size()
        return state


def _submit_plan(client: Client, items: list[Item], plan_id: int) -> None:
    """Submits a plan; a refusal or a daemon without plans only loses the
    read-ahead, never the reads: logged, not raised."""
    try:
        client.submit_plan(items, plan_id=plan_id, job=f"pid {os.getpid()}")
    except SluiceError as error:
        _log.warning("sluice: epoch plan not taken (reads go on without it): %s", error)


class SluicePlanSampler(Sampler[int]):
    """Wraps the sampler of a :class:`SluiceMapDataset` (any iterable of
    indexes, e.g. ``RandomSampler`` or ``DistributedSampler``): each
    iteration takes the sampler's whole order first, submits it to the daemon
    as an epoch plan from this (the main) process, then yields it. As the
    DataLoader takes indexes, the plan's position follows, ``in_flight``
    indexes behind: the samples taken but not yet read by the workers
    (``prefetch_factor × num_workers × batch_size`` for a DataLoader with
    workers), so that the daemon keeps them until they are read.
    ``set_epoch`` is passed on to the sampler."""

    def __init__(
        self, dataset: SluiceMapDataset, sampler: Iterable[int], in_flight: int = 0
    ) -> None:
        if in_flight < 0:
            raise ValueError("in_flight must not be negative")
        self.dataset = dataset
        self.sampler = sampler
        self.in_flight = in_flight
        self._plan_id = secrets.randbits(63)

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        order = [operator.index(i) for i in self.sampler]
        uris = self.dataset.uris
        client = self.dataset._objects.client
        _submit_plan(client, [uris[i] for i in order], self._plan_id)
        step = 64
        for taken, index in enumerate(order):
            if taken % step == 0 and taken > self.in_flight:
                try:
                    client.plan_progress(self._plan_id, taken - self.in_flight)
                except SluiceError:
                    pass  # the plan went with its session: reads go on
            yield index


class _Resume(NamedTuple):
    """A loaded position: where each worker's slice resumes."""

    num_workers: int
    rotation: int
    positions: dict[int, int]

    def check(self, num_workers: int) -> int:
        """The rotation, for a loader of ``num_workers``."""
        if num_workers != self.num_workers:
            raise ValueError(
                f"the state is of {self.num_workers} DataLoader workers, this loader has "
                f"{num_workers}: positions cannot carry over"
            )
        return self.rotation

    def position(self, slot: int, length: int) -> int:
        if slot not in self.positions:
            raise ValueError(f"the state has no position for slice {slot}")
        start = self.positions[slot]
        if not 0 <= start <= length:
            raise ValueError(f"position {start} outside slice {slot} of {length} samples")
        return start


def _checked(rank: int, world_size: Optional[int]) -> tuple[int, int]:
    if world_size is None or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not within world size {world_size}")
    return rank, world_size


def __getattr__(name: str) -> Any:
    # The TFRecord dataset lives in its own module, which builds on this one.
    if name == "SluiceTFRecordDataset":
        from .torch_tfrecord import SluiceTFRecordDataset

        return SluiceTFRecordDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
