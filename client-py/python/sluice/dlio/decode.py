"""Decoding DLIO's sample files from the bytes of a read.

DLIO's own readers open a path (``numpy.load``, ``PIL.Image.open``). Here the
bytes are a :class:`sluice.Buffer`, usually over the daemon's shared memory,
and the decoders make of them what DLIO's readers make of a file:

- ``npz`` (unet3d): the array ``x`` of the archive. DLIO writes it with
  ``numpy.savez``, so the member is *stored* (not deflated) and the array is
  a view of the leased bytes: no copy at all, where ``numpy.load`` on a file
  copies every byte out of the page cache. A deflated member
  (``dataset.compression: zip``) is inflated into a new array as
  ``numpy.load`` would.
- ``npy``: the array, likewise a view.
- ``jpeg`` / ``png`` (resnet50 as a PyTorch pipeline reads ImageNet): the
  decoded pixels, as ``numpy.asarray(PIL.Image.open(...))`` gives them.

A view keeps the lease: :meth:`Sample.release` drops the array first and then
closes the buffer, so that the daemon can reuse its memory at once.
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Callable
from typing import Optional

import numpy as np

import sluice

#: The fixed part of a zip local file header (APPNOTE 4.3.7): signature,
#: versions, flags, method, time, date, CRC, sizes, then the name and extra
#: field lengths at offsets 26 and 28.
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_LOCAL_SIGNATURE = b"PK\x03\x04"


class _View(io.RawIOBase):
    """A seekable, read-only file over a memoryview (no copy until read)."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        n = min(len(b), len(self._view) - self._pos)
        b[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}
        self._pos = max(0, base[whence] + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def _npy_view(view: memoryview, start: int) -> Optional[np.ndarray]:
    """The array of the ``.npy`` image at ``view[start:]`` as a view of its
    bytes; ``None`` for one that cannot be viewed (Python objects)."""
    header = _View(view)
    header.seek(start)
    stream = io.BufferedReader(header, buffer_size=256)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    if dtype.hasobject:
        return None
    # The buffered reader read ahead: its position is the header's end.
    offset = stream.tell()
    count = int(np.prod(shape, dtype=np.int64))
    flat = np.frombuffer(view, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C")


def _stored_member_offset(view: memoryview, info: zipfile.ZipInfo) -> int:
    """Where the data of a stored zip member begins: after its local header,
    whose name and extra field may differ in length from the directory's."""
    fields = _LOCAL_HEADER.unpack_from(view, info.header_offset)
    if fields[0] != _LOCAL_SIGNATURE:
        raise ValueError(f"bad zip local header for {info.filename}")
    name_len, extra_len = fields[-2], fields[-1]
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def npz(buffer: sluice.Buffer, key: str = "x") -> np.ndarray:
    """Array ``key`` of an ``.npz`` archive: a view of ``buffer`` when
    stored, else inflated into a new array."""
    view = memoryview(buffer)
    with zipfile.ZipFile(_View(view)) as archive:
        info = archive.getinfo(f"{key}.npy")
        if info.compress_type == zipfile.ZIP_STORED:
            array = _npy_view(view, _stored_member_offset(view, info))
            if array is not None:
                return array
        with archive.open(info) as member:
            return np.load(io.BytesIO(member.read()), allow_pickle=True)


def npy(buffer: sluice.Buffer) -> np.ndarray:
    """The array of an ``.npy`` file, as a view of ``buffer``."""
    view = memoryview(buffer)
    array = _npy_view(view, 0)
    if array is None:
        return np.load(io.BytesIO(view), allow_pickle=True)
    return array


def image(buffer: sluice.Buffer) -> np.ndarray:
    """The decoded pixels of a JPEG or PNG image."""
    from PIL import Image

    with Image.open(_View(memoryview(buffer))) as img:
        return np.asarray(img)


#: DLIO's ``dataset.format`` values this module decodes.
DECODERS: dict[str, Callable[[sluice.Buffer], np.ndarray]] = {
    "npz": npz,
    "npy": npy,
    "jpeg": image,
    "png": image,
}


class Sample:
    """One file's decoded content and the lease it may still hold."""

    def __init__(self, buffer: sluice.Buffer, array: np.ndarray) -> None:
        self.buffer: Optional[sluice.Buffer] = buffer
        self.array: Optional[np.ndarray] = array

    def release(self) -> None:
        """Drops the array, then ends the lease."""
        self.array = None
        buffer, self.buffer = self.buffer, None
        if buffer is not None:
            try:
                buffer.close()
            except BufferError:
                # Something still views the bytes (an array the caller
                # kept): the lease ends when that is collected.
                pass
