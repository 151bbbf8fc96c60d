"""fsspec paths of the ``sluice`` protocol and the daemon's URIs.

An fsspec path is the backend URI with ``://`` replaced by ``/``, so that
every path is ``<scheme>/<rest>`` and directories nest the usual way:

=====================================  =======================================
fsspec path (``sluice://`` stripped)   daemon URI
=====================================  =======================================
``s3/bucket/key``                      ``s3://bucket/key``
``s3/host:port/bucket/key``            ``s3://host:port/bucket/key``
``gs/bucket/object``                   ``gs://bucket/object``
``az/account/container/blob``          ``az://account/container/blob``
``file/data/x`` (absolute path)        ``file:///data/x``
``direct/data/x`` (absolute path)      ``direct:///data/x``
=====================================  =======================================

The scheme is not checked here: the daemon refuses the ones it does not
serve. Paths given as daemon URIs (``s3://bucket/key``, ``file:///data/x``)
or with ``sluice://`` in front of one are taken too and come out in the form
above. Trailing slashes are dropped; ``""`` is the root above the schemes.
"""

from __future__ import annotations

import os
import re
from typing import Union

PROTOCOL = "sluice"

#: Schemes whose URIs carry an absolute path (``file:///data/x``) instead of
#: an authority. Their backends are directory trees: an empty directory can
#: exist there, which object stores do not have.
LOCAL_SCHEMES = frozenset({"file", "direct"})

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)


def strip(path: Union[str, os.PathLike[str]]) -> str:
    """The fsspec path of ``path``: a ``sluice://`` URL, a daemon URI or a
    path already in the ``<scheme>/<rest>`` form."""
    text = os.fspath(path)
    if text.startswith(PROTOCOL + "://"):
        text = text[len(PROTOCOL) + 3 :]
    match = _URI.match(text)
    if match:
        name, rest = match.groups()
        text = f"{name}/{rest.lstrip('/')}"
    return text.strip("/")


def to_uri(path: str) -> str:
    """The daemon URI of the fsspec path ``path`` (already stripped)."""
    if not path:
        raise ValueError(
            "a sluice path names a backend first: s3/bucket/key, file/abs/path, "
            "gs/..., az/..., direct/..."
        )
    scheme, _, rest = path.partition("/")
    if scheme in LOCAL_SCHEMES:
        return f"{scheme}:///{rest}"
    return f"{scheme}://{rest}"


def to_prefix(path: str) -> str:
    """The listing prefix of the directory ``path``: its URI and a ``/``."""
    uri = to_uri(path)
    return uri if uri.endswith("/") else uri + "/"


def scheme(path: str) -> str:
    return path.partition("/")[0]


def is_bucket(path: str) -> bool:
    """Whether ``path`` names a bucket (``s3/bucket``, ``gs/bucket``), an
    Azure container (``az/account/container``) or a scheme alone: a place
    that is a directory even when it holds no object, and never an object."""
    parts = path.split("/")
    name = parts[0]
    if name in LOCAL_SCHEMES:
        return len(parts) == 1
    depth = 1  # the bucket
    if name in ("az", "https"):
        depth = 2  # account (or host), then container
    elif name == "s3" and len(parts) > 1 and ":" in parts[1]:
        depth = 2  # s3://host:port/bucket
    return len(parts) <= 1 + depth


def relative(prefix_uri: str, uri: str, base: str) -> str:
    """The fsspec path of a listed ``uri``, found under the prefix
    ``prefix_uri`` that stands for the fsspec directory ``base``. Built from
    the caller's spelling of the directory, so that names stay under the
    path that was listed."""
    if uri.startswith(prefix_uri):
        rest = uri[len(prefix_uri) :].strip("/")
        return f"{base}/{rest}" if base else rest
    return strip(uri)
