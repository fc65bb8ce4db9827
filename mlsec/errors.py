"""Errors that mean "the user gave us something we cannot use".

The CLI turns an :class:`InputError` into a one-line message and exit code 2; anything else is a
bug in mlsec and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: wrong shapes, labels out of range, a module that does not import, ...

    The message says what was wrong and how to fix it, in one line.
    """
