"""Text shown to people: names from files and users made safe for a terminal line."""

from __future__ import annotations

__all__ = ["printable"]


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
