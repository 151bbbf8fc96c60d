"""Blocking calls release the GIL, and Ctrl-C interrupts them."""

from __future__ import annotations

import os
import signal
import threading
import time

import sluice
import pytest
from conftest import Daemon, Files

#: How soon KeyboardInterrupt must follow SIGINT (the design says ~100 ms).
DEADLINE = 0.15


def test_ctrl_c_interrupts_a_blocked_get(daemon: Daemon, files: Files) -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    client = sluice.Client(daemon.address)
    uri, data = files.make("slow.bin", 1000)
    client._session_info()  # connected, session open
    sent: list[float] = []

    def interrupt() -> None:
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    daemon.pause()  # the daemon answers nothing until resumed
    try:
        timer = threading.Timer(0.3, interrupt)
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            client.get(uri)
        raised = time.monotonic()
        timer.join()
    finally:
        daemon.resume()
    assert raised - sent[0] < DEADLINE, f"KeyboardInterrupt after {raised - sent[0]:.3f}s"
    # The client goes on working.
    with client.get(uri) as buf:
        assert bytes(buf) == data


def test_blocking_calls_release_the_gil(daemon: Daemon, files: Files) -> None:
    client = sluice.Client(daemon.address)
    uri, data = files.make("gil.bin", 1000)
    client._session_info()
    result: list[bytes] = []
    daemon.pause()
    try:
        reader = threading.Thread(target=lambda: result.append(bytes(client.get(uri))))
        reader.start()
        time.sleep(0.05)  # let the reader block in the call
        # Python code runs on while the reader waits for the daemon.
        spins, until = 0, time.monotonic() + 0.2
        while time.monotonic() < until:
            spins += 1
        assert reader.is_alive()
        assert spins > 10_000
    finally:
        daemon.resume()
    reader.join(timeout=10)
    assert result == [data]
