"""Functions run in child processes by test_fork (importable under spawn)."""

from __future__ import annotations

import hashlib
from typing import Any, Optional

import sluice

#: A client made in the parent before a fork, used by `read_with_inherited`.
INHERITED: Optional[sluice.Client] = None


def digest(client: sluice.Client, uri: str) -> tuple[str, bool]:
    with client.get(uri) as buf:
        return hashlib.sha256(buf).hexdigest(), client._is_mapped(buf._address)


def read_with_inherited(uri: str, out: Any) -> None:
    assert INHERITED is not None
    out.put(digest(INHERITED, uri))


def read_with_given(client: sluice.Client, uri: str, out: Any) -> None:
    out.put(digest(client, uri))
