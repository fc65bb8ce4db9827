"""Validation of what users hand to attacks and audits; failures raise :class:`InputError`."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from mlsec.core import model as _model
from mlsec.errors import InputError


def check_count(name: str, value: object, low: int = 1) -> None:
    """Raise :class:`InputError` unless ``value`` is an integer (not a bool) of at least ``low``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InputError(f"{name} must be an integer >= {low} (got {value!r})")


# The largest seed torch.Generator.manual_seed takes as a signed 64-bit integer.
MAX_SEED = 2**63 - 1


def check_seed(value: object, name: str = "seed") -> None:
    """Raise :class:`InputError` unless ``value`` is an integer seed in [0, 2**63 - 1]."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise InputError(f"{name} must be an integer in [0, 2**63 - 1] (got {value!r})")


def check_number(name: str, value: object, *, zero: bool = False) -> None:
    """Raise :class:`InputError` unless ``value`` is a finite number > 0 (>= 0 with ``zero``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero):  # type: ignore[operator]
        raise InputError(f"{name} must be a number {'>=' if zero else '>'} 0 (got {value!r})")


def check_eps(value: object, name: str = "eps") -> None:
    """Raise :class:`InputError` unless ``value`` is a perturbation budget: a finite number >= 0."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0:  # type: ignore[operator]
        raise InputError(f"{name} must be a finite number >= 0 (got {value!r})")


def check_bounds(bounds: tuple[float, float]) -> None:
    """Raise :class:`InputError` unless ``bounds`` is ``(low, high)``, finite, with low < high."""
    lo, hi = bounds
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InputError(f"bounds must be finite with low < high (got {bounds!r})")


def check_fraction(name: str, value: object, *, open_low: bool = False) -> None:
    """Raise :class:`InputError` unless ``value`` is a number in [0, 1] (in (0, 1] if ``open_low``).

    Example:
        >>> check_fraction("rho", 0.75)
        >>> check_fraction("p_init", 0.0, open_low=True)
        Traceback (most recent call last):
        ...
        mlsec.errors.InputError: p_init must be a number in (0, 1] (got 0.0)

    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (0 < value <= 1 if open_low else 0 <= value <= 1):  # type: ignore[operator]
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise InputError(f"{name} must be a number in {interval} (got {value!r})")


def check_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None,
    bounds: tuple[float, float],
) -> None:
    """Raise :class:`InputError` unless ``(x, y, target)`` is a well-formed batch for ``model``."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module (got {type(model).__name__})")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError("x must be a floating-point tensor of inputs [batch, ...]")
    if x.dim() < 2:
        raise InputError(
            f"x must have a batch dimension and at least one more (got shape {tuple(x.shape)})"
        )
    for name, labels in (("y", y), ("target", target)):
        if labels is None:
            continue
        if (
            not isinstance(labels, torch.Tensor)
            or labels.dtype.is_floating_point
            or labels.dtype == torch.bool
        ):
            raise InputError(f"{name} must be an integer tensor of class labels")
        if labels.shape != (x.shape[0],):
            raise InputError(
                f"{name} must have shape [{x.shape[0]}] to match x's batch "
                f"(got {tuple(labels.shape)})"
            )
        if labels.device != x.device:
            raise InputError(f"{name} is on {labels.device} but x is on {x.device}")
    _model.check_device(model, x)
    if x.numel() == 0:
        return
    if not bool(torch.isfinite(x).all()):
        raise InputError("x contains NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if low < bounds[0] - 1e-6 or high > bounds[1] + 1e-6:
        raise InputError(
            f"inputs range over [{low:.4g}, {high:.4g}], outside the bounds {bounds}; scale them "
            "into the bounds, or set bounds (and wrap a normalizing model with mlsec.Normalized)"
        )


def check_labels(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None,
) -> None:
    """Check label ranges against the model's number of outputs (one forward of one sample)."""
    if x.shape[0] == 0:
        return
    with torch.no_grad():
        out = run_model(forward, x[:1])
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"the model must return logits [batch, classes] (got {shape})")
    if not bool(torch.isfinite(out).all()):
        raise InputError("the model returned NaN or infinite logits; check its weights and inputs")
    classes = out.shape[1]
    for name, labels in (("y", y), ("target", target)):
        if labels is None:
            continue
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= classes:
            raise InputError(
                f"{name} holds labels in [{low}, {high}] but the model has {classes} outputs; "
                f"labels must lie in [0, {classes - 1}]"
            )


def run_model(
    forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, name: str = "the model"
) -> torch.Tensor:
    """``forward(x)``; whatever the model raises is reported as bad input, naming ``name``.

    A model's ``forward`` is user code: a shape mismatch, any other exception and a
    ``sys.exit`` inside it all become one :class:`InputError` naming the exception.
    """
    try:
        return forward(x)
    except InputError:
        raise
    except (Exception, SystemExit) as error:  # user code may fail in any way
        if isinstance(error, SystemExit):
            what = f"called sys.exit({error.code!r})"
        else:
            text = str(error).strip()
            first = text.splitlines()[0] if text else ""
            what = f"raised {type(error).__name__}" + (f" ({first[:200]})" if first else "")
        raise InputError(
            f"{_quoted(name)} failed on inputs of shape {tuple(x.shape[1:])} per sample: its "
            f"forward {what}; check the model and that the data matches what it expects"
        ) from None


def _quoted(name: str) -> str:
    return (
        name if name == "the model" else f"the model {name if name.isprintable() else repr(name)}"
    )


def check_index(index: torch.Tensor | None, batch: int) -> None:
    """Raise :class:`InputError` unless ``index`` is ``None`` or integer ``[batch]``, >= 0."""
    if index is None:
        return
    integer = isinstance(index, torch.Tensor) and not (
        index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool
    )
    if not integer:
        raise InputError("index must be an integer tensor of sample positions")
    if tuple(index.shape) != (batch,):
        raise InputError(f"index must have shape [{batch}] (got {tuple(index.shape)})")
    if batch and int(index.min()) < 0:
        raise InputError("index must hold positions >= 0")
