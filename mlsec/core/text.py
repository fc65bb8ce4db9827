"""Text shown to people: names from files and users made safe for a terminal line."""

from __future__ import annotations

import re

__all__ = ["error_line", "percent", "printable", "raised_by"]


def printable(text: object) -> str:
    r"""``text`` with each unprintable character written as its escape, e.g. ``\x1b``.

    File and model names may hold terminal escape sequences; this keeps them from reaching the
    terminal raw (and a name from breaking a one-line message).

    Example:
        >>> printable("report\x1b[31m.json")
        'report\\x1b[31m.json'

    """
    shown = str(text)
    if shown.isprintable():
        return shown
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def error_line(error: BaseException) -> str:
    """The first line of an exception's message, cleaned for a one-line error."""
    text = _ANSI.sub("", str(error)).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    first = " ".join(first.split())
    first = "".join(c if c.isprintable() else repr(c)[1:-1] for c in first)
    return first if len(first) <= 200 else first[:197] + "..."


def raised_by(error: BaseException) -> str:
    """``Type: message`` of an exception raised by user code, on one line."""
    if isinstance(error, SystemExit):
        return f"SystemExit (it called sys.exit({error.code!r}))"
    return f"{type(error).__name__}: {error_line(error)}"


def percent(fraction: float, decimals: int = 1) -> str:
    """A fraction as a percentage, for tables and messages.

    Args:
        fraction: a value such as an accuracy, ``1.0`` meaning all.
        decimals: digits after the decimal point (the terminal tables use 1, Markdown 2).

    Example:
        >>> percent(0.466), percent(1 / 3, decimals=2), percent(1.0)
        ('46.6%', '33.33%', '100.0%')

    """
    return f"{100 * fraction:.{decimals}f}%"
