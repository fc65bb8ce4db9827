"""Loading the data a user names: the bundled sample, an ``.npz`` file, an image folder or code.

Nothing here unpickles: ``.npz`` files are read with ``allow_pickle=False`` and image folders by
Pillow, limited to plain raster formats (:mod:`mlsec.io.images`). Every failure is a one-line
:class:`InputError` whose subject is the caller's name for the input (``"data"`` by default).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlsec import datasets
from mlsec.core.data import as_tensors
from mlsec.core.text import error_line
from mlsec.errors import InputError
from mlsec.io.images import load_image_folder
from mlsec.io.messages import few, shown
from mlsec.io.modules import load_entry_point, looks_like_path

__all__ = ["BUNDLED_DATA", "DATA_SUFFIXES", "checked_tensors", "load_data"]

Loaded = tuple[tuple[torch.Tensor, torch.Tensor], str, list[str]]

BUNDLED_DATA: dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor]]] = {
    "mnist-sample": datasets.mnist_sample
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


def load_data(spec: str, *, subject: str = "data") -> Loaded:
    """Load the data a user named.

    Args:
        spec: ``mnist-sample``; an ``.npz`` file with arrays ``x`` (uint8 or float images,
            ``[N,H,W]``, ``[N,C,H,W]`` or ``[N,H,W,C]``) and ``y`` (integer labels); an image
            folder with one subfolder per class; or ``module:function`` returning a Dataset, a
            DataLoader or ``(x, y)``.
        subject: the input's name in the caller's terms, the subject of every error.

    Returns:
        ``((x, y), name, notes)``: float32 inputs ``[N, ...]``, int64 labels ``[N]``, a name for
        reports and notes for the user (how the layout and the scale were read, the classes).

    Raises:
        InputError: the data cannot be found, read or turned into checked tensors.

    Example:
        >>> (x, y), name, notes = load_data("mnist-sample")
        >>> tuple(x.shape), name, notes
        ((2000, 1, 28, 28), 'mnist-sample', [])

    """
    path = Path(spec)
    if path.is_dir():
        return load_image_folder(path, subject)
    if path.is_file():
        return _load_npz(path, subject)
    if path.exists():
        raise InputError(f"{shown(spec)} is not a regular file or folder", subject=subject)
    if ":" in spec:
        return checked_tensors(load_entry_point(spec, subject), subject), spec, []
    if looks_like_path(spec, DATA_SUFFIXES):
        raise InputError(f"no such file or folder: {shown(spec)}", subject=subject)
    if spec not in BUNDLED_DATA:
        raise InputError(
            f"unknown data set {spec!r}; use {', '.join(BUNDLED_DATA)}, "
            "an .npz file, an image folder or module:function",
            subject=subject,
        )
    return BUNDLED_DATA[spec](), spec, []


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


def _read_arrays(archive: np.lib.npyio.NpzFile, where: str, subject: str) -> list[np.ndarray]:
    """Arrays ``x`` and ``y`` of the archive, refusing object arrays."""
    missing = [key for key in ("x", "y") if key not in archive.files]
    if missing:
        raise InputError(
            f"{where}: no array {' or '.join(map(repr, missing))} "
            f"(found {few(archive.files, 5) or 'none'}); "
            "save them with numpy.savez(path, x=images, y=labels)",
            subject=subject,
        )
    arrays = []
    for key in ("x", "y"):
        try:
            arrays.append(archive[key])
        except ValueError as error:
            if "allow_pickle" in str(error):
                raise InputError(
                    f"{where}: array {key!r} holds Python objects, which mlsec does not "
                    "unpickle; save numeric arrays",
                    subject=subject,
                ) from None
            raise InputError(
                f"{where}: cannot read array {key!r}: {error_line(error)}", subject=subject
            ) from None
        except Exception as error:  # numpy's reader fails on damaged bytes in many ways
            raise InputError(
                f"{where}: cannot read array {key!r}: {error_line(error)}", subject=subject
            ) from None
    return arrays


def _load_npz(path: Path, subject: str) -> Loaded:
    where = shown(path)
    with _open_npz(path, where, subject) as archive:
        images, labels = _read_arrays(archive, where, subject)
    notes: list[str] = []
    x = _images_from_array(images, where, subject, notes)
    if labels.dtype.kind not in "iu":
        raise InputError(
            f"{where}: labels y must be integers (got {labels.dtype})", subject=subject
        )
    y = torch.from_numpy(labels.astype(np.int64))
    x, y = checked_tensors((x, y), subject, where)
    if images.dtype != np.uint8:
        low, high = float(x.min()), float(x.max())
        notes.append(f"x is {images.dtype}: used as it is; it spans [{low:g}, {high:g}]")
    return (x, y), path.name, notes


def _images_from_array(
    images: np.ndarray, where: str, subject: str, notes: list[str]
) -> torch.Tensor:
    """Float32 NCHW images from a uint8 or float array in NCHW, NHWC or NHW layout."""
    if images.dtype == np.uint8:
        scaled = images.astype(np.float32) / np.float32(255.0)
        notes.append("x is uint8: divided by 255 to [0, 1]")
    elif images.dtype.kind == "f":
        scaled = images.astype(np.float32)
    else:
        raise InputError(
            f"{where}: x must be uint8 (0-255) or floating point (got {images.dtype}); "
            "for 0-255 pixels save x.astype('uint8')",
            subject=subject,
        )
    shape = images.shape
    if images.ndim == 3:
        notes.append(f"x has shape {shape}: read as 1-channel images [N,H,W], made [N,1,H,W]")
        return torch.from_numpy(scaled).unsqueeze(1)
    if images.ndim != 4:
        raise InputError(
            f"{where}: x must hold images [N,H,W], [N,C,H,W] or [N,H,W,C] (got shape {shape})",
            subject=subject,
        )
    if shape[3] in (1, 3) and shape[1] not in (1, 3):
        notes.append(f"x has shape {shape}: assumed NHWC [N,H,W,C], transposed to NCHW")
        return torch.from_numpy(np.ascontiguousarray(scaled.transpose(0, 3, 1, 2)))
    ambiguous = " (ambiguous)" if shape[3] in (1, 3) else ""
    notes.append(f"x has shape {shape}: assumed NCHW [N,C,H,W]{ambiguous}")
    return torch.from_numpy(scaled)
