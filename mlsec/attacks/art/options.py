"""The ART options of an :class:`~mlsec.attacks.art.ARTAttack`: stored frozen, checked by ART."""

from __future__ import annotations

import functools
from typing import Any

from mlsec.attacks.art.catalog import art_class_named, init_parameters, stub_classifier
from mlsec.core.threat import Norm, geometry
from mlsec.errors import InputError

__all__ = [
    "MLSEC_FIELDS",
    "SET_BY_MLSEC",
    "Options",
    "check_with_art",
    "frozen_value",
    "mlsec_settings",
    "one_line",
    "thawed",
]

Options = tuple[tuple[str, Any], ...]

# ART parameters mlsec sets itself, and from what.
SET_BY_MLSEC = {
    "estimator": "the model passed at call time",
    "classifier": "the model passed at call time",
    "eps": "eps=",
    "norm": "norm=",
    "targeted": "the call's target= argument",
    "verbose": "mlsec (always False)",
}
# mlsec's own parameters: an ART option of the same name could not be told apart from them.
MLSEC_FIELDS = {"attack", "options", "eps", "norm", "bounds", "seed", "name", "label"}


def frozen_value(key: str, value: Any) -> Any:
    """``value`` as hashable plain data (lists as tuples); one-line error for anything else."""
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return tuple(frozen_value(key, v) for v in value)
    raise InputError(
        f"ART option {key!r} must be a number, a string, a boolean or a list of them "
        f"(got {value!r}); leave it out for ART's default"
    )


def thawed(value: Any) -> Any:
    """What ART gets: tuples back as lists."""
    return [thawed(v) for v in value] if isinstance(value, tuple) else value


def one_line(error: Exception) -> str:
    """The message of ``error`` on one line."""
    return " ".join(str(error).split())


@functools.lru_cache(maxsize=1024)
def check_with_art(name: str, options: Options, eps: float, norm: Norm) -> None:
    """Build ART's attack on a stub classifier, so that ART checks the settings now."""
    cls = art_class_named(name)
    # eps 0 never reaches ART (the answer is x), and some ART attacks refuse it: check with 1.
    kwargs = mlsec_settings(cls, eps=eps or 1.0, norm=norm, targeted=False, batch=1)
    try:
        cls(stub_classifier(), **{**kwargs, **{k: thawed(v) for k, v in options}})
    except (ValueError, TypeError) as error:
        raise InputError(f"ART's {name} refuses these settings: {one_line(error)}") from None
    except ImportError as error:
        raise InputError(f"ART's {name} needs a package that is missing: {error}") from None


def mlsec_settings(
    cls: Any, *, eps: float, norm: Norm, targeted: bool, batch: int
) -> dict[str, Any]:
    """The arguments mlsec gives ART's ``cls``: those of its parameters that mlsec sets."""
    accepted = init_parameters(cls)
    settings: dict[str, Any] = {
        "eps": float(eps),
        "norm": geometry(norm).art_norm,
        "targeted": targeted,
        "verbose": False,
    }
    if "batch_size" in accepted:
        # The whole batch at once, like every mlsec attack, or ART's default where larger (the
        # decision-based attacks batch their probes of one sample by it); an option overrides it.
        default = accepted["batch_size"].default
        settings["batch_size"] = max(batch, default if isinstance(default, int) else 1)
    return {key: value for key, value in settings.items() if key in accepted}
