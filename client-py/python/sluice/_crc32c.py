"""CRC-32C (Castagnoli), the checksum of TFRecord framing.

Three implementations, the first one importable wins:

- ``crc32c`` (PyPI; the ``tfrecord`` package depends on it): hardware
  instructions (SSE 4.2, ARMv8 CRC) where the CPU has them, reads any buffer
  in place and releases the GIL: several GB/s.
- ``google-crc32c`` (PyPI), its C extension only (its pure-Python fallback
  warns on import and is no faster than ours): takes ``bytes``, so a
  memoryview is copied first.
- A table-driven loop in pure Python: 2 to 10 MB/s depending on the CPU,
  enough for the 8-byte record headers (always checked) but slow for
  verifying record data.

:data:`IMPLEMENTATION` names the one in use. ``crc32c(data, crc)`` extends
``crc`` (the CRC of the bytes before ``data``), so a long record can be
checked in pieces.
"""

from __future__ import annotations

import warnings
from typing import Protocol, Union

__all__ = ["IMPLEMENTATION", "Crc32c", "crc32c", "masked", "python_crc32c"]

BytesLike = Union[bytes, bytearray, memoryview]

#: The reflected CRC-32C polynomial.
_POLYNOMIAL = 0x82F63B78
#: Added to the rotated CRC by :func:`masked` (TFRecord's mask).
_MASK_DELTA = 0xA282EAD8


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_POLYNOMIAL if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _table()


def python_crc32c(data: BytesLike, crc: int = 0, /) -> int:
    """CRC-32C of ``data`` following ``crc``, in pure Python."""
    table = _TABLE
    crc ^= 0xFFFFFFFF
    for byte in memoryview(data).cast("B"):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class Crc32c(Protocol):
    """``crc32c(data, crc=0)``: the CRC-32C of ``data`` following ``crc``."""

    def __call__(self, data: BytesLike, crc: int = 0, /) -> int: ...


def _native() -> tuple[str, Crc32c]:
    with warnings.catch_warnings():
        # Either package may warn that it runs without hardware support.
        warnings.simplefilter("ignore")
        try:
            import crc32c as package
        except ImportError:
            pass
        else:

            def hardware(data: BytesLike, crc: int = 0, /) -> int:
                return int(package.crc32c(data, value=crc))

            return "crc32c", hardware
        try:
            import google_crc32c
        except ImportError:
            pass
        else:
            if google_crc32c.implementation == "c":

                def google(data: BytesLike, crc: int = 0, /) -> int:
                    return int(google_crc32c.extend(crc, bytes(data)))

                return "google-crc32c", google
    return "python", python_crc32c


#: The implementation in use: ``"crc32c"``, ``"google-crc32c"`` or ``"python"``.
IMPLEMENTATION: str
crc32c: Crc32c
IMPLEMENTATION, crc32c = _native()


def masked(crc: int) -> int:
    """TFRecord's masked CRC: rotated right by 15 bits, plus a constant,
    modulo 2**32."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF
