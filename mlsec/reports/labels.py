"""Numbers and thresholds as short text, shared by every report format so each prints the same."""

from __future__ import annotations

from mlsec.auditing.checks import CheckRun
from mlsec.auditing.report import ThresholdResult
from mlsec.core import text

__all__ = [
    "certified_label",
    "checks_line",
    "eps_label",
    "percent",
    "requirement",
    "seconds_label",
]


def percent(fraction: float) -> str:
    """A fraction as a percentage with two decimals, the precision of every report format.

    Example:
        >>> percent(0.5), percent(1 / 3)
        ('50.00%', '33.33%')

    """
    return text.percent(fraction, decimals=2)


def eps_label(eps: float) -> str:
    """An eps value as short text: ``0.3``, ``0.0313725``."""
    return f"{eps:g}"


def certified_label(method: str) -> str:
    """A certificate's name for people.

    Example:
        >>> certified_label("ibp"), certified_label("smoothing")
        ('interval bounds', 'randomized smoothing')

    """
    return {"ibp": "interval bounds", "smoothing": "randomized smoothing"}.get(method, method)


def seconds_label(seconds: float) -> str:
    """A duration for people: ``0.42 s``, ``12.3 s``, ``4 min 05 s``."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def requirement(threshold: ThresholdResult) -> str:
    """What a threshold demands, in words: ``robust accuracy of pgd at eps 0.3 ≥ 50.00%``."""
    attack = "the worst case" if threshold.attack == "worst" else threshold.attack
    where = f"{attack} at eps {eps_label(threshold.eps)}"
    if threshold.kind == "min-accuracy":
        return f"robust accuracy of {where} ≥ {percent(threshold.limit)}"
    return f"drop from clean accuracy of {where} ≤ {percent(threshold.limit)}"


def checks_line(runs: list[CheckRun]) -> str:
    """Which sanity checks ran, on how many samples, and what they cost, in one sentence."""
    if not runs:
        return "Sanity checks: off."
    parts = [f"{run.check} ({_scope(run)}, {seconds_label(run.seconds)})" for run in runs]
    total = seconds_label(sum(run.seconds for run in runs))
    return f"Sanity checks ran in {total}: {'; '.join(parts)}."


def _scope(run: CheckRun) -> str:
    return f"read from the {run.source}" if run.samples == 0 else f"{run.samples} samples"
