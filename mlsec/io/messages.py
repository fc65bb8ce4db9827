"""How io's messages show names and files, and how they name the caller's other inputs.

A message raised by io names the input at fault as an :class:`~mlsec.errors.InputError` subject
in the library's terms (``"model"``, ``"data"``, ``"arch"``); the command line shows its own flag
instead. A message that tells the user to give *another* input (``trust_pickle=True``, an
``arch``) takes that input's name from a :class:`Terms` the caller passes, so a Python caller
reads ``pass trust_pickle=True`` and the command line reads ``pass --trust-pickle``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["LIBRARY_TERMS", "PICKLE_WARNING", "Terms", "few", "shown"]

# The note whenever a pickled model was loaded. The CLI compares notes with it and prints it as a
# warning. It names the flag, as the command line prints it (kept byte-identical).
PICKLE_WARNING = "loaded a pickled model with --trust-pickle: this executed code from the file"


@dataclass(frozen=True)
class Terms:
    """How the caller spells the inputs that io's messages tell a user to give.

    Example:
        >>> Terms().trust_pickle, Terms(trust_pickle="--trust-pickle").trust_pickle
        ('trust_pickle=True', '--trust-pickle')

    """

    arch: str = "arch"
    trust_pickle: str = "trust_pickle=True"
    defense: str = "defense"


LIBRARY_TERMS = Terms()


def shown(text: object) -> str:
    r"""``text`` as is when printable, else its repr: a file name cannot break the one-line rule.

    Example:
        >>> shown("cnn.pt"), shown("a\nb.pt")
        ('cnn.pt', "'a\\nb.pt'")

    """
    text = str(text)
    return text if text.isprintable() else repr(text)


def few(names: Iterable[str], limit: int = 3) -> str:
    """The first ``limit`` of ``names`` in sorted order, each shown, then ``...`` if more.

    Example:
        >>> few(["c", "a", "d", "b"])
        'a, b, c, ...'

    """
    items = sorted(names)
    listed = ", ".join(shown(name) for name in items[:limit])
    return listed + (", ..." if len(items) > limit else "")
