"""A griffe extension for the API reference: docstrings written for the source, read as Markdown.

mlsec's docstrings head their doctests ``Example:`` (the style guide's spelling). Griffe's Google
parser knows only the plural ``Examples:`` as a section of code; the singular becomes an admonition
whose ``>>>`` lines Markdown reads as nested block quotes. They also name other objects with Sphinx
roles (``:class:`~mlsec.errors.InputError```), which Markdown would print verbatim. This extension
rewrites both in the docstring text griffe reads, for the site only: the source stays as it is.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(r"^Example:[ \t]*$", re.MULTILINE)
# A Sphinx role: ``:class:`x```, with ``~`` asking for the last dotted part only.
_ROLE = re.compile(r":(?:meth|class|func|mod|attr|data|exc|obj):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    """The role's target as inline code: its last dotted part after ``~``, else all of it."""
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def markdown(docstring: str) -> str:
    r"""``docstring`` with ``Example:`` headings made ``Examples:`` and Sphinx roles made code.

    Args:
        docstring: a docstring's text, as griffe holds it (dedented).

    Returns:
        The text the site renders.

    Example:
        >>> markdown("Raise :class:`~mlsec.errors.InputError` from :func:`mlsec.audit`.")
        'Raise `InputError` from `mlsec.audit`.'
        >>> markdown("Example:\n    x = 1")
        'Examples:\n    x = 1'

    """
    return _ROLE.sub(_code, _SINGULAR.sub("Examples:", docstring))


class ExampleSections(griffe.Extension):
    """Rewrite each docstring with :func:`markdown` as griffe loads it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring; objects without a docstring are left alone."""
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
