"""Finding the data a user names: the bundled sample, an ``.npz`` file, an image folder or code.

The data comes back as :class:`~mlsec.core.data.Samples`, read batch by batch: image folders
decode each image when it is read (:mod:`mlsec.io.images`), ``.npz`` arrays are memory-mapped
(:mod:`mlsec.io.npz`) and a Dataset is read item by item. Nothing here unpickles: ``.npz``
files are read with ``allow_pickle=False`` and image folders by Pillow, limited to plain raster
formats. Every failure is a one-line
:class:`InputError` whose subject is the caller's name for the input (``"data"`` by default).
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlsec import datasets
from mlsec.core.data import Samples, as_samples, as_tensors
from mlsec.core.text import error_line
from mlsec.errors import InputError
from mlsec.io.images import ImageSize, load_image_folder
from mlsec.io.messages import few, shown
from mlsec.io.modules import load_entry_point, looks_like_path
from mlsec.io.npz import (
    Layout,
    NpyArray,
    NpyError,
    NpzSamples,
    check_stored,
    extract_member,
    stored_member_start,
)

__all__ = ["BUNDLED_DATA", "DATA_SUFFIXES", "checked_tensors", "load_data"]

Loaded = tuple[Samples, str, list[str]]

BUNDLED_DATA: dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor]]] = {
    "mnist-sample": datasets.mnist_sample,
    "mnist-members": datasets.mnist_members,
    "mnist-members-matched": datasets.mnist_members_matched,
}
DATA_SUFFIXES = frozenset({".npz", ".npy"})


def checked_tensors(data: Any, subject: str, where: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~mlsec.core.data.as_tensors`, its errors with ``subject`` and prefixed by ``where``.

    ``as_tensors`` writes the name it is given at the front of its messages; here that front
    becomes the error's subject, so the command line can show its flag instead.
    """
    try:
        return as_tensors(data, subject)
    except InputError as error:
        if error.subject is not None:  # as_tensors names its subject itself
            if not where:
                raise
            detail = error.detail
        else:
            detail = str(error).removeprefix(f"{subject}: ").removeprefix(f"{subject} ")
        raise InputError(f"{where}: {detail}" if where else detail, subject=subject) from None


def load_data(
    spec: str,
    *,
    subject: str = "data",
    resize: ImageSize | None = None,
    center_crop: ImageSize | None = None,
) -> Loaded:
    """Find the data a user named, to be read batch by batch.

    Args:
        spec: ``mnist-sample``; an ``.npz`` file with arrays ``x`` (uint8 or float images,
            ``[N,H,W]``, ``[N,C,H,W]`` or ``[N,H,W,C]``) and ``y`` (integer labels); an image
            folder with one subfolder per class; or ``module:function`` returning a Dataset, a
            DataLoader or ``(x, y)``.
        subject: the input's name in the caller's terms, the subject of every error.
        resize: for an image folder, resize each image (bilinear): an int is its shorter side,
            ``(H, W)`` its size.
        center_crop: for an image folder, then crop each image's centre to ``(H, W)`` (an int:
            a square).

    Returns:
        ``(samples, name, notes)``: the data as :class:`~mlsec.core.data.Samples` (float32
        inputs ``[N, ...]``, int64 labels ``[N]``, read on demand; ``samples.tensors()`` reads
        them all), a name for reports and notes for the user (how the layout and the scale were
        read, the classes).

    Raises:
        InputError: the data cannot be found or read, or does not hold checked inputs and
            labels (an image or sample that cannot be read is reported when it is read).

    Example:
        >>> samples, name, notes = load_data("mnist-sample")
        >>> len(samples), tuple(samples.get([0, 1])[0].shape), name, notes
        (2000, (2, 1, 28, 28), 'mnist-sample', [])

    """
    path = Path(spec)
    if (resize is not None or center_crop is not None) and not path.is_dir():
        raise InputError(
            f"applies to image folders only; {shown(spec)} is not a folder",
            subject="resize" if resize is not None else "center_crop",
        )
    if path.is_dir():
        return load_image_folder(path, subject, resize=resize, center_crop=center_crop)
    if path.is_file():
        return _load_npz(path, subject)
    if path.exists():
        raise InputError(f"{shown(spec)} is not a regular file or folder", subject=subject)
    if ":" in spec:
        return as_samples(load_entry_point(spec, subject), subject), spec, []
    if looks_like_path(spec, DATA_SUFFIXES):
        raise InputError(f"no such file or folder: {shown(spec)}", subject=subject)
    if spec not in BUNDLED_DATA:
        raise InputError(
            f"unknown data set {spec!r}; use {', '.join(BUNDLED_DATA)}, "
            "an .npz file, an image folder or module:function",
            subject=subject,
        )
    return as_samples(BUNDLED_DATA[spec](), subject), spec, []


