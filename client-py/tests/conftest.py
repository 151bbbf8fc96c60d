"""A real `sluiced` for the tests, started once per session.

The daemon binary is ``$SLUICED``, else ``target/debug/sluiced`` of the
workspace (``$CARGO_TARGET_DIR`` honoured). It serves ``file://`` from a
temporary directory on a temporary socket, with ``/metrics`` on a free
loopback port, and small part sizes so that multipart paths run on small
objects:

- ``write.part_size = 5MiB``: uploads above 5 MiB go up in parts;
- ``cache.max_object_size = 8MiB`` and ``engine.part_size = 1MiB``: larger
  objects are streamed in 1 MiB extents instead of cached, so their reads
  arrive in several parts.
"""

from __future__ import annotations

import gc
import os
import pathlib
import random
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest

import sluice
from azurite import Azurite
from gcsserver import GcsServer
from s3server import S3Server

START_TIMEOUT = 20.0
MiB = 1 << 20

WORKSPACE = pathlib.Path(__file__).resolve().parents[2]


def sluiced_binary() -> pathlib.Path:
    explicit = os.environ.get("SLUICED")
    if explicit:
        return pathlib.Path(explicit)
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or WORKSPACE / "target")
    path = target / "debug" / "sluiced"
    if not path.exists():
        pytest.exit(f"{path} not built: run `cargo build -p sluiced` or set $SLUICED", 2)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Polls ``condition`` until it holds; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


_SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$")


class Daemon:
    """A `sluiced` process on a temporary socket and file root."""

    def __init__(
        self,
        base: pathlib.Path,
        env: dict[str, str] | None = None,
        memory_budget: str = "256MiB",
    ) -> None:
        self.extra_env = env or {}
        self.memory_budget = memory_budget
        self.root = (base / "data").resolve()
        self.root.mkdir()
        run = base / "run"
        run.mkdir()
        self.socket = run / "sluiced.sock"
        self.port = free_port()
        self.tcp_port = free_port()
        self.log = run / "sluiced.log"
        self._start()

    def _start(self) -> None:
        # The daemon rejects SLUICE_* variables that are not config keys.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env.update(
            SLUICE_WRITE__PART_SIZE="5MiB",
            SLUICE_CACHE__MAX_OBJECT_SIZE="8MiB",
            SLUICE_ENGINE__PART_SIZE="1MiB",
            # Plaintext TCP for the tests of the TCP path; test_tls.py
            # starts daemons with TLS.
            SLUICE_SERVER__TCP_INSECURE="true",
        )
        env.update(self.extra_env)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(sluiced_binary()),
                    "--socket", str(self.socket),
                    "--file-root", str(self.root),
                    "--http", f"127.0.0.1:{self.port}",
                    "--tcp", f"127.0.0.1:{self.tcp_port}",
                    "--memory-budget", self.memory_budget,
                    "--log-level", "warn",
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self._wait_ready()

    def restart(self) -> None:
        """Stops the daemon and starts it again on the same socket and root."""
        self.stop()
        self._start()

    def kill(self) -> None:
        """Kills the daemon with SIGKILL, as a crash would, and waits until
        it is gone; :meth:`start` brings it back on the same socket."""
        self.process.kill()
        self.process.wait()

    def start(self) -> None:
        """Starts the daemon again after :meth:`kill` or :meth:`stop`."""
        assert self.process.poll() is not None, "the daemon is still running"
        self._start()

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(
                f"sluiced exited during startup ({self.process.returncode}): "
                + self.log.read_text()
            )
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(self.socket))
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def _wait_ready(self) -> None:
        try:
            wait_for(self._ready, START_TIMEOUT, f"sluiced to open {self.socket}")
        except BaseException:
            self.stop()
            raise

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    @property
    def tcp_address(self) -> str:
        """gRPC over TCP (plaintext unless the daemon was given TLS): no
        shared memory."""
        return f"http://127.0.0.1:{self.tcp_port}"

    @property
    def https_address(self) -> str:
        """gRPC over TCP with TLS."""
        return f"https://127.0.0.1:{self.tcp_port}"

    def uri(self, rel: str) -> str:
        return f"file://{self.root}/{rel}"

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        values = {}
        for line in text.splitlines():
            match = _SERIES.match(line)
            if match:
                values[match.group(1)] = float(match.group(2))
        return values

    def metric(self, series: str) -> float:
        return self.metrics().get(series, 0.0)

    def leased_bytes(self) -> float:
        return self.metric("sluice_session_leased_bytes")

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("sluiced"))
    yield d
    d.stop()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3s-fs"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_daemon(tmp_path_factory: pytest.TempPathFactory, s3: S3Server) -> Iterator[Daemon]:
    """A second daemon whose default S3 endpoint is the test's s3s-fs."""
    d = Daemon(tmp_path_factory.mktemp("sluiced-s3"), env=s3.daemon_env())
    yield d
    d.stop()


@pytest.fixture(scope="session")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    server = GcsServer(tmp_path_factory.mktemp("fake-gcs-server"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_daemon(tmp_path_factory: pytest.TempPathFactory, gcs: GcsServer) -> Iterator[Daemon]:
    """A daemon whose gs:// URIs go to the test's GCS emulator."""
    d = Daemon(tmp_path_factory.mktemp("sluiced-gcs"), env=gcs.daemon_env())
    yield d
    d.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    server = Azurite(tmp_path_factory.mktemp("azurite"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azure_daemon(tmp_path_factory: pytest.TempPathFactory, azurite: Azurite) -> Iterator[Daemon]:
    """A daemon whose az:// account is the test's Azurite."""
    d = Daemon(tmp_path_factory.mktemp("sluiced-azure"), env=azurite.daemon_env())
    yield d
    d.stop()


@pytest.fixture
def client(daemon: Daemon) -> sluice.Client:
    return sluice.Client(daemon.address)


class Files:
    """Objects of one test, in a directory of their own under the root."""

    def __init__(self, daemon: Daemon, name: str) -> None:
        self.rel = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        self.dir = daemon.root / self.rel
        self.dir.mkdir()
        self.daemon = daemon
        self.rng = random.Random(name)

    def uri(self, name: str = "") -> str:
        return self.daemon.uri(f"{self.rel}/{name}")

    def make(self, name: str, size: int) -> tuple[str, bytes]:
        """A file of ``size`` random bytes; its URI and content."""
        data = self.rng.randbytes(size)
        (self.dir / name).write_bytes(data)
        return self.uri(name), data


@pytest.fixture
def files(daemon: Daemon, request: pytest.FixtureRequest) -> Files:
    return Files(daemon, request.node.name)


@pytest.fixture
def no_leases(daemon: Daemon) -> Daemon:
    """Starts from a daemon with nothing leased (leftovers collected)."""
    gc.collect()
    wait_for(lambda: daemon.leased_bytes() == 0, what="earlier leases to be released")
    return daemon
