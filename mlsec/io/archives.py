"""Inspecting PyTorch archives entry by entry before any PyTorch loader sees them.

TorchScript archives and ``torch.save`` zips are held to allow-lists of their entries; their
pickles are read by PyTorch's restricted unpicklers. Every archive must read alike in Python's
``zipfile`` and in PyTorch's own zip reader, with no entry twice and none outside its top folder.
``torch.export`` archives get a closer look (:mod:`mlsec.io.export_checks`), built on the helpers
here.

Every refusal is an :class:`InputError` with one line naming the file and the entry; its
``subject`` is the caller's name for the input (``"model"`` by default).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from mlsec.core.text import error_line
from mlsec.errors import InputError
from mlsec.io.messages import LIBRARY_TERMS, Terms, shown

__all__ = [
    "archive_entries",
    "archive_names",
    "check_torch_zip",
    "check_torchscript_archive",
    "export_layout",
    "refuse_unknown",
    "torch_reader",
]

_TORCHSCRIPT_ENTRIES = re.compile(
    r"data\.pkl|constants\.pkl|version|\.data/version|\.data/serialization_id|byteorder"
    r"|\.format_version|\.storage_alignment|data/\d+|constants/\d+"
    r"|code/(?:[A-Za-z0-9_]+/)*[A-Za-z0-9_]+\.py(?:\.debug_pkl)?|extra/[A-Za-z0-9_.-]+"
)
_TORCH_SAVE_ENTRIES = re.compile(
    r"data\.pkl|version|\.data/version|\.data/serialization_id|byteorder"
    r"|\.format_version|\.storage_alignment|data/\d+"
)
# The older torch.export layout (PyTorch < 2.7): its top-level entries are pickles.
_LEGACY_EXPORT = frozenset(
    {"serialized_exported_program.json", "serialized_state_dict.pt", "serialized_constants.pt"}
)


def archive_entries(path: Path, subject: str) -> tuple[str, list[str]]:
    """The archive's top folder and its entries below it, as Python's zipfile reads them."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise InputError(
            f"cannot read {shown(path)} as a zip archive: {error}", subject=subject
        ) from None
    names = [info.filename for info in infos]
    if not names:
        raise InputError(f"{shown(path)} is an empty zip archive", subject=subject)
    top = names[0].partition("/")[0]
    inner = []
    for name in names:
        folder, slash, rest = name.partition("/")
        if folder != top or not slash or not rest or "\\" in name or "\x00" in name:
            raise InputError(
                f"{shown(path)} has an entry outside its top folder "
                f"({shown(name)}); PyTorch archives keep every entry in one folder",
                subject=subject,
            )
        inner.append(rest)
    duplicates = sorted({name for name in inner if inner.count(name) > 1})
    if duplicates:
        raise InputError(
            f"{shown(path)} holds the entry {shown(duplicates[0])} twice; "
            "readers disagree on which one counts, so mlsec refuses it",
            subject=subject,
        )
    return top, inner


def archive_names(path: Path, subject: str = "model") -> set[str]:
    """The names inside a PyTorch zip archive, without the archive's top-level folder.

    Raises:
        InputError: the file is no readable zip archive.

    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise InputError(
            f"cannot read {shown(path)}: {error_line(error)}", subject=subject
        ) from None
    return {name.partition("/")[2] for name in names}


def torch_reader(path: Path, subject: str, inner: list[str]) -> Any:
    """PyTorch's own zip reader on ``path``; it must list exactly the entries zipfile lists."""
    try:
        reader = torch._C.PyTorchFileReader(str(path))
        records = set(reader.get_all_records())
    except (RuntimeError, OSError, ValueError) as error:
        message = " ".join(str(error).split())[:200]
        raise InputError(f"cannot read {shown(path)}: {message}", subject=subject) from None
    if records != set(inner):
        odd = sorted(records ^ set(inner))
        raise InputError(
            f"{shown(path)} reads differently in PyTorch's zip reader and in "
            f"Python's (entry {shown(odd[0])}); refusing an ambiguous archive",
            subject=subject,
        )
    return reader


def refuse_unknown(
    path: Path, inner: list[str], allowed: re.Pattern[str], subject: str, terms: Terms
) -> None:
    """Refuse the archive if an entry is not one that ``allowed`` matches."""
    for name in inner:
        if not allowed.fullmatch(name):
            raise InputError(
                f"{shown(path)} holds an entry that no honest export has "
                f"({shown(name)}); mlsec loads it only with {terms.trust_pickle}, which runs "
                "code from the file",
                subject=subject,
            )


def export_layout(path: Path) -> str | None:
    """``"pt2"`` for a torch.export archive, ``"legacy"`` for its older layout, else None."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    inner = {name.partition("/")[2] for name in names} | set(names)
    if "archive_format" in inner:
        return "pt2"
    if inner & _LEGACY_EXPORT:
        return "legacy"
    return None


def check_torchscript_archive(
    path: Path, subject: str = "model", terms: Terms = LIBRARY_TERMS
) -> None:
    """Refuse a TorchScript archive with entries that ``torch.jit.save`` does not write."""
    _, inner = archive_entries(path, subject)
    refuse_unknown(path, inner, _TORCHSCRIPT_ENTRIES, subject, terms)
    torch_reader(path, subject, inner)


def check_torch_zip(path: Path, subject: str = "model", terms: Terms = LIBRARY_TERMS) -> None:
    """Refuse a ``torch.save`` zip with entries that ``torch.save`` does not write."""
    _, inner = archive_entries(path, subject)
    refuse_unknown(path, inner, _TORCH_SAVE_ENTRIES, subject, terms)
    torch_reader(path, subject, inner)
