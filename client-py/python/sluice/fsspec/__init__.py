"""fsspec filesystem of the ``sluice`` protocol: pandas, pyarrow, Hugging Face
datasets and the rest of the fsspec world read and write through the node's
sluice daemon and its cache, without code changes.

::

    import pandas as pd

    df = pd.read_parquet("sluice://s3/bucket/train/part-0.parquet")
    df.to_parquet("sluice://file/scratch/out.parquet")

    import fsspec

    fs = fsspec.filesystem("sluice", address="unix:///run/sluice/sluiced.sock")
    fs.ls("sluice://gs/bucket/train/")

The package registers the protocol with fsspec through its
``fsspec.specs`` entry point (``pip install 'sluice[fsspec]'``). A path is
the daemon URI with ``://`` replaced by ``/`` (``sluice://s3/bucket/key`` is
``s3://bucket/key``, ``sluice://file/data/x`` is ``file:///data/x``; see
:mod:`sluice.fsspec._paths`). docs/PYTHON.md, section "fsspec", lists the
options and what is supported.
"""

from __future__ import annotations

from ._file import SluiceFile
from ._filesystem import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_WHOLE_READ_LIMIT,
    DEFAULT_WINDOW,
    SluiceFileSystem,
)

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_WHOLE_READ_LIMIT",
    "DEFAULT_WINDOW",
    "SluiceFile",
    "SluiceFileSystem",
]