def _open_npz(path: Path, where: str, subject: str) -> np.lib.npyio.NpzFile:
    """The ``.npz`` archive at ``path``, opened without unpickling."""
    if path.stat().st_size == 0:
        raise InputError(f"{where}: the file is empty", subject=subject)
    with path.open("rb") as fh:
        head = fh.read(6)
    if head[:4] != b"PK\x03\x04" and head != b"\x93NUMPY":
        raise InputError(
            f"{where}: not an .npz archive; give an .npz file with arrays x and y, "
            "an image folder or module:function",
            subject=subject,
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as error:  # numpy's reader fails on damaged bytes in many ways
        raise InputError(
            f"{where}: cannot read it as an .npz archive: {error_line(error)}", subject=subject
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(
            f"{where}: holds a single array; save inputs and labels together with "
            "numpy.savez(path, x=images, y=labels)",
            subject=subject,
        )
    return archive


def _read_labels(archive: np.lib.npyio.NpzFile, where: str, subject: str) -> np.ndarray:
    """Array ``y`` of the archive, read whole (labels are small), refusing object arrays."""
    missing = [key for key in ("x", "y") if key not in archive.files]
    if missing:
        raise InputError(
            f"{where}: no array {' or '.join(map(repr, missing))} "
            f"(found {few(archive.files, 5) or 'none'}); "
            "save them with numpy.savez(path, x=images, y=labels)",
            subject=subject,
        )
    try:
        labels: np.ndarray = archive["y"]
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise _objects("y", where, subject) from None
        raise InputError(
            f"{where}: cannot read array 'y': {error_line(error)}", subject=subject
        ) from None
    except Exception as error:  # numpy's reader fails on damaged bytes in many ways
        raise InputError(
            f"{where}: cannot read array 'y': {error_line(error)}", subject=subject
        ) from None
    return labels


def _objects(key: str, where: str, subject: str) -> InputError:
    return InputError(
        f"{where}: array {key!r} holds Python objects, which mlsec does not unpickle; "
        "save numeric arrays",
        subject=subject,
    )


def _locate_x(
    path: Path, archive: np.lib.npyio.NpzFile, where: str, subject: str
) -> tuple[NpyArray, list[str]]:
    """Where array ``x``'s pixels lie: in the archive itself, or extracted when compressed."""
    members = archive.zip
    assert members is not None  # an open archive
    info = members.getinfo("x.npy" if "x.npy" in members.namelist() else "x")
    try:
        if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
            start = stored_member_start(path, info)
            array = NpyArray.at(path, start)
            check_stored(path, info, start, array)
            return array, []
        extracted = extract_member(members, info)
        return NpyArray.at(extracted, 0), [
            f"x is compressed: extracted to {shown(extracted)}, removed at exit"
        ]
    except NpyError as error:
        if error.objects:
            raise _objects("x", where, subject) from None
        raise InputError(f"{where}: cannot read array 'x': {error}", subject=subject) from None
    except Exception as error:  # damaged bytes fail in many ways
        raise InputError(
            f"{where}: cannot read array 'x': {error_line(error)}", subject=subject
        ) from None


def _load_npz(path: Path, subject: str) -> Loaded:
    where = shown(path)
    with _open_npz(path, where, subject) as archive:
        labels = _read_labels(archive, where, subject)
        array, notes = _locate_x(path, archive, where, subject)
    layout = _layout(array.dtype, array.shape, where, subject, notes)
    if labels.dtype.kind not in "iu":
        raise InputError(
            f"{where}: labels y must be integers (got {labels.dtype})", subject=subject
        )
    n, shape = array.shape[0], layout.shape(array.shape)
    if labels.ndim != 1 or n != labels.shape[0]:
        count = f": {n} inputs but {labels.shape[0]} labels" if labels.ndim == 1 else ""
        raise InputError(
            f"{where}: need inputs [n, ...] and labels [n] "
            f"(got {shape} and {tuple(labels.shape)}){count}",
            subject=subject,
        )
    if n == 0:
        raise InputError(f"{where}: the data set is empty", subject=subject)
    if math.prod(shape[1:]) == 0:
        raise InputError(f"{where}: x holds images with no pixels (shape {shape})", subject=subject)
    y = torch.from_numpy(labels.astype(np.int64))
    samples = NpzSamples(array, layout, y, subject=subject, where=where)
    if array.dtype != np.uint8:
        low, high = samples.span()
        notes.append(f"x is {array.dtype}: used as it is; it spans [{low:g}, {high:g}]")
    return samples, path.name, notes


def _layout(
    dtype: np.dtype, shape: tuple[int, ...], where: str, subject: str, notes: list[str]
) -> Layout:
    """How array ``x`` of ``dtype`` and ``shape`` becomes float32 NCHW images, noted."""
    if dtype == np.uint8:
        notes.append("x is uint8: divided by 255 to [0, 1]")
    elif dtype.kind != "f":
        raise InputError(
            f"{where}: x must be uint8 (0-255) or floating point (got {dtype}); "
            "for 0-255 pixels save x.astype('uint8')",
            subject=subject,
        )
    scale = dtype == np.uint8
    if len(shape) == 3:
        notes.append(f"x has shape {shape}: read as 1-channel images [N,H,W], made [N,1,H,W]")
        return Layout("nhw", scale)
    if len(shape) != 4:
        raise InputError(
            f"{where}: x must hold images [N,H,W], [N,C,H,W] or [N,H,W,C] (got shape {shape})",
            subject=subject,
        )
    if shape[3] in (1, 3) and shape[1] not in (1, 3):
        notes.append(f"x has shape {shape}: assumed NHWC [N,H,W,C], transposed to NCHW")
        return Layout("nhwc", scale)
    ambiguous = " (ambiguous)" if shape[3] in (1, 3) else ""
    notes.append(f"x has shape {shape}: assumed NCHW [N,C,H,W]{ambiguous}")
    return Layout("nchw", scale)
