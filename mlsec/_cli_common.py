"""Helpers shared by the ``mlsec`` subcommands: argument types, devices, the accuracy table."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from rich.markup import escape
from rich.table import Table

from mlsec.errors import InputError
from mlsec.report import AuditReport

__all__ = [
    "Parser",
    "check_writable",
    "colour",
    "device_from",
    "float_list",
    "percent",
    "positive_int",
    "robust_cell",
    "robust_table",
]


class Parser(argparse.ArgumentParser):
    """argparse that reports errors in the house style: one line, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"mlsec: {message} (see {self.prog} --help)", file=sys.stderr)
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


def check_writable(option: str, path: Path) -> None:
    if path.is_dir():
        raise InputError(f"{option}: {path} is a folder; give a file path such as {path}/report")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise InputError(f"{option}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{option}: folder {parent} is not writable")


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
        title=f"Robust accuracy of {escape(report.model)} on {escape(report.data)} "
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
