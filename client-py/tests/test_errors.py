"""Errors map to Python exceptions, all `sluice.SluiceError`s with a code."""

from __future__ import annotations

import pickle

import pytest

import sluice
from conftest import Files


def test_not_found(client: sluice.Client, files: Files) -> None:
    for call in (
        lambda: client.get(files.uri("none.bin")),
        lambda: client.stat(files.uri("none.bin")),
    ):
        with pytest.raises(FileNotFoundError) as caught:
            call()
        error = caught.value
        assert isinstance(error, sluice.SluiceError)
        assert isinstance(error, sluice.NotFoundError)
        assert error.code == "NOT_FOUND"
        assert "none.bin" in str(error)
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is sluice.NotFoundError and again.code == "NOT_FOUND"
        assert str(again) == str(error)


def test_permission_denied_outside_the_root(client: sluice.Client) -> None:
    with pytest.raises(PermissionError) as caught:
        client.get("file:///etc/hostname")
    assert isinstance(caught.value, sluice.PermissionDeniedError)
    assert caught.value.code == "PERMISSION_DENIED"


@pytest.mark.parametrize("uri", ["nope://bucket/key", "file://relative/path", ""])
def test_malformed_uri_is_a_value_error(client: sluice.Client, uri: str) -> None:
    with pytest.raises(ValueError) as caught:
        client.stat(uri)
    assert isinstance(caught.value, sluice.InvalidArgumentError)
    assert caught.value.code == "INVALID_ARGUMENT"


def test_malformed_range_is_a_value_error(client: sluice.Client, files: Files) -> None:
    uri, _ = files.make("a.bin", 10)
    with pytest.raises(ValueError):
        client.get(uri, offset=2**64 - 2, length=5)
    with pytest.raises(OverflowError):
        client.get(uri, offset=-1)


def test_bad_and_unreachable_addresses(tmp_path) -> None:
    with pytest.raises(ValueError) as caught:
        sluice.Client("ftp://somewhere")
    assert isinstance(caught.value, sluice.SluiceError)
    client = sluice.Client(f"unix://{tmp_path}/nobody.sock")  # lazy: no error yet
    with pytest.raises(ConnectionError) as caught:
        client.stat("file:///x")
    assert isinstance(caught.value, sluice.UnavailableError)
    assert caught.value.code == "UNAVAILABLE"
    assert "nobody.sock" in str(caught.value)


def test_default_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLUICE_ADDRESS", raising=False)
    assert sluice.Client().address == "unix:///run/sluice/sluiced.sock"
    monkeypatch.setenv("SLUICE_ADDRESS", "unix:///tmp/elsewhere.sock")
    assert sluice.Client().address == "unix:///tmp/elsewhere.sock"
    assert sluice.Client("/tmp/explicit.sock").address == "/tmp/explicit.sock"


@pytest.mark.parametrize(
    "code, cls",
    [
        ("RESOURCE_EXHAUSTED", "ResourceExhaustedError"),
        ("NOT_FOUND", "NotFoundError"),
        ("UNAVAILABLE", "UnavailableError"),
    ],
)
def test_errors_cross_from_a_dataloader_worker(code: str, cls: str) -> None:
    """PyTorch re-raises a worker's exception in the main process as
    ``type(e)(message=...)`` for classes with a ``message`` attribute: every
    sluice error must survive that as itself, message included."""
    torch_utils = pytest.importorskip("torch._utils")
    import sys

    from sluice._types import _error_from_native

    try:
        raise _error_from_native(code, "s3://b/k: over the limit")
    except sluice.SluiceError:
        wrapper = torch_utils.ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 0")
    with pytest.raises(getattr(sluice, cls)) as caught:
        wrapper.reraise()
    assert caught.value.code == code
    assert "s3://b/k: over the limit" in caught.value.message
    assert "worker process 0" in str(caught.value)
