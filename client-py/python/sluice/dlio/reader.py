"""DLIO's reader interface over :class:`sluice.Client`.

DLIO drives a reader per DataLoader worker (or per rank with
``read_threads: 0``): ``open`` a file, ``get_sample`` from it, ``close`` it,
in the order of its sampler. :class:`SluiceReader` does the same through the
daemon: ``open`` is one ``Client.get`` of the whole file and a decode of its
bytes (:mod:`sluice.dlio.decode`); ``close`` ends the lease. The client is
made in the process that builds the reader, so each worker has its own
session; it submits no epoch plan, since the order is DLIO's sampler's and a
benchmark run must not hand the storage its future reads (MLPerf Storage
CLOSED).
"""

from __future__ import annotations

from typing import Any

from dlio_benchmark.common.constants import MODULE_DATA_READER
from dlio_benchmark.reader.reader_handler import FormatReader
from dlio_benchmark.utils.config import ConfigArguments
from dlio_benchmark.utils.utility import Profile

import sluice

from . import decode, settings

dlp = Profile(MODULE_DATA_READER)


def _format_name(fmt: Any) -> str:
    return str(getattr(fmt, "value", fmt)).lower()


class SluiceReader(FormatReader):
    """Reads DLIO's ``npz``, ``npy``, ``jpeg`` and ``png`` datasets through
    the sluice daemon. Select it with ``reader.reader_classname:
    sluice.dlio.SluiceReader``; see :mod:`sluice.dlio.settings` for where it
    finds the daemon and the data."""

    @dlp.log_init
    def __init__(self, dataset_type: Any, thread_index: int, epoch: int) -> None:
        super().__init__(dataset_type, thread_index)
        fmt = _format_name(self._args.format)
        if fmt not in decode.DECODERS:
            raise ValueError(
                f"the sluice reader reads {sorted(decode.DECODERS)}, not {fmt!r} datasets"
            )
        self._decode = decode.DECODERS[fmt]
        # npz and npy files stack their samples on the last axis; an image
        # is one sample.
        self._stacked = fmt in ("npz", "npy")
        self._settings = settings.resolve(self._args)
        self._client = sluice.Client(self._settings.address)

    @dlp.log
    def open(self, filename: str) -> decode.Sample:
        super().open(filename)
        buffer = self._client.get(self._settings.uri(filename, self._args.data_folder))
        try:
            return decode.Sample(buffer, self._decode(buffer))
        except BaseException:
            buffer.close()
            raise

    @dlp.log
    def close(self, filename: str) -> None:
        super().close(filename)
        sample = self.open_file_map.get(filename)
        if sample is not None:
            sample.release()

    @dlp.log
    def get_sample(self, filename: str, sample_index: int) -> None:
        super().get_sample(filename, sample_index)
        array = self.open_file_map[filename].array
        image = array[..., sample_index] if self._stacked else array
        dlp.update(image_size=image.nbytes)

    def next(self) -> Any:
        yield from super().next()

    @dlp.log
    def read_index(self, image_idx: int, step: int) -> Any:
        dlp.update(step=step)
        return super().read_index(image_idx, step)

    @dlp.log
    def finalize(self) -> None:
        for filename, sample in list(self.open_file_map.items()):
            if sample is not None:
                sample.release()
            self.open_file_map[filename] = None

    def is_index_based(self) -> bool:
        return True

    def is_iterator_based(self) -> bool:
        return True


def _capture_settings() -> None:
    """Reads the workload's ``sluice`` section where DLIO imports the reader
    (a rank's main process, inside its Hydra job) and keeps it on DLIO's
    configuration, which DLIO pickles to its DataLoader workers."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        settings.resolve(ConfigArguments.get_instance())


_capture_settings()
