"""Blocking calls release the GIL, and Ctrl-C interrupts them."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading

import sluice
import pytest
from conftest import Daemon, Files, wait_for

#: A failure guard only: how long a condition may take on a loaded machine.
GUARD = 30.0


def blocked_in_get(thread: threading.Thread) -> bool:
    """Whether ``thread`` sits in ``Client.get``'s native call and sleeps there.

    The facade's ``get`` is one line, the native call; a thread whose
    innermost Python frame is that line and that the kernel reports as
    sleeping is waiting inside the call, not about to make it.
    """
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None or frame.f_code.co_name != "get":
        return False
    if pathlib.Path(frame.f_code.co_filename) != pathlib.Path(sluice.__file__):
        return False
    stat = pathlib.Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "S"


def test_ctrl_c_interrupts_a_blocked_get(daemon: Daemon, files: Files) -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    client = sluice.Client(daemon.address)
    uri, data = files.make("slow.bin", 1000)
    client._session_info()  # connected, session open
    main = threading.main_thread()
    interrupted = threading.Event()
    gave_up: list[str] = []

    def interrupt() -> None:
        try:
            wait_for(lambda: blocked_in_get(main), timeout=GUARD, what="get to block")
        except AssertionError as e:
            gave_up.append(str(e))
            daemon.resume()  # let the get finish so the test fails instead of hanging
            return
        os.kill(os.getpid(), signal.SIGINT)
        if not interrupted.wait(GUARD):
            gave_up.append(f"no KeyboardInterrupt within {GUARD}s of SIGINT")
            daemon.resume()

    daemon.pause()  # the daemon answers nothing until resumed
    try:
        interrupter = threading.Thread(target=interrupt)
        interrupter.start()
        # The get cannot complete while the daemon is stopped: only the
        # signal can end it.
        with pytest.raises(KeyboardInterrupt):
            client.get(uri)
        interrupted.set()
        interrupter.join()
    finally:
        daemon.resume()
    assert not gave_up, gave_up
    # The client goes on working.
    with client.get(uri) as buf:
        assert bytes(buf) == data


def test_blocking_calls_release_the_gil(daemon: Daemon, files: Files) -> None:
    client = sluice.Client(daemon.address)
    uri, data = files.make("gil.bin", 1000)
    client._session_info()
    result: list[bytes] = []
    daemon.pause()
    # Should the call hold the GIL, no Python code (this test's guards
    # included) could run until it returns: a process outside this
    # interpreter resumes the daemon after the guard time, so that the call
    # returns and the test fails instead of hanging.
    watchdog = subprocess.Popen(
        ["sh", "-c", f"sleep {GUARD:.0f}; kill -CONT {daemon.process.pid}"],
    )
    try:
        reader = threading.Thread(target=lambda: result.append(bytes(client.get(uri))))
        reader.start()
        # Python code runs on while the reader waits for the daemon: this
        # thread can watch the reader sit in the call only if the call let
        # go of the GIL (otherwise this loop would not run at all and the
        # test would time out).
        wait_for(lambda: blocked_in_get(reader), timeout=GUARD, what="the reader to block")
        spins = sum(1 for _ in range(100_000))
        assert spins == 100_000
        assert blocked_in_get(reader), "the reader left the call while the daemon was stopped"
        assert result == []
    finally:
        daemon.resume()
        watchdog.kill()
        watchdog.wait()
    reader.join(timeout=GUARD)
    assert not reader.is_alive()
    assert result == [data]
