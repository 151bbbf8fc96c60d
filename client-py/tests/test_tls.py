"""Remote clients authenticate: a daemon whose TCP listener has TLS and
bearer tokens, reached at ``https://`` with a CA file and a token given as
an argument, a file or the environment. Certificates are made here with
the ``openssl`` command."""

from __future__ import annotations

import pathlib
import pickle
import subprocess
from collections.abc import Iterator

import pytest

import sluice
from conftest import Daemon

TOKEN = "tok-PY-RIGHT-8d2f61c0a9b34e7d"
WRONG = "tok-PY-WRONG-3c7a0e95b1d84f26"


def openssl(cwd: pathlib.Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(base: pathlib.Path) -> dict[str, pathlib.Path]:
    """A CA and a server certificate for 127.0.0.1 that it issued."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl(base, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt",
            "-subj", "/CN=py-test-ca", "-days", "2")
    openssl(base, "req", *ec, "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost")
    (base / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "extendedKeyUsage=serverAuth\n"
    )
    openssl(base, "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey",
            "ca.key", "-set_serial", "7", "-out", "server.crt", "-days", "2",
            "-extfile", "server.ext")
    (base / "tokens").write_text(f"# trainers\n{TOKEN}\n")
    (base / "client-token").write_text(f"{TOKEN}\n")
    return {name: base / name for name in ("ca.crt", "server.crt", "server.key", "tokens", "client-token")}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_daemon(
    tmp_path_factory: pytest.TempPathFactory, pki: dict[str, pathlib.Path]
) -> Iterator[Daemon]:
    d = Daemon(
        tmp_path_factory.mktemp("sluiced-tls"),
        env={
            "SLUICE_SERVER__TCP_INSECURE": "false",
            "SLUICE_SERVER__TLS__CERT": str(pki["server.crt"]),
            "SLUICE_SERVER__TLS__KEY": str(pki["server.key"]),
            "SLUICE_SERVER__TLS__TOKEN_FILE": str(pki["tokens"]),
        },
    )
    yield d
    d.stop()


@pytest.fixture(autouse=True)
def no_token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SLUICE_TOKEN", "SLUICE_TOKEN_FILE", "SLUICE_CA_FILE",
                 "SLUICE_CLIENT_CERT", "SLUICE_CLIENT_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_the_right_token_reads_byte_exact(
    tls_daemon: Daemon, pki: dict[str, pathlib.Path]
) -> None:
    data = bytes(range(256)) * 4099
    (tls_daemon.root / "tls.bin").write_bytes(data)
    client = sluice.Client(tls_daemon.https_address, ca_file=pki["ca.crt"], token=TOKEN)
    with client.get(tls_daemon.uri("tls.bin")) as buf:
        assert bytes(buf) == data
        assert not buf.shared_memory
    assert TOKEN not in repr(client)
    # From a file, and from the environment.
    by_file = sluice.Client(
        tls_daemon.https_address, ca_file=pki["ca.crt"], token_file=pki["client-token"]
    )
    assert by_file.stat(tls_daemon.uri("tls.bin")).size == len(data)


def test_environment_fallbacks(
    tls_daemon: Daemon, pki: dict[str, pathlib.Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tls_daemon.root / "env.bin").write_bytes(b"env")
    monkeypatch.setenv("SLUICE_CA_FILE", str(pki["ca.crt"]))
    monkeypatch.setenv("SLUICE_TOKEN", TOKEN)
    assert sluice.Client(tls_daemon.https_address).stat(tls_daemon.uri("env.bin")).size == 3
    monkeypatch.delenv("SLUICE_TOKEN")
    monkeypatch.setenv("SLUICE_TOKEN_FILE", str(pki["client-token"]))
    client = sluice.Client(tls_daemon.https_address)
    assert client.stat(tls_daemon.uri("env.bin")).size == 3
    # A pickled client finds the token the same way in the other process.
    copy = pickle.loads(pickle.dumps(client))
    assert TOKEN.encode() not in pickle.dumps(client)
    assert copy.stat(tls_daemon.uri("env.bin")).size == 3


def test_missing_or_wrong_token_is_unauthenticated(
    tls_daemon: Daemon, pki: dict[str, pathlib.Path]
) -> None:
    (tls_daemon.root / "f").write_bytes(b"secret")
    uri = tls_daemon.uri("f")
    with pytest.raises(sluice.UnauthenticatedError, match="missing credentials") as info:
        sluice.Client(tls_daemon.https_address, ca_file=pki["ca.crt"]).stat(uri)
    assert info.value.code == "UNAUTHENTICATED"
    assert isinstance(info.value, PermissionError)
    with pytest.raises(sluice.UnauthenticatedError, match="invalid bearer token") as info:
        sluice.Client(tls_daemon.https_address, ca_file=pki["ca.crt"], token=WRONG).get(uri)
    assert WRONG not in str(info.value) and TOKEN not in str(info.value)
    assert TOKEN not in tls_daemon.log.read_text()
    assert WRONG not in tls_daemon.log.read_text()


def test_plaintext_and_untrusted_certificates_are_refused(
    tls_daemon: Daemon, pki: dict[str, pathlib.Path]
) -> None:
    (tls_daemon.root / "g").write_bytes(b"secret")
    uri = tls_daemon.uri("g")
    # Plaintext to the TLS listener: no answer.
    with pytest.raises(sluice.SluiceError):
        sluice.Client(tls_daemon.tcp_address).stat(uri)
    # The system's roots do not know the test CA.
    with pytest.raises(sluice.UnavailableError, match="certificate"):
        sluice.Client(tls_daemon.https_address, token=TOKEN).stat(uri)


def test_bad_arguments_are_named(pki: dict[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        sluice.Client("https://127.0.0.1:1", token=TOKEN, token_file=pki["client-token"])
    with pytest.raises(ValueError, match="go together"):
        sluice.Client("https://127.0.0.1:1", client_cert=pki["server.crt"])
    with pytest.raises(sluice.InvalidArgumentError, match="token file"):
        sluice.Client("https://127.0.0.1:1", token_file=tmp_path / "none")
    with pytest.raises(sluice.InvalidArgumentError) as info:
        sluice.Client("https://127.0.0.1:1", token="two words " + TOKEN)
    assert TOKEN not in str(info.value)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not pem\n")
    with pytest.raises(sluice.InvalidArgumentError, match="CA file"):
        sluice.Client("https://127.0.0.1:1", ca_file=garbage, token=TOKEN).stat("file:///x")
