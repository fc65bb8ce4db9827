"""Where ``mlsec audit`` writes its reports: the paths the options name, checked before any work.

``--json``/``--markdown``/``--html``/``--junit`` name one file each; ``--out DIR`` names all four
(and ``suite.toml``) inside DIR. When several models are audited each gets its own files:
``DIR/NAME/report.json`` or ``PATH.NAME.json``. Every report is written with the resolved suite
beside it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from mlsec.auditing.suite import Suite
from mlsec.cli.common import check_writable
from mlsec.core.files import write_atomic
from mlsec.core.text import printable
from mlsec.errors import InputError

__all__ = [
    "OUT_NAMES",
    "Renderable",
    "add_report_options",
    "check_out",
    "check_report_files",
    "checked_paths",
    "report_files",
    "report_paths",
    "write_reports",
]

# The file of each report kind inside ``--out DIR``.
OUT_NAMES = {
    "json": "report.json",
    "markdown": "report.md",
    "html": "report.html",
    "junit": "report.junit.xml",
}


def report_paths(named: Mapping[str, Path | None], out: Path | None) -> dict[str, Path]:
    """The report of each kind to write: the explicit paths, then ``out``'s for the others.

    Args:
        named: the path given for each kind (``json``, ``markdown``, ``html``, ``junit``), or
            ``None``.
        out: the ``--out`` folder, checked here (before any work) when given.

    """
    paths = {kind: path for kind, path in named.items() if path is not None}
    if out is not None:
        check_out(out)
        for kind, name in OUT_NAMES.items():
            paths.setdefault(kind, out / name)
    return paths


def check_out(out: Path) -> None:
    """Refuse, before any work, an ``--out`` folder that cannot be created or written."""
    shown = printable(out)
    if out.is_symlink() and not out.exists():
        raise InputError(f"--out: {shown} is a link that leads to no folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {shown} exists and is not a folder")
    parent = Path(os.path.realpath(out)).parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"--out: {printable(parent)} is not a folder")
    if not parent.is_dir():
        raise InputError(f"--out: folder {printable(parent)} does not exist")
    folder = out if out.is_dir() else parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"--out: folder {printable(folder)} is not writable")


def _per_model(paths: dict[str, Path], out: Path | None, name: str) -> dict[str, Path]:
    """Report paths of one model when several are audited: DIR/NAME/... or PATH.NAME.suffix."""
    per: dict[str, Path] = {}
    for kind, path in paths.items():
        if out is not None and path.parent == out:
            per[kind] = out / name / path.name
        else:
            per[kind] = path.with_name(f"{path.stem}.{name}{path.suffix}")
    return per


def report_files(
    paths: dict[str, Path], out: Path | None, name: str, *, several: bool, suite: bool = True
) -> dict[str, Path]:
    """Every file written for one model: its reports, and ``suite`` (the suite) if asked."""
    files = _per_model(paths, out, name) if several else dict(paths)
    if files and suite:
        first = next(iter(files.values()))
        files["suite"] = out / "suite.toml" if out is not None else first.with_suffix(".suite.toml")
    return files


def check_report_files(files: dict[str, Path], out: Path | None) -> None:
    """Refuse, before any attack runs, a report file that cannot be written."""
    for kind, path in files.items():
        inside = out is not None and out in path.parents
        named = next(iter(files)) if kind == "suite" else kind
        check_writable("--out" if inside else f"--{named}", path, create_folders=inside)


class Renderable(Protocol):
    """What :func:`write_reports` needs of a report: its renderers."""

    def to_json(self) -> str: ...  # noqa: D102

    def to_markdown(self) -> str: ...  # noqa: D102

    def to_html(self) -> str: ...  # noqa: D102

    def to_junit(self) -> str: ...  # noqa: D102


def write_reports(report: Renderable, files: dict[str, Path], plan: Suite | None) -> list[Path]:
    """Write one model's reports and the resolved suite, if any (see :func:`report_files`).

    Returns:
        The paths written, in order.

    """
    writers: dict[str, Callable[[], str]] = {
        "json": lambda: report.to_json() + "\n",
        "markdown": report.to_markdown,
        "html": report.to_html,
        "junit": report.to_junit,
    }
    if plan is not None:
        writers["suite"] = plan.to_toml
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, path in files.items():
        write_atomic(path, writers[kind]())
        written.append(path)
    return written


def add_report_options(group: Any, *, suite: bool = True) -> None:
    """``--json``, ``--markdown``, ``--html``, ``--junit``, ``--out`` and the console options."""
    group.add_argument("--json", type=Path, default=None, metavar="PATH", help="JSON report")
    group.add_argument(
        "--markdown", type=Path, default=None, metavar="PATH", help="Markdown summary"
    )
    group.add_argument("--html", type=Path, default=None, metavar="PATH", help="HTML report")
    group.add_argument("--junit", type=Path, default=None, metavar="PATH", help="JUnit XML")
    also = " and suite.toml" if suite else ""
    group.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"write report.json, report.md, report.html, report.junit.xml{also} to DIR",
    )
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bars or table")
    group.add_argument("--no-color", action="store_true", help="plain text output")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


def checked_paths(args: argparse.Namespace) -> dict[str, Path]:
    """The report paths the options name, each checked before any work."""
    named = {"json": args.json, "markdown": args.markdown, "html": args.html, "junit": args.junit}
    paths = report_paths(named, args.out)
    for kind, path in paths.items():
        if args.out is None or path.parent != args.out:
            check_writable(f"--{kind}", path)
    return paths
