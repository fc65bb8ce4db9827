"""The threat model: which perturbations an attacker may make.

Each norm's geometry (random start, steepest-ascent direction, projection, distance) is written
once, here, and shared by every gradient attack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from mlsec.core.keyed import SampleKeys
from mlsec.core.validation import check_bounds, check_eps
from mlsec.errors import InputError

__all__ = [
    "CERTIFIED_NORMS",
    "L2",
    "LINF",
    "NORMS",
    "Geometry",
    "Norm",
    "Region",
    "ThreatModel",
    "check_certified_norm",
    "geometry",
]

Norm = Literal["linf", "l2"]
_TINY = 1e-12


@dataclass(frozen=True, kw_only=True)
class ThreatModel:
    """Perturbations of size at most ``eps`` in ``norm``, inside the input ``bounds``.

    ``eps`` is always in input (pixel) units: a model that expects normalized input is wrapped with
    :class:`mlsec.Normalized` so that the attack still works in ``bounds``.

    Example:
        >>> ThreatModel(norm="linf", eps=0.3)
        ThreatModel(norm='linf', eps=0.3, bounds=(0.0, 1.0))

    """

    norm: Norm = "linf"
    eps: float
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.norm not in _GEOMETRIES:
            raise InputError(f"norm must be 'linf' or 'l2' (got {self.norm!r})")
        check_eps(self.eps)
        check_bounds(self.bounds)


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample l2 norm, shaped to broadcast against ``t``."""
    norms = t.flatten(1).norm(p=2, dim=1)
    return norms.view(-1, *([1] * (t.dim() - 1)))


class Region(Protocol):
    """The admissible set around a batch ``x``: its eps ball intersected with the bounds."""

    def project(self, x_adv: torch.Tensor) -> torch.Tensor:
        """``x_adv`` moved into the region."""
        ...

    def contains(self, x_adv: torch.Tensor) -> torch.Tensor:
        """Bool mask, broadcastable to ``x``: where ``x_adv`` lies in the region."""
        ...

    def select(self, keep: torch.Tensor) -> Region:
        """The region of the samples where ``keep`` (a bool ``[B]`` mask) is true."""
        ...


