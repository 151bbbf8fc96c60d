"""fsspec's own conformance suite (``fsspec.tests.abstract``) against
``SluiceFileSystem`` on a real daemon serving a ``file://`` root.

The copy, get, put, pipe and open suites all run, unchanged, with two
choices the suite asks each filesystem to make:

- ``supports_empty_directories`` is ``False``: the filesystem has the
  object-store model (a directory exists while an object lies below it), so
  the suite checks that an emptied or never-filled directory is gone, as it
  does for s3fs.
- paths are joined with ``/`` whatever the platform.

Each test gets a directory of its own under the daemon's root.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

pytest.importorskip("fsspec", reason="sluice.fsspec needs fsspec (pip install 'sluice[fsspec]')")

from fsspec.tests.abstract import (  # noqa: E402
    AbstractCopyTests,
    AbstractFixtures,
    AbstractGetTests,
    AbstractOpenTests,
    AbstractPipeTests,
    AbstractPutTests,
)

from conftest import Daemon  # noqa: E402
from sluice.fsspec import SluiceFileSystem  # noqa: E402


class SluiceFixtures(AbstractFixtures):  # type: ignore[misc]
    @pytest.fixture
    def fs(self, daemon: Daemon) -> SluiceFileSystem:
        return SluiceFileSystem(daemon.address, skip_instance_cache=True)

    @pytest.fixture
    def fs_join(self) -> Callable[..., str]:
        return lambda *parts: "/".join(parts)

    @pytest.fixture
    def fs_path(self, daemon: Daemon, request: pytest.FixtureRequest) -> str:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
        return f"file{daemon.root}/fsspec-abstract/{name}"

    @pytest.fixture
    def supports_empty_directories(self) -> bool:
        return False


class TestCopy(AbstractCopyTests, SluiceFixtures):  # type: ignore[misc]
    pass


class TestGet(AbstractGetTests, SluiceFixtures):  # type: ignore[misc]
    pass


class TestPut(AbstractPutTests, SluiceFixtures):  # type: ignore[misc]
    pass


class TestPipe(AbstractPipeTests, SluiceFixtures):  # type: ignore[misc]
    pass


class TestOpen(AbstractOpenTests, SluiceFixtures):  # type: ignore[misc]
    pass
