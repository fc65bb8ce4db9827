"""The one registry mechanism: named entries of one kind, added by a decorator.

Attacks, purifiers, training methods, zoo entries and report formats each keep a
:class:`Registry`; the entries register themselves where they are defined::

    METHODS = Registry[type[TrainingMethod]]("training method")

    @METHODS.register("pgd")
    class PGDAdversarialTraining(TrainingMethod): ...

Names are non-empty and lower case, a name is registered once, and an unknown name is a one-line
:class:`~mlsec.errors.InputError` that lists the known ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from mlsec.errors import InputError

__all__ = ["Registry"]

T = TypeVar("T")
E = TypeVar("E")


class Registry(Generic[T]):
    """Entries of one kind by name.

    Example:
        >>> shapes = Registry[int]("shape")
        >>> _ = shapes.register("square")(4)
        >>> shapes.get("SQUARE"), shapes.names()
        (4, ['square'])

    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[E], E]:
        """Decorator that registers its argument under ``name``; a duplicate name is an error."""

        def decorate(entry: E) -> E:
            if not name or name != name.lower():
                raise ValueError(f"{self.kind} names are non-empty and lower case (got {name!r})")
            if name in self._entries:
                raise ValueError(
                    f"{self.kind} name {name!r} is already registered by {self._entries[name]!r}"
                )
            self._entries[name] = entry  # type: ignore[assignment]
            return entry

        return decorate

    def get(self, name: str) -> T:
        """The entry registered under ``name`` (any case)."""
        try:
            return self._entries[name.lower()]
        except KeyError:
            raise InputError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
            ) from None

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` pairs in the order they were registered."""
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
