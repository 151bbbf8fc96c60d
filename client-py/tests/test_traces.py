"""The trace context a Python caller sets reaches the daemon's spans: a
daemon exporting traces to an OTLP receiver (the test suite's
``otlp-sink``) makes its spans part of the caller's trace."""

from __future__ import annotations

import json
import pathlib
import subprocess
import threading
from collections.abc import Iterator

import pytest

import sluice
from conftest import Daemon, sluiced_binary, wait_for

TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER = "b7ad6b7169203331"


class Sink:
    """``otlp-sink``, its spans collected by a reader thread."""

    def __init__(self) -> None:
        binary = sluiced_binary().with_name("otlp-sink")
        self.process = subprocess.Popen(
            [str(binary)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline().split()
        assert first[:1] == ["listening"], first
        self.endpoint = first[1]
        self.spans: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.spans.append(json.loads(line))

    def named(self, name: str) -> list[dict]:
        return [s for s in list(self.spans) if s["name"] == name]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self._reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.stop()


def test_a_callers_trace_continues_into_the_daemon(tmp_path: pathlib.Path, sink: Sink) -> None:
    daemon = Daemon(
        tmp_path,
        env={
            "SLUICE_TRACES__ENABLED": "true",
            "SLUICE_TRACES__ENDPOINT": sink.endpoint,
            # Only what the caller samples is traced.
            "SLUICE_TRACES__SAMPLE_RATIO": "0",
        },
    )
    try:
        (daemon.root / "a").write_bytes(b"x" * 1000)
        client = sluice.Client(daemon.address)
        client.stat(daemon.uri("a"))  # before: not traced
        client.set_trace_context(f"00-{TRACE}-{CALLER}-01", "vendor=1")
        assert len(client.get(daemon.uri("a"))) == 1000
        assert client.stat(daemon.uri("a")).size == 1000
        client.set_trace_context(None)
        client.stat(daemon.uri("a"))  # after: not traced
        wait_for(
            lambda: sink.named("sluice.v1.Sluice/Stat") and sink.named("session fetch"),
            timeout=60,
            what="the daemon's spans",
        )
        stats = sink.named("sluice.v1.Sluice/Stat")
        assert len(stats) == 1, stats
        assert stats[0]["trace_id"] == TRACE
        assert stats[0]["parent_id"] == CALLER
        fetch = sink.named("session fetch")[0]
        assert fetch["trace_id"] == TRACE
        assert fetch["attributes"]["fetch.source"] == "backend"
        assert all(s["trace_id"] == TRACE for s in sink.spans), sink.spans
    finally:
        daemon.stop()


def test_a_malformed_traceparent_is_refused(client: sluice.Client) -> None:
    with pytest.raises(sluice.InvalidArgumentError, match="traceparent"):
        client.set_trace_context("00-nothex-b7ad6b7169203331-01")
    with pytest.raises(sluice.InvalidArgumentError):
        client.set_trace_context(f"00-{TRACE}-{CALLER}-01", "bad\nstate")
    client.set_trace_context(None)
