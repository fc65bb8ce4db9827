"""Helpers shared by the ``mlsec`` subcommands: the parser, argument types, devices, notes."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from mlsec.cli.exits import EXIT_USAGE
from mlsec.core.distributed import launched, start
from mlsec.core.text import printable
from mlsec.errors import InputError
from mlsec.io import CLASS_MAP_NOTE, PICKLE_WARNING

__all__ = [
    "Parser",
    "check_writable",
    "device_from",
    "float_list",
    "positive_int",
    "print_notes",
    "printable",
    "proper_fraction",
]


class Parser(argparse.ArgumentParser):
    """argparse that reports errors in the house style: one line, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print ``message`` in one line and exit with the usage code."""
        print(f"mlsec: {printable(message)} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def float_list(text: str) -> list[float]:
    """Comma-separated numbers, at least one (``--bounds LO,HI``)."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def proper_fraction(text: str) -> float:
    """A number in ``[0, 1)``, such as the share of the data held out."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {value:g}")
    return value


def positive_int(text: str) -> int:
    """An integer ``>= 1`` (steps, batch sizes, sample counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def device_from(name: str) -> torch.device:
    """The device ``--device`` names; ``auto`` is CUDA when there is one.

    Launched by ``torchrun``, this also joins the job (:func:`mlsec.core.distributed.start`):
    ``auto`` and ``cuda`` then mean this rank's own GPU, from ``LOCAL_RANK``.
    """
    if launched():
        if name not in ("auto", "cpu", "cuda"):
            raise InputError(
                f"--device {name}: under torchrun each rank takes its own GPU; use --device "
                "auto, cuda or cpu"
            )
        return start(name)[1]
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(
            f"--device: unknown device {name!r}; use cpu, cuda, cuda:N or auto"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available; use --device cpu")
    return device


def check_writable(option: str, path: Path, *, create_folders: bool = False) -> None:
    """Refuse, in one line, a report path that cannot be written, before any work is done.

    A link counts as the file it points to (reports are written through links), so a dangling
    link is fine when its target's folder exists.

    Args:
        option: the option that named the path, for the message.
        path: the file to be written.
        create_folders: its missing folders will be created; the nearest existing one must then
            be a writable folder.

    Raises:
        InputError: the path is a folder, a link loop or not a regular file, or its folder is
            missing (without ``create_folders``) or not writable.

    """
    shown = printable(path)
    if path.is_dir():
        raise InputError(f"{option}: {shown} is a folder; give a file path such as {shown}/report")
    try:
        target = Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:
        target = Path(os.path.realpath(path))  # a new file, or a link to one
    except OSError as error:  # a loop of links, a path through a file, ...
        raise InputError(f"{option}: cannot write {shown}: {error.strerror}") from None
    via = f" (where the link {shown} points)" if path.is_symlink() else ""
    if target.exists() and not target.is_file():
        raise InputError(f"{option}: {printable(target)}{via} is not a regular file")
    folder = target.parent
    if create_folders and not path.is_symlink():  # a link's target folder is not created
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
    if not folder.exists():
        raise InputError(f"{option}: folder {printable(folder)}{via} does not exist")
    if not folder.is_dir():
        raise InputError(f"{option}: {printable(folder)} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{option}: folder {printable(folder)} is not writable")


def print_notes(console: Console, notes: list[str], *, quiet: bool) -> None:
    """The loaders' notes, one line each: warnings and class mappings always, the rest unless quiet.

    A pickle that ran is a warning; a class mapping decides what "correct" means, so ``-q`` does
    not hide it. Names in the notes are shown with control characters escaped.
    """
    for note in notes:
        shown = escape(printable(note))
        # soft_wrap: one note, one line, whatever the width (CI logs are grepped)
        if note == PICKLE_WARNING:
            console.print(f"[bold yellow]warning:[/] {shown}", highlight=False, soft_wrap=True)
        elif not quiet or note.startswith(CLASS_MAP_NOTE):
            console.print(f"[dim]note:[/] {shown}", highlight=False, soft_wrap=True)
