"""Where the deployment tests find the repository, the built daemon and
the tools scripts/test.sh installs."""

import os
import pathlib
import shutil

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def sluiced() -> pathlib.Path:
    """The `sluiced` binary: $SLUICED, else the workspace's debug build."""
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    path = pathlib.Path(os.environ.get("SLUICED", target / "debug" / "sluiced"))
    assert path.is_file(), f"{path} not built: run `cargo build -p sluiced` first"
    return path


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    """`systemd-analyze`: $SYSTEMD_ANALYZE, else from PATH. Missing, the
    tests fail: scripts/test.sh installs Debian's systemd package."""
    path = os.environ.get("SYSTEMD_ANALYZE") or shutil.which("systemd-analyze")
    assert path, "systemd-analyze not found: apt-get install systemd (scripts/test.sh does)"
    return path
