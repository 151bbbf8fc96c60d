"""A daemon with the S3-compatible facade, and the S3 clients the tests
point at it.

:class:`FacadeDaemon` is the conftest ``Daemon`` with ``[facade]`` on a
free loopback port, writes on, and two facade buckets: ``local`` on the
daemon's ``file://`` root and ``remote`` on a bucket of the test's s3s-fs.
Its access keys come from a keys file: :data:`KEY_ALL` may use both
buckets, :data:`KEY_LOCAL` only ``local``. Nothing of the facade is set up
in code: what the daemon gets is what an operator would write.

:class:`Objects` puts the same objects under one prefix of both buckets,
behind the facade's back (files under the root; PUTs straight to s3s-fs),
so that the first read through the facade is a cache miss.
"""

from __future__ import annotations

import os
import pathlib
import random
import shutil
import socket
import subprocess
from typing import Any

import boto3
import pytest
from botocore.config import Config

from conftest import Daemon, free_port, wait_for
from s3server import ACCESS_KEY, SECRET_KEY, S3Server

REGION = "us-east-1"
KEY_ALL = ("FACADEALLKEY", "facade-secret-all")
KEY_LOCAL = ("FACADELOCALKEY", "facade-secret-local")
#: The s3s-fs bucket behind the facade bucket ``remote``.
BACKEND_BUCKET = "facade-py"
BUCKETS = ("local", "remote")
# Where a GetObject's bytes came from (sluice_facade_reads_total{source}).
SOURCES = ("cache", "backend", "coalesced", "uncached", "disk")


class FacadeDaemon(Daemon):
    """A ``sluiced`` serving the facade buckets ``local`` and ``remote``."""

    def __init__(self, base: pathlib.Path, s3: S3Server) -> None:
        self.s3 = s3
        self.facade_port = free_port()
        self.keys_file = base / "facade-keys"
        self.keys_file.write_text(
            f"# test keys\n{KEY_ALL[0]} {KEY_ALL[1]}\n{KEY_LOCAL[0]} {KEY_LOCAL[1]} local\n"
        )
        self.keys_file.chmod(0o600)
        root = (base / "data").resolve()
        env = s3.daemon_env() | {
            "SLUICE_FACADE__LISTEN": f"127.0.0.1:{self.facade_port}",
            "SLUICE_FACADE__KEYS_FILE": str(self.keys_file),
            "SLUICE_FACADE__WRITES": "true",
            "SLUICE_FACADE__BUCKETS__LOCAL": f"file://{root}/",
            "SLUICE_FACADE__BUCKETS__REMOTE": s3.bucket(BACKEND_BUCKET),
            # Every object of the tests is cached whole (conftest: 8 MiB),
            # the 9 MiB one that makes the aws cli read in ranges too.
            "SLUICE_CACHE__MAX_OBJECT_SIZE": "16MiB",
        }
        super().__init__(base, env=env)
        assert self.root == root, "the conftest daemon moved its file root"
        wait_for(self._facade_up, 10.0, "the facade to listen")

    def _facade_up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.facade_port), timeout=1):
                return True
        except OSError:
            return False

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.facade_port}"

    def reads(self) -> dict[str, float]:
        """GetObjects answered so far, by where their bytes came from."""
        m = self.metrics()
        return {s: m.get(f'sluice_facade_reads_total{{source="{s}"}}', 0.0) for s in SOURCES}


def reads_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The GetObjects of each source between two :meth:`FacadeDaemon.reads`."""
    return {s: after[s] - before[s] for s in SOURCES if after[s] != before[s]}


def boto3_client(endpoint: str, key: tuple[str, str] = KEY_ALL, **config: Any) -> Any:
    """A boto3 S3 client as docs/OPERATIONS.md shows it: path style, SigV4."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key[0],
        aws_secret_access_key=key[1],
        region_name=REGION,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4", **config),
    )


class Objects:
    """The same objects under ``prefix`` of both facade buckets."""

    def __init__(self, facade: FacadeDaemon, prefix: str, sizes: dict[str, int]) -> None:
        self.prefix = prefix
        rng = random.Random(prefix)
        self.data = {f"{prefix}{name}": rng.randbytes(n) for name, n in sizes.items()}
        direct = boto3_client(facade.s3.endpoint, (ACCESS_KEY, SECRET_KEY))
        for key, data in self.data.items():
            path = facade.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            direct.put_object(Bucket=BACKEND_BUCKET, Key=key, Body=data)

    def keys(self, under: str = "") -> list[str]:
        """The keys below ``prefix + under``, in S3's (byte) order."""
        return sorted(k for k in self.data if k.startswith(self.prefix + under))


def aws_cli() -> str:
    """The aws cli: ``$AWS_CLI_BIN``, else ``aws`` on PATH; a test fails
    without it (scripts/test.sh installs it in a venv of its own)."""
    binary = os.environ.get("AWS_CLI_BIN") or shutil.which("aws")
    if not binary:
        pytest.fail("aws cli not found: set AWS_CLI_BIN or put `aws` on PATH")
    return binary


def run_aws(facade: FacadeDaemon, home: pathlib.Path, *args: str) -> bytes:
    """``aws --endpoint-url <facade> args…`` with KEY_ALL, path style and
    no other configuration of the machine; its stdout."""
    config = home / "aws-config"
    if not config.exists():
        config.write_text("[default]\ns3 =\n    addressing_style = path\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=KEY_ALL[0],
        AWS_SECRET_ACCESS_KEY=KEY_ALL[1],
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=str(config),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        # botocore sends `Expect: 100-continue` with every file body, even
        # an empty one; a server that answers an empty body at once, with
        # no 100 (hyper, so s3s-fs and the facade, as RFC 9110 allows),
        # leaves the connection's next response unreadable and the cli
        # waits forever. botocore's own switch skips the header for
        # empty bodies.
        BOTO_EXPERIMENTAL__NO_EMPTY_CONTINUE="true",
    )
    out = subprocess.run(
        [aws_cli(), "--endpoint-url", facade.endpoint, *args],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"aws {' '.join(args)}: {out.stderr.decode()}"
    return out.stdout
