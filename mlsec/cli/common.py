"""Helpers shared by the ``mlsec`` subcommands: argument types, devices, the accuracy table."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mlsec.auditing.report import AuditReport
from mlsec.core.text import printable
from mlsec.errors import InputError
from mlsec.io.loading import CLASS_MAP_NOTE, PICKLE_WARNING

__all__ = [
    "Parser",
    "check_writable",
    "colour",
    "device_from",
    "float_list",
    "percent",
    "positive_int",
    "print_notes",
    "printable",
    "robust_cell",
    "robust_table",
]


class Parser(argparse.ArgumentParser):
    """argparse that reports errors in the house style: one line, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"mlsec: {printable(message)} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def float_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def device_from(name: str) -> torch.device:
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


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def colour(value: float, clean: float) -> str:
    ratio = value / clean if clean > 0 else 0.0
    return "green" if ratio >= 0.8 else "yellow" if ratio >= 0.4 else "red"


def robust_cell(report: AuditReport, attack: str, eps: float) -> str:
    """The coloured robust accuracy after ``attack`` at ``eps``, or a dash where it did not run."""
    try:
        acc = report.robust_accuracy(attack, eps)
    except KeyError:
        return "—"
    return f"[{colour(acc, report.clean_accuracy)}]{percent(acc)}"


def robust_table(report: AuditReport) -> Table:
    table = Table(
        title=f"Robust accuracy of {escape(printable(report.model))} on "
        f"{escape(printable(report.data))} "
        f"({report.n} samples, {report.norm})",
        caption=f"clean accuracy {percent(report.clean_accuracy)}; each row counts the samples "
        "standing after that attack and those above it",
    )
    table.add_column("attack", style="bold")
    for eps in report.eps:
        table.add_column(f"eps {eps:g}", justify="right")
    table.add_column("time", justify="right")
    for name in report.attacks:
        cells = [robust_cell(report, name, eps) for eps in report.eps]
        table.add_row(escape(name), *cells, f"{report.seconds(name):.1f} s")
    table.add_section()
    worst = [
        f"[{colour(acc, report.clean_accuracy)}]{percent(acc)}"
        for acc in (report.worst_case[eps] for eps in report.eps)
    ]
    table.add_row("worst case", *worst, f"{sum(report.seconds(a) for a in report.attacks):.1f} s")
    return table
