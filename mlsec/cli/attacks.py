"""``mlsec attacks``: the registered attacks and their parameters, as a table."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from rich.console import Console
from rich.table import Table

from mlsec import attacks as attack_registry
from mlsec.attacks import Attack

__all__ = ["add_parser", "attack_table", "run"]


def add_parser(sub: Any) -> None:
    """Add the ``attacks`` subcommand to the ``mlsec`` parser."""
    sub.add_parser("attacks", help="list the registered attacks")


def _parameters(cls: type[Attack]) -> str:
    """The parameters of an attack class; an ART bridge names ART's options instead."""
    names = [field.name for field in dataclasses.fields(cls)]
    if cls.open_params:  # the ART attacks: their own options instead of the stored tuple
        fixed = getattr(cls, "art_class", "")
        names = [n for n in names if n != "options" and not (fixed and n == "attack")]
        names.append(f"+ the options of ART's {fixed or 'attack'}")
    return ", ".join(names)


def attack_table() -> Table:
    """One row per registered attack: its name, class and parameters."""
    table = Table(title="Registered attacks")
    table.add_column("name", style="bold")
    table.add_column("class")
    table.add_column("parameters")
    for name in attack_registry.list_attacks():
        cls = attack_registry.get(name)
        table.add_row(name, cls.__name__, _parameters(cls))
    return table


def run(args: argparse.Namespace) -> int:
    """Run ``mlsec attacks``; returns the exit code."""
    del args  # the command has no options
    Console().print(attack_table())
    return 0
