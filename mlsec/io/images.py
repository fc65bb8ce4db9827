"""Image folders: one subfolder per class, read by Pillow into float32 images and int64 labels.

Pillow identifies a file by its content, not its name; it is limited to plain raster formats here,
so a file named ``.png`` that is really PostScript never reaches Ghostscript.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mlsec.core.data import as_tensors
from mlsec.core.text import error_line
from mlsec.errors import InputError
from mlsec.io.messages import shown

__all__ = ["CLASS_MAP_NOTE", "IMAGE_SUFFIXES", "image_folder_classes", "load_image_folder"]

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp"}
)
_PIL_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "PPM", "TIFF", "WEBP")
_PIL_GRAY = frozenset({"L", "1"})
_PIL_UNSUPPORTED = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)

# Starts the note that names each class folder's label when the labels are not simply folder "i"
# is class i: a surprise there changes every accuracy silently, so the CLI always prints it.
CLASS_MAP_NOTE = "class labels from the folder names"
_DECIMAL = re.compile(r"[0-9]+")
_MAX_LABEL = 2**63 - 1  # labels are int64


def image_folder_classes(root: Path, subject: str = "data") -> dict[str, int]:
    """The label of each class folder of an image folder, in label order.

    When every class folder's name is a decimal number (ASCII digits only, such as ``7`` or
    ``007``), the label is that number; otherwise the labels follow the sorted names: 0, 1, ...
    Hidden folders (``.name``) are not classes.

    Args:
        root: the image folder, holding one subfolder per class.
        subject: the input's name in the caller's terms, the subject of every error.

    Returns:
        Folder name → label, ordered by label.

    Raises:
        InputError: there are no class folders, or two names are the same number (``7`` and
            ``07``).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("9", "0", "4"):
        ...     (root / name).mkdir()
        >>> image_folder_classes(root)
        {'0': 0, '4': 4, '9': 9}

    """
    where = shown(root)
    with os.scandir(root) as entries:
        names = sorted(
            entry.name for entry in entries if entry.is_dir() and not entry.name.startswith(".")
        )
    if not names:
        loose = sum(1 for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        found = f"it has {loose} images but no subfolders" if loose else "it is empty"
        raise InputError(
            f"{where}: an image folder needs one subfolder per class; {found}", subject=subject
        )
    if not all(_DECIMAL.fullmatch(name) for name in names):
        return {name: index for index, name in enumerate(names)}
    classes: dict[str, int] = {}
    for name in sorted(names, key=lambda name: (int(name), name)):
        label = int(name)
        if label > _MAX_LABEL:
            raise InputError(
                f"{where}: class folder {name} is too large a number for a label", subject=subject
            )
        if label in classes.values():
            other = next(n for n, value in classes.items() if value == label)
            raise InputError(
                f"{where}: class folders {other} and {name} are both class {label}; "
                "merge them or rename one",
                subject=subject,
            )
        classes[name] = label
    return classes


def _class_note(classes: dict[str, int]) -> str:
    """The note naming each folder's label.

    It starts with :data:`CLASS_MAP_NOTE` unless folder ``i`` is class ``i`` for every i from 0.
    """
    pairs = list(classes.items())
    listed = ", ".join(f"{label}={shown(name)}" for name, label in pairs[:20])
    if len(pairs) > 20:
        listed += f", ... ({len(pairs)} classes)"
    if [name for name, _ in pairs] == [str(i) for i in range(len(pairs))]:
        return f"class labels are the folder numbers: {listed}"
    how = "the folder numbers" if all(_DECIMAL.fullmatch(n) for n in classes) else "sorted names"
    return f"{CLASS_MAP_NOTE}: {listed} (label=folder, by {how})"


def _walk_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, sorted; hidden files and folders are skipped."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(
            Path(dirpath) / name
            for name in filenames
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
        )
    return sorted(found)


def _read_image(path: Path) -> tuple[np.ndarray, str, tuple[int, int], bool]:
    """Pixels (uint8, HxW for gray, HxWx3 else), the mode, (width, height) and alpha presence.

    Raises the reader's own errors; the caller names the file.
    """
    with Image.open(path, formats=_PIL_FORMATS) as image:
        image.load()
        mode, size = image.mode, image.size
        alpha = "A" in image.getbands() or "transparency" in image.info
        if mode in _PIL_UNSUPPORTED:
            return np.zeros(0, np.uint8), mode, size, alpha
        converted = image.convert("L" if mode in _PIL_GRAY else "RGB")
        return np.asarray(converted, dtype=np.uint8), mode, size, alpha


def _labelled_files(
    root: Path, classes: dict[str, int], where: str, subject: str
) -> list[tuple[Path, int]]:
    files: list[tuple[Path, int]] = []
    for name, index in classes.items():
        images = _walk_images(root / name)
        if not images:
            raise InputError(
                f"{where}: class folder {shown(name)} holds no images "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}); add some or remove the folder",
                subject=subject,
            )
        files.extend((image, index) for image in images)
    return files


def _read_pixels(
    root: Path, files: list[Path], where: str, subject: str
) -> tuple[torch.Tensor, int]:
    """uint8 images ``[N, C, H, W]`` (C 1 if every image is gray, else 3) and how many had alpha."""
    pixels: list[np.ndarray] = []
    first: tuple[Path, tuple[int, int]] | None = None
    gray, with_alpha = True, 0
    for file in files:
        rel = shown(file.relative_to(root))
        try:
            array, mode, size, alpha = _read_image(file)
        except _PIL_ERRORS as error:
            raise InputError(
                f"{where}: cannot read image {rel}: {error_line(error)}", subject=subject
            ) from None
        if mode in _PIL_UNSUPPORTED:
            raise InputError(
                f"{where}: image {rel} has mode {mode} (16- or 32-bit); save 8-bit images",
                subject=subject,
            )
        if first is None:
            first = (file, size)
        elif size != first[1]:
            raise InputError(
                f"{where}: images differ in size: {rel} is {size[0]}x{size[1]} but "
                f"{shown(first[0].relative_to(root))} is {first[1][0]}x{first[1][1]}; "
                "resize them to one size",
                subject=subject,
            )
        gray = gray and mode in _PIL_GRAY
        with_alpha += alpha
        pixels.append(array)
    if gray:
        return torch.from_numpy(np.stack(pixels)).unsqueeze(1), with_alpha
    rgb = [p if p.ndim == 3 else np.repeat(p[..., None], 3, axis=2) for p in pixels]
    return torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).contiguous(), with_alpha


def load_image_folder(
    root: Path, subject: str = "data"
) -> tuple[tuple[torch.Tensor, torch.Tensor], str, list[str]]:
    """Images and labels of an image folder, with notes on how they were read.

    Args:
        root: the folder, with one subfolder of images per class (see
            :func:`image_folder_classes` for the labels).
        subject: the input's name in the caller's terms, the subject of every error.

    Returns:
        ``((x, y), name, notes)``: float32 images in ``[0, 1]``, int64 labels, the folder's name
        and notes for the user (the size and channels read, the class labels, dropped alpha).

    """
    where = shown(root)
    classes = image_folder_classes(root, subject)
    files = _labelled_files(root, classes, where, subject)
    pixels, with_alpha = _read_pixels(root, [file for file, _ in files], where, subject)
    y = torch.tensor([index for _, index in files], dtype=torch.int64)
    # Finite pixels and int64 labels by construction; as_tensors only normalises the pair.
    x, y = as_tensors((pixels.float() / 255.0, y), subject)
    channels, height, width = x.shape[1:]
    notes = [
        f"read {len(files)} images in {len(classes)} classes from image folder {where}: "
        f"{channels}-channel {width}x{height}, pixels divided by 255 to [0, 1]",
        _class_note(classes),
    ]
    if with_alpha:
        notes.append(f"dropped the alpha channel of {with_alpha} images")
    return (x, y), root.resolve().name or str(root), notes
