"""Arrays of an ``.npz`` archive read by row, never whole: memory-mapped where they lie.

An uncompressed member (``numpy.savez``) is memory-mapped inside the archive at its data's
offset: the member's local header, then its ``.npy`` header. A compressed member
(``numpy.savez_compressed``) is first extracted, in chunks, to a temporary ``.npy`` file removed
at exit. Each read maps the rows it needs and unmaps them again, so reading a large file does not
grow the process's resident memory. Nothing here unpickles: an object array is refused from its
header.
"""

from __future__ import annotations

import atexit
import contextlib
import mmap
import os
import shutil
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlsec.core.data import Samples
from mlsec.errors import InputError

__all__ = [
    "Layout",
    "NpyArray",
    "NpyError",
    "NpzSamples",
    "check_stored",
    "extract_member",
    "stored_member_start",
]

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra length
_BLOCK = 1 << 22  # bytes copied or checksummed at once
_SCAN_BYTES = 1 << 26  # bytes of rows read at once when scanning a whole array


class NpyError(ValueError):
    """An ``.npy`` header numpy cannot read, or one describing Python objects."""

    def __init__(self, message: str, *, objects: bool = False) -> None:
        super().__init__(message)
        self.objects = objects


@dataclass(frozen=True)
class NpyArray:
    """An ``.npy`` array's data inside a file: where it starts, its type, shape and order."""

    path: Path
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran: bool

    @classmethod
    def at(cls, path: Path, start: int) -> NpyArray:
        """The array whose ``.npy`` file starts at byte ``start`` of ``path`` (header only)."""
        with path.open("rb") as fh:
            fh.seek(start)
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise NpyError(f"unsupported .npy format version {version}")
            offset = fh.tell()
        if dtype.hasobject:
            raise NpyError("holds Python objects", objects=True)
        array = cls(path, offset, dtype, tuple(int(n) for n in shape), bool(fortran))
        if path.stat().st_size < offset + array.nbytes:
            raise NpyError("the file is shorter than the array's header says")
        return array

    @property
    def nbytes(self) -> int:
        """The size of the array's data."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def rows(self, indices: Sequence[int]) -> np.ndarray:
        """A copy of the rows at ``indices``; the file is mapped for this read only."""
        n = self.shape[0]
        if not all(0 <= i < n for i in indices):
            raise IndexError(f"a sample index lies outside 0..{n - 1}")
        with self.path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return self._copy(m, indices)  # every view of the mapping is gone when it returns

    def _copy(self, mapping: mmap.mmap, indices: Sequence[int]) -> np.ndarray:
        count = int(np.prod(self.shape, dtype=np.int64))
        flat = np.frombuffer(mapping, self.dtype, count=count, offset=self.offset)
        array = flat.reshape(self.shape, order="F" if self.fortran else "C")
        if isinstance(indices, range) and indices.step == 1:
            return array[indices.start : indices.stop].copy()
        return array[np.asarray(indices, dtype=np.intp)]


def stored_member_start(path: Path, info: zipfile.ZipInfo) -> int:
    """The byte where an uncompressed member's data starts: after its local file header."""
    with path.open("rb") as fh:
        fh.seek(info.header_offset)
        signature, name_length, extra_length = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
    if signature != b"PK\x03\x04":
        raise NpyError("the archive's member header is damaged")
    return info.header_offset + _LOCAL_HEADER.size + name_length + extra_length


def check_stored(path: Path, info: zipfile.ZipInfo, start: int, array: NpyArray) -> None:
    """Check an uncompressed member whole: its size and CRC-32, read block by block."""
    if array.offset + array.nbytes > start + info.file_size:
        raise NpyError("the member is shorter than the array's header says")
    crc, left = 0, info.file_size
    with path.open("rb") as fh:
        fh.seek(start)
        while left:
            block = fh.read(min(left, _BLOCK))
            if not block:
                raise NpyError("the file is cut short")
            crc, left = zlib.crc32(block, crc), left - len(block)
    if crc != info.CRC:
        raise NpyError("bad CRC-32: the file is damaged")


def extract_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Path:
    """A compressed member extracted block by block to a temporary file, removed at exit."""
    handle, name = tempfile.mkstemp(prefix="mlsec-", suffix=".npy")
    path = Path(name)
    atexit.register(_remove, path)
    try:
        with os.fdopen(handle, "wb") as target, archive.open(info) as source:
            shutil.copyfileobj(source, target, _BLOCK)  # zipfile checks the CRC-32 at the end
    except BaseException:
        _remove(path)
        raise
    return path


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


@dataclass(frozen=True)
class Layout:
    """How rows of an ``x`` array become float32 NCHW images: ``nchw``, ``nhwc`` or ``nhw``."""

    order: str
    scale: bool  # uint8: divide by 255

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The NCHW shape of an array of ``shape``.

        Example:
            >>> Layout("nhwc", True).shape((5, 28, 28, 3)), Layout("nhw", True).shape((5, 4, 4))
            ((5, 3, 28, 28), (5, 1, 4, 4))

        """
        if self.order == "nhw":
            return (shape[0], 1, *shape[1:])
        if self.order == "nhwc":
            return (shape[0], shape[3], shape[1], shape[2])
        return shape

    def images(self, rows: np.ndarray) -> torch.Tensor:
        """Float32 NCHW images from rows of the array."""
        x = torch.from_numpy(np.ascontiguousarray(rows))
        x = x.float().div_(255.0) if self.scale else x.float()
        if self.order == "nhw":
            return x.unsqueeze(1)
        if self.order == "nhwc":
            return x.permute(0, 3, 1, 2).contiguous()
        return x


class NpzSamples(Samples):
    """Images of an ``.npz`` archive's array ``x``, read by row; labels ``y`` in memory."""

    def __init__(
        self, array: NpyArray, layout: Layout, y: torch.Tensor, *, subject: str, where: str
    ) -> None:
        self.array, self.layout, self.y = array, layout, y
        self.subject, self.where = subject, where

    def __len__(self) -> int:
        return self.array.shape[0]

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels at ``indices``."""
        try:
            rows = self.array.rows(indices)
        except (OSError, ValueError) as error:  # the file changed or vanished since
            raise InputError(
                f"{self.where}: cannot read array 'x': {type(error).__name__}: {error}",
                subject=self.subject,
            ) from None
        return self.layout.images(rows), self.y[torch.as_tensor(list(indices), dtype=torch.long)]

    def span(self) -> tuple[float, float]:
        """The smallest and largest input, scanning ``x`` in chunks; refuses non-finite ones."""
        n = len(self)
        step = max(1, _SCAN_BYTES // max(1, self.array.nbytes // n))
        low, high = float("inf"), float("-inf")
        for start in range(0, n, step):
            x, _ = self.get(range(start, min(n, start + step)))
            finite = torch.isfinite(x).flatten(1).all(1)
            if not bool(finite.all()):
                first = start + int((~finite).nonzero()[0, 0])
                raise InputError(
                    f"{self.where}: inputs contain NaN or infinite values "
                    f"(first at sample {first})",
                    subject=self.subject,
                )
            low, high = min(low, float(x.min())), max(high, float(x.max()))
        return low, high
