"""The threat model: which perturbations an attacker may make.

Each norm's geometry (random start, steepest-ascent direction, projection, distance) is written
once, here, and shared by every gradient attack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from mlsec.errors import InputError

__all__ = ["L2", "LINF", "Geometry", "Norm", "ThreatModel", "geometry"]

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
        if self.norm not in ("linf", "l2"):
            raise InputError(f"norm must be 'linf' or 'l2' (got {self.norm!r})")
        if not isinstance(self.eps, int | float) or not math.isfinite(self.eps) or self.eps < 0:
            raise InputError(f"eps must be a finite number >= 0 (got {self.eps!r})")
        lo, hi = self.bounds
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise InputError(f"bounds must be finite with low < high (got {self.bounds!r})")


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample l2 norm, shaped to broadcast against ``t``."""
    norms = t.flatten(1).norm(p=2, dim=1)
    return norms.view(-1, *([1] * (t.dim() - 1)))


class Geometry(Protocol):
    """How a gradient attack moves in one norm's ball."""

    def random_start(
        self, like: torch.Tensor, eps: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """A random perturbation inside the ball, shaped like ``like``."""
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


class _Linf:
    def random_start(
        self, like: torch.Tensor, eps: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        noise = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        return (2 * noise - 1) * eps

    def ascent(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign()

    def project(self, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(delta, eps), -eps)

    def distance(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).abs().amax(dim=1)


class _L2:
    def random_start(
        self, like: torch.Tensor, eps: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        # Uniform in the ball: a Gaussian direction, radius eps * u^(1/d).
        direction = torch.randn(
            like.shape, generator=generator, device=like.device, dtype=like.dtype
        )
        direction = direction / _flat_norm(direction).clamp_min(_TINY)
        u = torch.rand(
            (like.shape[0],) + (1,) * (like.dim() - 1),
            generator=generator,
            device=like.device,
            dtype=like.dtype,
        )
        return direction * eps * u.pow(1.0 / like[0].numel())

    def ascent(self, grad: torch.Tensor) -> torch.Tensor:
        return grad / _flat_norm(grad).clamp_min(_TINY)

    def project(self, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        factor = (eps / _flat_norm(delta).clamp_min(_TINY)).clamp(max=1.0)
        return delta * factor

    def distance(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).norm(p=2, dim=1)


LINF: Geometry = _Linf()
L2: Geometry = _L2()


def geometry(norm: Norm) -> Geometry:
    """The geometry of ``norm``."""
    return LINF if norm == "linf" else L2
