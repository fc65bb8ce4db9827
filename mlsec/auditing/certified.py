"""Certified accuracy beside the attacks: a lower bound next to every upper bound.

An attack's robust accuracy is an upper bound on the true robust accuracy: a stronger attack may
lower it. A certificate is a lower bound: a certified sample is classified correctly everywhere
within eps. So per eps, ``certified <= true robust accuracy <= best attack``.

Two certificates (:mod:`mlsec.defenses.certified`):

- ``"ibp"``, interval bound propagation (Gowal et al. 2018): deterministic and exact arithmetic
  up to float rounding, for linf. A sample certified at eps and broken by an attack within eps is
  a contradiction, so a bug: :func:`check_soundness` raises :class:`~mlsec.errors.SoundnessError`.
- a :class:`~mlsec.defenses.certified.smoothing.Smoothing`, randomized smoothing (Cohen et al.
  2019), for l2: the certificate is of the smoothed classifier and holds with probability at
  least ``1 - alpha`` per sample. A few broken certified samples are allowed; more than ``alpha``
  explains is a warning.

The per-sample work is split across the ranks of a process group like the clean pass, and every
draw is keyed by the sample's index, so the numbers do not depend on batch size or process count.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from scipy import stats
from torch import nn

from mlsec.core import model as _model
from mlsec.core.data import Samples, as_samples, batches
from mlsec.core.distributed import Group, current, gather_results
from mlsec.core.progress import Tracker
from mlsec.core.progress import progress as progress_bars
from mlsec.defenses.certified.intervals import check_bounded, verified
from mlsec.defenses.certified.smoothing import Smoothing
from mlsec.errors import InputError

__all__ = [
    "METHODS",
    "Certification",
    "CertifiedOutcome",
    "allowed_violations",
    "certify",
    "method_name",
    "run_certification",
]

# The certificates by name; randomized smoothing needs its noise level, so it is given as a
# Smoothing(sigma=...) wherever a name alone does not say enough.
METHODS = ("ibp", "smoothing")

# A smoothing certificate fails with probability <= alpha; more failures than a binomial tail of
# this probability allows is a warning.
WARN_TAIL = 1e-3


@dataclass(frozen=True, kw_only=True)
class CertifiedOutcome:
    """Certified accuracy at one eps.

    Attributes:
        method: ``"ibp"`` or ``"smoothing"``.
        eps: the budget (linf for ibp, the l2 radius for smoothing).
        certified_accuracy: fraction of all samples certified correct at ``eps``.
        certified: how many.

    """

    method: str
    eps: float
    certified_accuracy: float
    certified: int


@dataclass(frozen=True, kw_only=True)
class Certification:
    """Certificates of every sample at every eps of the grid.

    Attributes:
        method: ``"ibp"`` or ``"smoothing"``.
        params: the certificate's settings (smoothing: sigma, n0, n, alpha, seed).
        outcomes: one :class:`CertifiedOutcome` per eps, ascending.
        seconds: wall-clock time of the certification.
        masks: eps -> bool ``[n]``, the samples certified correct at eps.
        radius: smoothing only: float64 ``[n]``, each sample's certified l2 radius (``-1`` where
            the smoothed classifier abstains or certifies a wrong class).
        soundness: what :func:`check_soundness` found (filled in by the audit).

    """

    method: str
    params: dict[str, Any]
    outcomes: list[CertifiedOutcome]
    seconds: float
    masks: dict[float, torch.Tensor] = field(repr=False)
    radius: torch.Tensor | None = field(default=None, repr=False)
    soundness: dict[str, Any] = field(default_factory=dict)

    @property
    def eps(self) -> list[float]:
        """The eps grid, ascending."""
        return [outcome.eps for outcome in self.outcomes]

    def accuracy(self, eps: float) -> float:
        """Certified accuracy at ``eps``; ``KeyError`` when it was not certified there."""
        for outcome in self.outcomes:
            if math.isclose(outcome.eps, eps):
                return outcome.certified_accuracy
        raise KeyError(f"no certificate at eps {eps:g}")

    def to_dict(self) -> dict[str, Any]:
        """The method, settings, time, per-eps rows and soundness record as plain JSON types."""
        return {
            "method": self.method,
            "params": dict(self.params),
            "seconds": self.seconds,
            "results": [dataclasses.asdict(outcome) for outcome in self.outcomes],
            "soundness": dict(self.soundness),
        }


def method_name(method: str | Smoothing) -> str:
    """``"ibp"`` or ``"smoothing"`` for a certificate given by name or as a Smoothing.

    Raises:
        InputError: an unknown name, or ``"smoothing"`` without its noise level.

    """
    if isinstance(method, Smoothing):
        return "smoothing"
    if method == "smoothing":
        raise InputError(
            "randomized smoothing needs its noise level: pass Smoothing(sigma=...) "
            "(mlsec.defenses.certified.Smoothing)",
            subject="certify",
        )
    if method != "ibp":
        raise InputError(
            f"unknown certificate {method!r}; use 'ibp' or Smoothing(sigma=...)", subject="certify"
        )
    return "ibp"


def certify(
    model: nn.Module,
    data: Any,
    *,
    method: str | Smoothing,
    eps: Sequence[float],
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 500,
    workers: int = 0,
    progress: bool = False,
    console: Console | None = None,
) -> Certification:
    """Certified accuracy of ``model`` on ``data`` at each eps, without any attack.

    Args:
        model: the classifier (for ``"ibp"`` an ``nn.Sequential`` of layers interval bounds pass
            through; for smoothing the base classifier).
        data: ``(x, y)``, a Dataset, DataLoader or :class:`~mlsec.core.data.Samples`.
        method: ``"ibp"`` (linf) or a :class:`~mlsec.defenses.certified.smoothing.Smoothing`
            (l2 radii).
        eps: the budgets (linf eps, or l2 radii).
        bounds: the inputs' range (ibp intersects the eps-box with it).
        batch_size: samples per batch.
        workers: data-loading worker processes.
        progress: show a progress bar on ``console`` (stderr by default).
        console: where progress goes.

    Returns:
        A :class:`Certification`.

    Example:
        >>> import mlsec
        >>> x, y = mlsec.datasets.mnist_sample()
        >>> result = certify(mlsec.zoo.load("mnist-cnn-ibp"), (x[:100], y[:100]),
        ...                  method="ibp", eps=[0.1])
        >>> result.accuracy(0.1) > 0.8
        True

    """
    grid = _grid(eps)
    with progress_bars(enabled=progress, console=console) as tracker:
        return run_certification(
            model,
            as_samples(data),
            method=method,
            eps=grid,
            bounds=bounds,
            batch_size=batch_size,
            tracker=tracker,
            group=current(),
            workers=workers,
        )


def _grid(eps: Sequence[float]) -> list[float]:
    values = [float(e) for e in eps]
    if not values or any(not math.isfinite(e) or e < 0 for e in values):
        raise InputError(f"eps must be one or more values >= 0 (got {list(eps)})", subject="eps")
    return sorted(set(values))


def run_certification(
    model: nn.Module,
    samples: Samples,
    *,
    method: str | Smoothing,
    eps: list[float],
    bounds: tuple[float, float],
    batch_size: int,
    tracker: Tracker,
    group: Group | None = None,
    workers: int = 0,
) -> Certification:
    """Certify every sample at every eps, the ranks sharing the batches; see :func:`certify`."""
    name = method_name(method)
    if isinstance(method, Smoothing):
        certify_batch = _smoothing_batch(model, method, eps)
        params = dataclasses.asdict(method)
    else:
        check_bounded(model)
        certify_batch = _ibp_batch(model, eps, bounds)
        params = {}
    group = group or Group()
    n = len(samples)
    starts = range(0, n, batch_size)[group.rank :: group.world]
    mine = [i for s in starts for i in range(s, min(s + batch_size, n))]
    stage = tracker.stage(f"certify ({name})", total=n)
    begin = time.perf_counter()
    device = _model.device_of(model)

    def work() -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
        shares = []
        scale = n / max(len(mine), 1)
        with _model.frozen(model):
            rows = torch.tensor(mine, dtype=torch.long)
            for batch in batches(samples, rows, batch_size, workers=workers):
                xb = batch.x.to(device, _model.compute_dtype(model, batch.x))
                masks, radius = certify_batch(xb, batch.y.to(device), batch.index.to(device))
                shares.append((batch.index.tolist(), masks.cpu(), radius.cpu()))
                stage.advance(round(len(batch.index) * scale))
        return shares

    gathered = gather_results(group, work)
    stage.finish()
    masks = torch.zeros(len(eps), n, dtype=torch.bool)
    radius = torch.full((n,), -1.0, dtype=torch.float64)
    for share in gathered:
        for index, batch_masks, batch_radius in share:
            rows = torch.tensor(index, dtype=torch.long)
            masks[:, rows] = batch_masks
            radius[rows] = batch_radius
    outcomes = [
        CertifiedOutcome(
            method=name, eps=e, certified_accuracy=int(m.sum()) / n, certified=int(m.sum())
        )
        for e, m in zip(eps, masks, strict=True)
    ]
    return Certification(
        method=name,
        params=params,
        outcomes=outcomes,
        seconds=time.perf_counter() - begin,
        masks={e: m for e, m in zip(eps, masks, strict=True)},
        radius=radius if isinstance(method, Smoothing) else None,
    )


# A batch's certified masks [eps, B] and its radii [B] (-1 without a radius).
_Masks = tuple[torch.Tensor, torch.Tensor]
_BatchCertifier = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], _Masks]


def _ibp_batch(model: nn.Module, eps: list[float], bounds: tuple[float, float]) -> _BatchCertifier:
    def run(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> _Masks:
        with torch.no_grad():
            masks = torch.stack([verified(model, x, y, e, bounds=bounds) for e in eps])
        return masks, torch.full((len(y),), -1.0, dtype=torch.float64)

    return run


def _smoothing_batch(model: nn.Module, smoothing: Smoothing, eps: list[float]) -> _BatchCertifier:
    def run(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> _Masks:
        certificate = smoothing.certify(model, x, index=index)
        right = certificate.prediction.to(y.device) == y
        radius = torch.where(right, certificate.radius.to(y.device, torch.float64), -1.0)
        masks = torch.stack([right & (radius >= e) for e in eps])
        return masks, radius

    return run


def allowed_violations(certified: int, alpha: float) -> int:
    """The most broken certificates among ``certified`` that ``alpha`` explains.

    Each smoothing certificate fails with probability at most ``alpha``, so the number that fail
    is at most Binomial(certified, alpha); this is the largest count whose upper tail is still at
    least :data:`WARN_TAIL` (scipy's binomial quantile).

    Example:
        >>> allowed_violations(500, 0.001), allowed_violations(0, 0.001)
        (4, 0)

    """
    if certified == 0:
        return 0
    return int(stats.binom.isf(WARN_TAIL, certified, alpha))
