"""Where the sluice reader finds the daemon and the data.

DLIO lists its dataset itself, on the local file system, and hands each
reader the absolute path of a sample file under ``dataset.data_folder``. The
reader reads the same file through the daemon, at a URI made of that path:

- without a root: ``file://`` and the absolute path (the daemon's ``file://``
  root must contain the data folder);
- with ``root`` (``s3://bucket/unet3d``, ``file:///data/dlio/unet3d``, ...):
  the root, then the path relative to ``data_folder``. The local folder then
  only has to hold the names DLIO lists.

Both come from a ``sluice`` section of the workload configuration::

    sluice:
      address: unix:///run/sluice/sluiced.sock  # default: $SLUICE_ADDRESS
      root: s3://bucket/unet3d                  # default: file:// + data_folder

DLIO keeps only the keys it knows in its own configuration object, so the
section is read from Hydra's composed configuration of the run, in the
process where DLIO imports the reader (each MPI rank's main process), and
stored on DLIO's configuration object: DataLoader workers receive it from
there, under ``fork`` and ``spawn`` alike. Outside Hydra (DLIO driven from
Python) the section is empty and the defaults hold.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import Any, Optional

#: The attribute of DLIO's ``ConfigArguments`` that carries the settings.
ATTRIBUTE = "sluice_settings"
#: The workload configuration's section.
SECTION = "sluice"


@dataclass(frozen=True)
class Settings:
    """The daemon's address (``None``: :func:`sluice.default_address`) and
    the URI that stands for the data folder (``None``: its ``file://`` URI)."""

    address: Optional[str] = None
    root: Optional[str] = None

    def uri(self, path: str, data_folder: str) -> str:
        """The URI of the sample file at ``path`` (absolute, as DLIO gives
        it) of the dataset in ``data_folder``."""
        if self.root is None:
            return "file://" + os.path.abspath(path)
        rel = os.path.relpath(path, os.path.abspath(data_folder))
        if rel in (os.curdir, os.pardir) or rel.startswith(os.pardir + os.sep):
            raise ValueError(f"{path} is not a file under the data folder {data_folder}")
        return self.root.rstrip("/") + "/" + posixpath.join(*rel.split(os.sep))


def from_mapping(section: Optional[dict[str, Any]]) -> Settings:
    """Settings from a configuration section; rejects unknown keys, so that a
    misspelt key fails the run instead of reading from the wrong place."""
    section = dict(section or {})
    unknown = sorted(set(section) - {"address", "root"})
    if unknown:
        raise ValueError(f"unknown keys in the workload's {SECTION} section: {unknown}")
    address, root = section.get("address"), section.get("root")
    return Settings(
        address=str(address) if address else None,
        root=str(root) if root else None,
    )


def from_hydra() -> Optional[Settings]:
    """The ``workload.sluice`` section of the running Hydra job's
    configuration, composed again from the job's own overrides; ``None``
    outside a Hydra job."""
    try:
        from hydra import compose
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf
    except ImportError:
        return None
    if not (HydraConfig.initialized() and GlobalHydra.instance().is_initialized()):
        return None
    job = HydraConfig.get()
    config = compose(config_name=job.job.config_name, overrides=list(job.overrides.task))
    section = OmegaConf.select(config, f"workload.{SECTION}")
    return from_mapping(OmegaConf.to_container(section) if section is not None else None)


def resolve(args: Any) -> Settings:
    """The settings for DLIO's configuration object ``args``: those it
    carries, else Hydra's (then stored on it), else the defaults."""
    carried = getattr(args, ATTRIBUTE, None)
    if carried is not None:
        return carried
    settings = from_hydra() or Settings()
    setattr(args, ATTRIBUTE, settings)
    return settings
