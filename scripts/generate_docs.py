"""Regenerate the generated blocks of README.md and docs/*.md from the code.

A generated block sits between two markers::

    <!-- generated: mlsec audit --help -->
    ```console
    $ mlsec audit --help
    usage: mlsec audit ...
    ```
    <!-- end generated -->

The marker names what to run. ``mlsec ARGS`` runs the command line in-process (80 columns) and
shows what it prints on stdout and stderr after a ``$ mlsec ARGS`` line; ``python EXPR`` evaluates
``EXPR`` after ``import mlsec`` and shows it as a ``>>>`` session. Several commands or expressions
are separated by `` ;; `` and shown in one block.

Usage::

    python scripts/generate_docs.py            # rewrite the blocks that differ
    python scripts/generate_docs.py --check    # exit 1 and name every block that differs
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlsec
from mlsec.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
BEGIN = re.compile(r"^<!-- generated: (?P<spec>.+?) -->$")
END = "<!-- end generated -->"
SEPARATOR = " ;; "


@dataclass(frozen=True)
class Block:
    """One generated block: where it is, what it runs, what the file holds now."""

    path: Path
    line: int  # 1-based line of the opening marker
    spec: str
    current: str

    @property
    def name(self) -> str:
        """``file:line (spec)``, how ``--check`` names the block."""
        return f"{os.path.relpath(self.path, ROOT)}:{self.line} ({self.spec})"


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md and every page under docs/, in a stable order."""
    return [root / "README.md", *sorted((root / "docs").glob("**/*.md"))]


def find_blocks(path: Path) -> list[Block]:
    """The generated blocks of one file; an unclosed marker is an error."""
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks = []
    start = None
    for number, line in enumerate(lines):
        match = BEGIN.match(line.strip())
        if match and start is None:
            start, spec = number, match["spec"]
        elif line.strip() == END and start is not None:
            current = "\n".join(lines[start + 1 : number])
            blocks.append(Block(path, start + 1, spec, current))
            start = None
    if start is not None:
        raise SystemExit(f"{path}:{start + 1}: generated block without {END}")
    return blocks


def run_cli(argv: Sequence[str]) -> str:
    """What ``mlsec ARGV`` prints (stdout, then stderr) at 80 columns, lines right-stripped."""
    out = io.StringIO()
    redirect = contextlib.redirect_stdout(out), contextlib.redirect_stderr(out)
    with redirect[0], redirect[1], contextlib.suppress(SystemExit):  # SystemExit: argparse
        cli_main(list(argv))
    return "\n".join(line.rstrip() for line in out.getvalue().strip("\n").split("\n"))


def run_python(expression: str) -> str:
    """``>>> EXPRESSION`` and its repr, as a doctest shows it."""
    value = eval(expression, {"mlsec": mlsec})  # a marker in our own docs, never user input
    return f">>> {expression}\n{value!r}"


def render(spec: str) -> str:
    """The text a block with this marker must hold."""
    os.environ["COLUMNS"] = "80"
    parts = spec.split(SEPARATOR)
    if all(part.startswith("mlsec ") for part in parts):
        body = "\n".join(f"$ {part}\n{run_cli(shlex.split(part)[1:])}" for part in parts)
        return f"```console\n{body}\n```"
    if all(part.startswith("python ") for part in parts):
        body = "\n".join(run_python(part.removeprefix("python ")) for part in parts)
        return f"```python\n>>> import mlsec\n{body}\n```"
    raise SystemExit(f"cannot generate {spec!r}: parts must all start with 'mlsec ' or 'python '")


def regenerate(files: Sequence[Path], *, write: bool) -> list[str]:
    """Compare (and with ``write``, rewrite) every generated block; returns the differing ones."""
    stale = []
    for path in files:
        blocks = find_blocks(path)
        changed = False
        lines = path.read_text(encoding="utf-8").split("\n")
        for block in reversed(blocks):  # from the end, so earlier line numbers stay valid
            fresh = render(block.spec)
            if fresh != block.current:
                stale.append(block.name)
                changed = True
                length = len(block.current.split("\n")) if block.current else 0
                lines[block.line : block.line + length] = fresh.split("\n")
        if write and changed:
            path.write_text("\n".join(lines), encoding="utf-8")
    return sorted(stale)


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite the generated blocks, or with ``--check`` report the stale ones."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    stale = regenerate(doc_files(), write=not args.check)
    for name in stale:
        print(f"{'stale' if args.check else 'regenerated'}: {name}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