class Geometry(Protocol):
    """How a gradient attack moves in one norm's ball.

    Attributes:
        norm: the norm's name (``"linf"`` or ``"l2"``).
        art_norm: the norm as the Adversarial Robustness Toolbox spells it (``np.inf`` or ``2``).

    """

    norm: Norm
    art_norm: float | int  # np.inf or 2

    def random_start(self, like: torch.Tensor, eps: torch.Tensor, keys: SampleKeys) -> torch.Tensor:
        """A random perturbation in the ball, shaped like ``like``; row r draws from keys[r]."""
        ...

    def ascent(self, grad: torch.Tensor) -> torch.Tensor:
        """The unit-norm direction of steepest ascent for ``grad``."""
        ...

    def project(self, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The perturbation moved back into the ball of radius ``eps``."""
        ...

    def distance(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-sample size of the perturbation, ``[B]``."""
        ...

    def region(
        self,
        x: torch.Tensor,
        eps: torch.Tensor | float,
        low: torch.Tensor | float,
        high: torch.Tensor | float,
    ) -> Region:
        """The admissible set around ``x``: within ``eps`` of it and inside ``[low, high]``."""
        ...

    def erasing_eps(self, low: float, high: float, size: int) -> float:
        """A budget that can erase any input of ``size`` values in ``[low, high]``.

        linf: half the range (every value can reach the middle); l2: the box's diagonal.
        """
        ...


def _per_sample(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``[B]`` mask shaped to broadcast against ``like``."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


class _Box:
    """linf's region: a box, so projecting onto the ball and then the bounds is one clamp."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.lo, self.hi = lo, hi

    def project(self, x_adv: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x_adv, self.lo, self.hi)

    def contains(self, x_adv: torch.Tensor) -> torch.Tensor:
        return (x_adv >= self.lo) & (x_adv <= self.hi)

    def select(self, keep: torch.Tensor) -> Region:
        return _Box(self.lo[keep], self.hi[keep])


class _Ball:
    """l2's region: project onto the ball around ``x``, then clamp to the bounds."""

    def __init__(
        self,
        geometry: Geometry,
        x: torch.Tensor,
        eps: torch.Tensor | float,
        low: torch.Tensor | float,
        high: torch.Tensor | float,
    ) -> None:
        self.geometry, self.x, self.eps, self.low, self.high = geometry, x, eps, low, high

    def project(self, x_adv: torch.Tensor) -> torch.Tensor:
        eps = torch.as_tensor(self.eps, dtype=x_adv.dtype, device=x_adv.device)
        delta = self.geometry.project(x_adv - self.x, eps)
        return torch.clamp(self.x + delta, self.low, self.high)  # type: ignore[arg-type]

    def contains(self, x_adv: torch.Tensor) -> torch.Tensor:
        flat = x_adv.flatten(1)
        inside = (self.geometry.distance(x_adv - self.x) <= self.eps) & (
            flat.amin(1).ge(self.low) & flat.amax(1).le(self.high)
        )
        return _per_sample(inside, x_adv)

    def select(self, keep: torch.Tensor) -> Region:
        return _Ball(self.geometry, self.x[keep], self.eps, self.low, self.high)


class _Linf:
    norm: Norm = "linf"
    art_norm: float | int = math.inf

    def random_start(self, like: torch.Tensor, eps: torch.Tensor, keys: SampleKeys) -> torch.Tensor:
        noise = keys.uniform(tuple(like.shape[1:]), stream="start", dtype=like.dtype)
        return (2 * noise - 1) * eps

    def ascent(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign()

    def project(self, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(delta, eps), -eps)

    def distance(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).abs().amax(dim=1)

    def region(
        self,
        x: torch.Tensor,
        eps: torch.Tensor | float,
        low: torch.Tensor | float,
        high: torch.Tensor | float,
    ) -> Region:
        if isinstance(eps, torch.Tensor):
            return _Box(torch.maximum(x - eps, low), torch.minimum(x + eps, high))  # type: ignore[arg-type]
        return _Box((x - eps).clamp(min=low), (x + eps).clamp(max=high))

    def erasing_eps(self, low: float, high: float, size: int) -> float:
        return 0.5 * (high - low)


class _L2:
    norm: Norm = "l2"
    art_norm: float | int = 2

    def random_start(self, like: torch.Tensor, eps: torch.Tensor, keys: SampleKeys) -> torch.Tensor:
        # Uniform in the ball: a Gaussian direction, radius eps * u^(1/d).
        direction = keys.normal(tuple(like.shape[1:]), stream="start", dtype=like.dtype)
        direction = direction / _flat_norm(direction).clamp_min(_TINY)
        u = keys.uniform((1,) * (like.dim() - 1), stream="start/radius", dtype=like.dtype)
        return direction * eps * u.pow(1.0 / like[0].numel())

    def ascent(self, grad: torch.Tensor) -> torch.Tensor:
        return grad / _flat_norm(grad).clamp_min(_TINY)

    def project(self, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        factor = (eps / _flat_norm(delta).clamp_min(_TINY)).clamp(max=1.0)
        return delta * factor

    def distance(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).norm(p=2, dim=1)

    def region(
        self,
        x: torch.Tensor,
        eps: torch.Tensor | float,
        low: torch.Tensor | float,
        high: torch.Tensor | float,
    ) -> Region:
        return _Ball(self, x, eps, low, high)

    def erasing_eps(self, low: float, high: float, size: int) -> float:
        return (high - low) * math.sqrt(size)


LINF: Geometry = _Linf()
L2: Geometry = _L2()
_GEOMETRIES: dict[Norm, Geometry] = {"linf": LINF, "l2": L2}


# The norms, in the order a user sees them (the CLI's choices).
NORMS: tuple[Norm, ...] = tuple(_GEOMETRIES)


def geometry(norm: Norm) -> Geometry:
    """The geometry of ``norm``."""
    return _GEOMETRIES[norm]


# The norm each certificate speaks of: interval bounds hold over an linf box, randomized
# smoothing's radius is an l2 radius.
CERTIFIED_NORMS: dict[str, Norm] = {"ibp": "linf", "smoothing": "l2"}


def check_certified_norm(method: str, norm: str) -> None:
    """An :class:`InputError` unless certificate ``method`` speaks of the attacks' ``norm``.

    Example:
        >>> check_certified_norm("ibp", "linf")
        >>> check_certified_norm("smoothing", "linf")
        Traceback (most recent call last):
        ...
        mlsec.errors.InputError: certify: smoothing certifies l2 radii, but the attacks use linf; \
audit with the l2 norm (or certify linf with ibp)

    """
    wanted = CERTIFIED_NORMS[method]
    if norm != wanted:
        other = next(m for m, n in CERTIFIED_NORMS.items() if n != wanted)
        raise InputError(
            f"{method} certifies {wanted} radii, but the attacks use {norm}; audit with the "
            f"{wanted} norm (or certify {norm} with {other})",
            subject="certify",
        )
