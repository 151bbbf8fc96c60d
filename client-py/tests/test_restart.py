"""A daemon restart costs no more than the reads in flight."""

from __future__ import annotations

import pathlib

import sluice
from conftest import Daemon


def test_reads_go_on_after_a_daemon_restart(tmp_path: pathlib.Path) -> None:
    daemon = Daemon(tmp_path)
    try:
        data = b"survives a restart" * 1000
        (daemon.root / "a.bin").write_bytes(data)
        client = sluice.Client(daemon.address)
        held = client.get(daemon.uri("a.bin"))
        daemon.restart()
        # The old session ended; the next read opens a new one on its own.
        with client.get(daemon.uri("a.bin")) as buf:
            assert bytes(buf) == data
            assert client._is_mapped(buf._address)
        assert client.stat(daemon.uri("a.bin")).size == len(data)
        # A buffer from before the restart stays readable.
        assert bytes(held) == data
        held.close()
    finally:
        daemon.stop()
