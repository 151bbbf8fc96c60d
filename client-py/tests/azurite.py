"""A real Azure Blob emulator (Azurite, blob service only, in memory).

The launcher is ``$AZURITE_BLOB_BIN`` (``scripts/test.sh`` installs Azurite
with npm and sets it), else ``azurite-blob`` on ``PATH``, else the one under
``~/.cache/sluice-tools/azurite``. Containers are created with a request
signed by the emulator's well-known key (SharedKey).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from email.utils import formatdate

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
VERSION = "2025-11-05"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _binary() -> str:
    found = os.environ.get("AZURITE_BLOB_BIN") or shutil.which("azurite-blob")
    cached = pathlib.Path.home() / ".cache/sluice-tools/azurite/node_modules/.bin/azurite-blob"
    if found:
        return found
    if cached.exists():
        return str(cached)
    raise RuntimeError(
        "azurite-blob not found: set AZURITE_BLOB_BIN or run scripts/test.sh "
        "(npm install azurite@3.35.0 under ~/.cache/sluice-tools/azurite)"
    )


class Azurite:
    """Azurite's blob service on a free loopback port."""

    def __init__(self, base: pathlib.Path, timeout: float = 60.0) -> None:
        self.port = _free_port()
        self.log = base / "azurite.log"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    _binary(), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                    "--inMemoryPersistence", "--skipApiVersionCheck", "--loose",
                    "--disableTelemetry", "--silent",
                ],
                cwd=base, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"azurite exited: {self.log.read_text()}")
            # Ready when it answers HTTP (any status): an accepted
            # connection alone comes before the service is ready.
            try:
                urllib.request.urlopen(f"{self.endpoint}?comp=list", timeout=5).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("azurite did not start in time") from None
                time.sleep(0.02)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    def daemon_env(self) -> dict[str, str]:
        """What a `sluiced` needs to reach this emulator's account."""
        account = f'{{name="{ACCOUNT}", endpoint="{self.endpoint}", account_key="{KEY}"}}'
        return {"SLUICE_STORAGE__AZURE__ACCOUNTS": f"[{account}]"}

    def container(self, name: str) -> str:
        """Creates container ``name``; returns its ``az://account/name/`` prefix."""
        date = formatdate(usegmt=True)
        to_sign = (
            "PUT\n\n\n\n\n\n\n\n\n\n\n\n"
            f"x-ms-date:{date}\nx-ms-version:{VERSION}\n"
            f"/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
        )
        signature = base64.b64encode(
            hmac.new(base64.b64decode(KEY), to_sign.encode(), hashlib.sha256).digest()
        ).decode()
        req = urllib.request.Request(
            f"{self.endpoint}/{name}?restype=container",
            method="PUT",
            headers={
                "x-ms-date": date,
                "x-ms-version": VERSION,
                "Authorization": f"SharedKey {ACCOUNT}:{signature}",
            },
        )
        try:
            urllib.request.urlopen(req, timeout=10).close()
        except urllib.error.HTTPError as e:
            if e.code != 409:
                raise
        return f"az://{ACCOUNT}/{name}/"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
