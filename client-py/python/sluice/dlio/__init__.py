"""sluice as a storage option of DLIO (``dlio-benchmark``, the engine of
MLPerf Storage): DLIO workloads read their samples through the daemon.

A workload selects the reader and, optionally, says where the daemon and the
data are::

    reader:
      data_loader: pytorch
      reader_classname: sluice.dlio.SluiceReader
    sluice:
      root: s3://bucket/unet3d   # default: the data folder's file:// URI

and runs as usual (``dlio_benchmark workload=...``), or through
``python -m sluice.dlio workload=...``, which is DLIO's own entry point and
also runs where TensorFlow is not installed (:mod:`sluice.dlio.__main__`).

- :mod:`sluice.dlio.reader`: :class:`SluiceReader`, DLIO's reader interface
  over :class:`sluice.Client`;
- :mod:`sluice.dlio.decode`: npz, npy, JPEG and PNG from the leased bytes;
- :mod:`sluice.dlio.settings`: the ``sluice`` section and the path-to-URI
  mapping.

See the DLIO section of docs/PYTHON.md.
"""

from typing import Any

__all__ = ["SluiceReader"]


def __getattr__(name: str) -> Any:
    # The reader module is imported when DLIO looks the class up, inside its
    # Hydra job, not when this package is (``python -m sluice.dlio`` imports
    # it before Hydra starts): see _capture_settings in reader.py.
    if name == "SluiceReader":
        from .reader import SluiceReader

        return SluiceReader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "SluiceReader"])
