"""Image folders: one subfolder per class, read lazily by Pillow into float32 images, int64 labels.

Pillow identifies a file by its content, not its name; it is limited to plain raster formats here,
so a file named ``.png`` that is really PostScript never reaches Ghostscript.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mlsec.core.data import Samples
from mlsec.core.text import error_line
from mlsec.errors import InputError
from mlsec.io.messages import shown

__all__ = [
    "CLASS_MAP_NOTE",
    "IMAGE_SUFFIXES",
    "ImageFolderSamples",
    "ImageSize",
    "crop_box",
    "image_folder_classes",
    "load_image_folder",
    "resized_size",
]

# An image size a user names: an int (a square, or for a resize the shorter side) or (H, W).
ImageSize = int | tuple[int, int]

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


@dataclass(frozen=True)
class _Header:
    """What an image file's header says: its mode, (width, height) and whether it has alpha."""

    mode: str
    size: tuple[int, int]
    alpha: bool


def _read_header(path: Path) -> _Header:
    """The header of the image at ``path``; its pixels are not decoded.

    Raises the reader's own errors; the caller names the file.
    """
    with Image.open(path, formats=_PIL_FORMATS) as image:
        alpha = "A" in image.getbands() or "transparency" in image.info
        return _Header(image.mode, image.size, alpha)


def resized_size(size: tuple[int, int], resize: ImageSize | None) -> tuple[int, int]:
    """(width, height) of an image of ``size`` after ``resize``, as torchvision computes it.

    An int is the shorter side (the longer keeps the aspect ratio, rounded down); ``(H, W)`` is
    the size itself.

    Example:
        >>> resized_size((200, 100), 64), resized_size((200, 100), (32, 48))
        ((128, 64), (48, 32))

    """
    if resize is None:
        return size
    if isinstance(resize, tuple):
        return resize[1], resize[0]
    width, height = size
    if width <= height:
        return resize, int(resize * height / width)
    return int(resize * width / height), resize


def crop_box(size: tuple[int, int], crop: tuple[int, int]) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of a centred ``(H, W)`` crop of a (width, height) image.

    Example:
        >>> crop_box((10, 7), (4, 4))
        (3, 2, 7, 6)

    """
    (width, height), (crop_h, crop_w) = size, crop
    top, left = round((height - crop_h) / 2.0), round((width - crop_w) / 2.0)
    return left, top, left + crop_w, top + crop_h


def _square(size: ImageSize | None) -> tuple[int, int] | None:
    return (size, size) if isinstance(size, int) else size


class ImageFolderSamples(Samples):
    """The images of a folder, each decoded (and resized, cropped) by Pillow when asked for.

    The file list, the labels and every file's header are read up front, so an unreadable
    format or a size that does not fit is refused before any work starts; pixels are decoded
    on :meth:`get`.
    """

    def __init__(
        self,
        root: Path,
        files: list[Path],
        y: torch.Tensor,
        *,
        gray: bool,
        resize: ImageSize | None = None,
        center_crop: tuple[int, int] | None = None,
        subject: str = "data",
    ) -> None:
        self.root, self.files, self.y, self.subject = root, files, y, subject
        self.mode = "L" if gray else "RGB"
        self.resize, self.center_crop = resize, center_crop

    def __len__(self) -> int:
        return len(self.files)

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images at ``indices``, float32 in [0, 1], ``[k, C, H, W]``, and their labels."""
        order = [int(i) for i in indices]
        first = self._decode(order[0])
        pixels = np.empty((len(order), *first.shape), np.uint8)  # one buffer: no stacked copy
        pixels[0] = first
        for row, i in enumerate(order[1:], start=1):
            image = self._decode(i)
            if image.shape != first.shape:  # the file changed since its header was read
                raise InputError(
                    f"{shown(self.root)}: image {shown(self.files[i].relative_to(self.root))} "
                    f"changed size since the folder was scanned",
                    subject=self.subject,
                )
            pixels[row] = image
        raw = torch.from_numpy(pixels)
        raw = raw.unsqueeze(1) if self.mode == "L" else raw.permute(0, 3, 1, 2)
        x = torch.empty(raw.shape, dtype=torch.float32).copy_(raw).div_(255.0)
        return x, self.y[torch.as_tensor(order, dtype=torch.long)]

    def _decode(self, i: int) -> np.ndarray:
        file = self.files[i]
        where, rel = shown(self.root), shown(file.relative_to(self.root))
        try:
            with Image.open(file, formats=_PIL_FORMATS) as image:
                image.load()
                if image.mode in _PIL_UNSUPPORTED:
                    raise InputError(
                        f"{where}: image {rel} has mode {image.mode} (16- or 32-bit); "
                        "save 8-bit images",
                        subject=self.subject,
                    )
                picture = image.convert(self.mode)
            if self.resize is not None:
                size = resized_size(picture.size, self.resize)
                picture = picture.resize(size, Image.Resampling.BILINEAR)
            if self.center_crop is not None:
                picture = picture.crop(crop_box(picture.size, self.center_crop))
            return np.asarray(picture, dtype=np.uint8)
        except _PIL_ERRORS as error:
            raise InputError(
                f"{where}: cannot read image {rel}: {error_line(error)}", subject=self.subject
            ) from None


