"""A real S3-compatible server (s3s-fs) for the tests.

The binary is ``$S3S_FS_BIN`` (``scripts/test.sh`` installs it and sets it),
else ``s3s-fs`` on ``PATH``. s3s-fs keeps each bucket as a directory of its
data root, so a bucket is made with ``mkdir``.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import time

ACCESS_KEY = "sluice-py-test"
SECRET_KEY = "sluice-py-test-secret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    """s3s-fs on a free loopback port, with one bucket per call of ``bucket``."""

    def __init__(self, base: pathlib.Path, timeout: float = 20.0) -> None:
        binary = os.environ.get("S3S_FS_BIN") or shutil.which("s3s-fs")
        if not binary:
            raise RuntimeError(
                "s3s-fs not found: set S3S_FS_BIN or install it with "
                "`cargo install s3s-fs --version 0.14.1 --features binary`"
            )
        self.root = base / "s3"
        self.root.mkdir()
        self.port = _free_port()
        self.log = base / "s3s-fs.log"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    binary, "--host", "127.0.0.1", "--port", str(self.port),
                    "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY, str(self.root),
                ],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"s3s-fs exited: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("s3s-fs did not start in time") from None
                time.sleep(0.02)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def daemon_env(self) -> dict[str, str]:
        """What a `sluiced` needs to reach this server as its default endpoint."""
        return {
            "SLUICE_STORAGE__S3__ENDPOINT": self.endpoint,
            "SLUICE_STORAGE__S3__FORCE_PATH_STYLE": "true",
            "SLUICE_STORAGE__S3__REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }

    def bucket(self, name: str) -> str:
        """Creates bucket ``name``; returns its ``s3://name/`` prefix."""
        (self.root / name).mkdir(exist_ok=True)
        return f"s3://{name}/"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
