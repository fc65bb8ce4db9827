"""The attack registry: attacks by name, for the CLI, suites and the tests' parametrisation.

Built on :class:`mlsec.core.registry.Registry`, the one registry mechanism of the package.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from mlsec.attacks.base import Attack
from mlsec.core.registry import Registry
from mlsec.errors import InputError

__all__ = ["ATTACKS", "create", "get", "list_attacks", "open_params", "register_attack"]

ATTACKS = Registry[type[Attack]]("attack")
A = TypeVar("A", bound=type[Attack])


def register_attack(name: str) -> Callable[[A], A]:
    """Class decorator that registers an attack under ``name``; a duplicate name is an error."""
    add = ATTACKS.register(name)

    def decorate(cls: A) -> A:
        add(cls)
        cls.name = name
        return cls

    return decorate


def list_attacks() -> list[str]:
    """Registered attack names, sorted.

    Example:
        >>> {"fgsm", "pgd"} <= set(list_attacks())
        True

    """
    return ATTACKS.names()


def get(name: str) -> type[Attack]:
    """The attack class registered under ``name`` (any case)."""
    return ATTACKS.get(name)


def open_params(cls: type[Attack]) -> bool:
    """Whether ``cls`` takes parameters beyond its dataclass fields and validates them itself.

    An attack opts in with the class attribute ``open_params = True`` (the ART attacks do: their
    extra parameters are the ART attack's own options).
    """
    return cls.open_params


def create(name: str, **params: Any) -> Attack:
    """Build a registered attack from its name and hyperparameters.

    Example:
        >>> attack = create("pgd", eps=0.3, steps=40)
        >>> attack.steps, attack.eps, attack.norm
        (40, 0.3, 'linf')

    """
    cls = get(name)
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown and not open_params(cls):
        raise InputError(
            f"attack {name!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters: {', '.join(sorted(known))}"
        )
    if "eps" not in params:
        raise InputError(f"attack {name!r} needs eps")
    try:
        return cls(**params)
    except TypeError as error:
        raise InputError(f"attack {name!r}: {error}") from None