def _scan_headers(
    root: Path,
    files: list[Path],
    sizing: tuple[ImageSize | None, tuple[int, int] | None],
    subject: str,
) -> tuple[tuple[int, int], bool, int]:
    """Every file's header checked: the images' final (width, height), all gray?, alpha count."""
    where, (resize, crop) = shown(root), sizing
    first: tuple[Path, tuple[int, int]] | None = None
    gray, with_alpha = True, 0
    for file in files:
        rel = shown(file.relative_to(root))
        try:
            header = _read_header(file)
        except _PIL_ERRORS as error:
            raise InputError(
                f"{where}: cannot read image {rel}: {error_line(error)}", subject=subject
            ) from None
        if header.mode in _PIL_UNSUPPORTED:
            raise InputError(
                f"{where}: image {rel} has mode {header.mode} (16- or 32-bit); save 8-bit images",
                subject=subject,
            )
        size = resized_size(header.size, resize)
        if crop is not None:
            if crop[0] > size[1] or crop[1] > size[0]:
                raise InputError(
                    f"{where}: image {rel} is {size[0]}x{size[1]} (width x height)"
                    f"{' after resizing' if resize is not None else ''}, smaller than the "
                    f"center crop of height {crop[0]} and width {crop[1]}; give a smaller crop "
                    "or a larger resize",
                    subject=subject,
                )
            size = (crop[1], crop[0])
        if first is None:
            first = (file, size)
        elif size != first[1]:
            fix = "give a center crop too" if resize is not None else "resize them to one size"
            raise InputError(
                f"{where}: images differ in size{' after resizing' if resize is not None else ''}"
                f": {rel} is {size[0]}x{size[1]} but {shown(first[0].relative_to(root))} is "
                f"{first[1][0]}x{first[1][1]}; {fix}",
                subject=subject,
            )
        gray = gray and header.mode in _PIL_GRAY
        with_alpha += header.alpha
    assert first is not None  # every class folder holds an image
    return first[1], gray, with_alpha


def _sizing_note(resize: ImageSize | None, crop: tuple[int, int] | None) -> str | None:
    steps = []
    if isinstance(resize, int):
        steps.append(f"resized (bilinear) so the shorter side is {resize}")
    elif resize is not None:
        steps.append(f"resized (bilinear) to {resize[1]}x{resize[0]} (width x height)")
    if crop is not None:
        steps.append(f"center-cropped to {crop[1]}x{crop[0]} (width x height)")
    return f"each image {', then '.join(steps)}" if steps else None


def load_image_folder(
    root: Path,
    subject: str = "data",
    *,
    resize: ImageSize | None = None,
    center_crop: ImageSize | None = None,
) -> tuple[ImageFolderSamples, str, list[str]]:
    """The images and labels of an image folder, read lazily, with notes on how they are read.

    Args:
        root: the folder, with one subfolder of images per class (see
            :func:`image_folder_classes` for the labels).
        subject: the input's name in the caller's terms, the subject of every error.
        resize: resize each image first (bilinear): an int is its shorter side, ``(H, W)`` its
            size. Without it (or a crop) every image must have one size.
        center_crop: then crop each image's centre to ``(H, W)`` (an int: a square).

    Returns:
        ``(samples, name, notes)``: the images as float32 in ``[0, 1]`` with int64 labels, read
        on demand, the folder's name and notes for the user (the size and channels read, the
        class labels, dropped alpha).

    """
    where = shown(root)
    classes = image_folder_classes(root, subject)
    files = _labelled_files(root, classes, where, subject)
    crop = _square(center_crop)
    paths = [file for file, _ in files]
    (width, height), gray, with_alpha = _scan_headers(root, paths, (resize, crop), subject)
    y = torch.tensor([index for _, index in files], dtype=torch.int64)
    samples = ImageFolderSamples(
        root, paths, y, gray=gray, resize=resize, center_crop=crop, subject=subject
    )
    notes = [
        f"read {len(files)} images in {len(classes)} classes from image folder {where}: "
        f"{1 if gray else 3}-channel {width}x{height}, pixels divided by 255 to [0, 1]",
        _class_note(classes),
    ]
    sizing = _sizing_note(resize, crop)
    if sizing:
        notes.append(sizing)
    if with_alpha:
        notes.append(f"dropped the alpha channel of {with_alpha} images")
    return samples, root.resolve().name or str(root), notes
