"""Byte ranges read as fsspec wants them: slices that stop at the end.

fsspec's ``cat_file(path, start, end)`` is ``data[start:end]``: a range
running past the end is cut there, one starting at or after it is empty. The
daemon cuts the first kind too, but refuses a range that starts at or after
the end (``INVALID_ARGUMENT``); such a failure is checked against the
object's size (one ``stat``, only then) and becomes ``b""``.

A range from 0 to the end is asked for as the whole object, the read the
daemon caches.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

from .. import Client, InvalidArgumentError, SluiceError
from ._errors import as_os_error

Item = tuple[str, Optional[int], Optional[int]]


class Range(NamedTuple):
    """``[start, end)`` of the object ``uri``; ``end=None``: to its end."""

    uri: str
    start: int
    end: Optional[int]

    def item(self) -> Item:
        """The ``(uri, offset, length)`` of ``Client.get`` and ``get_many``."""
        if self.end is None:
            return (self.uri, self.start or None, None)
        return (self.uri, self.start, max(0, self.end - self.start))


def _past_the_end(client: Client, what: Range, error: SluiceError) -> bool:
    """Whether ``error`` refused ``what`` because it starts at or after the
    end of the object."""
    if not isinstance(error, InvalidArgumentError) or what.start == 0:
        return False
    try:
        return what.start >= client.stat(what.uri).size
    except SluiceError:
        return False


def read_range(client: Client, what: Range) -> bytes:
    """The bytes of one range (one read)."""
    try:
        buf = client.get(*what.item())
    except SluiceError as error:
        if _past_the_end(client, what, error):
            return b""
        raise
    with buf:
        data = bytes(buf)
    return data


def fetch_ranges(
    client: Client, ranges: list[Range], window: int
) -> list[Union[bytes, BaseException]]:
    """The bytes of each range, or the exception that failed it, in the
    order of ``ranges``: one ``get_many`` call with ``window`` reads in
    flight."""
    out: list[Union[bytes, BaseException]] = [b""] * len(ranges)
    if not ranges:
        return out
    results = client.get_many([r.item() for r in ranges], ordered=True, window=window)
    for turn, what in enumerate(ranges):
        try:
            index, buf = next(results)
        except SluiceError as error:
            # In order: a failed item raises at its own turn.
            out[turn] = b"" if _past_the_end(client, what, error) else as_os_error(error)
            continue
        with buf:
            out[index] = bytes(buf)
    return out
